//go:build race

package schedule_test

// raceEnabled: the race detector slows a leader's start-up several times.
const raceEnabled = true
