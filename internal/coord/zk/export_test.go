package zk

// WatchReads returns how many reads s's watches have made.
func WatchReads(s *Store) int64 { return s.watchReads.Load() }

// Hubs returns how many directories s watches.
func Hubs(s *Store) int {
	s.hubsMu.Lock()
	defer s.hubsMu.Unlock()
	return len(s.hubs)
}
