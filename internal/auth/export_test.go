package auth

import "time"

// SetClock replaces the verifier's clock (expiry tests).
func SetClock(v *Verifier, now func() time.Time) { v.now = now }
