package task

import "time"

// SetFactsMaxAge sets how long the facts of a whole listing of the
// unfinished tasks hold in s.
func (s *Store) SetFactsMaxAge(d time.Duration) {
	s.facts.mu.Lock()
	defer s.facts.mu.Unlock()
	s.facts.maxAge = d
}
