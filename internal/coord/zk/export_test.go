package zk

// WatchReads returns how many reads s's watches have made.
func WatchReads(s *Store) int64 { return s.watchReads.Load() }

// Hubs returns how many directories s watches.
func Hubs(s *Store) int {
	s.hubsMu.Lock()
	defer s.hubsMu.Unlock()
	return len(s.hubs)
}

// BaseServer is the server s's base connection uses ("" before it exists).
func BaseServer(s *Store) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.base == nil {
		return ""
	}
	return s.base.Server()
}
