package chaos

import (
	"math/rand/v2"
	"time"
)

// schedule draws a campaign's faults so that a seed replays: the kind of
// each fault and the pause after it come from one source, drawn the same
// number of times per fault; what a fault picks while it runs (a node, a
// clock step, how long a node stays down) comes from a source of its own,
// seeded by the campaign's seed and the fault's number. A fault whose
// choices depend on the cluster (it asks who leads, and picks again if
// the node it killed led) draws a varying count, which changes nothing
// but its own choices. So one seed gives the same kinds in the same
// order, with the same pauses, whatever the cluster did in between.
type schedule struct {
	seed  uint64
	kinds []string
	main  *rand.Rand
}

func newSchedule(seed uint64, kinds []string) *schedule {
	return &schedule{seed: seed, kinds: kinds, main: rand.New(rand.NewPCG(seed, 0x5c4e))}
}

// next draws fault i (from 1): its kind, its own source, and the pause
// after it.
func (s *schedule) next(i int) (kind string, own *rand.Rand, gap time.Duration) {
	kind = s.kinds[s.main.IntN(len(s.kinds))]
	gap = 500*time.Millisecond + time.Duration(s.main.Int64N(int64(time.Second)))
	return kind, rand.New(rand.NewPCG(s.seed, 0xfa17<<32|uint64(i))), gap
}
