package task

import "time"

// SetFactsIdle sets how long s's facts of the unfinished tasks hold
// without a page.
func (s *Store) SetFactsIdle(d time.Duration) {
	s.facts.mu.Lock()
	defer s.facts.mu.Unlock()
	s.facts.idle = d
}
