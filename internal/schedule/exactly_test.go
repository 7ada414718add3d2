package schedule_test

import (
	"context"
	"fmt"
	"github.com/taskd/taskd/internal/keys"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/quorum"
	"github.com/taskd/taskd/internal/schedule"
	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/tasktype"
	"github.com/taskd/taskd/internal/testenv"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv("SCHEDULE_TEST_VERBOSE") != "" {
		slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	} else {
		slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	}
	goleak.VerifyTestMain(m)
}

var seq atomic.Int64

// member is one in-process node: its own store client (through a proxy
// that the test can cut), and a quorum whose leader role fires schedules.
type member struct {
	name   string
	proxy  *testenv.Proxy
	q      *quorum.Quorum
	cancel context.CancelFunc
	done   chan error
}

func startMember(t *testing.T, b testenv.Backend, root, name string) *member {
	t.Helper()
	return startMemberClock(t, b, root, name, nil, nil)
}

// startMemberClock starts a member whose task center reads the wall clock
// now (nil: time.Now) and whose scheduler hears of clock steps on steps.
func startMemberClock(t *testing.T, b testenv.Backend, root, name string, now func() time.Time, steps <-chan struct{}) *member {
	t.Helper()
	proxy := testenv.StartProxy(t, b.Addr)
	kv := b.Dial(t, proxy.Addr())
	tasks, err := task.NewStore(kv, root, tasktype.Builtin(tasktype.Copy{}, nil, nil), "UTC", now)
	if err != nil {
		t.Fatal(err)
	}
	leader := schedule.NewLeader(schedule.NewStore(kv, mustRoot(t, root), tasks), slog.Default().With("node", name)).WithClockSteps(steps)
	cfg := quorum.DefaultConfig()
	cfg.Name, cfg.NodeID, cfg.Address, cfg.Root = name, "id-"+name, name+":1", root
	cfg.SessionTimeout = 2 * time.Second
	cfg.FenceBudget = 300 * time.Millisecond
	cfg.YieldGrace = time.Second
	cfg.CampaignStagger = 200 * time.Millisecond
	q, err := quorum.New(cfg, kv, quorum.Roles{Leader: leader.Run}, slog.Default().With("node", name))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &member{name: name, proxy: proxy, q: q, cancel: cancel, done: make(chan error, 1)}
	go func() { m.done <- q.Run(ctx) }()
	t.Cleanup(m.stop)
	return m
}

// openStores opens a client of b with task and schedule stores under a
// fresh root of their own.
func openStores(t *testing.T, b testenv.Backend) (string, coord.Store, *task.Store, *schedule.Store) {
	t.Helper()
	root := fmt.Sprintf("/taskd/sched%d-%d", time.Now().UnixNano(), seq.Add(1))
	kv := b.Open(t)
	tasks, err := task.NewStore(kv, root, tasktype.Builtin(tasktype.Copy{}, nil, nil), "UTC", nil)
	if err != nil {
		t.Fatal(err)
	}
	return root, kv, tasks, schedule.NewStore(kv, mustRoot(t, root), tasks)
}

func (m *member) stop() {
	if m.cancel != nil {
		m.proxy.Resume()
		m.cancel()
		<-m.done
		m.cancel = nil
	}
}

func leaderOf(t *testing.T, ms []*member, minEpoch int64) (*member, int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var lead *member
	var epoch int64
	err := testenv.WaitFor(ctx, 10*time.Millisecond, func() bool {
		lead = nil
		for _, m := range ms {
			if v, _ := m.q.View(); v.Leader == m.name && v.Epoch > minEpoch {
				lead, epoch = m, v.Epoch
			}
		}
		return lead != nil
	})
	if err != nil {
		t.Fatalf("no leader above epoch %d: %v", minEpoch, err)
	}
	return lead, epoch
}

// TestExactlyOnceAcrossLeaderChanges stops the leader at the tick instant,
// again and again, on both backends: by a graceful stop that races the
// fire, and by a partition of the leader from the store (its session
// expires, it fences, the other member takes over). Every tick from the
// first to the last has exactly one task, and none was missed.
func TestExactlyOnceAcrossLeaderChanges(t *testing.T) {
	const (
		every  = 5 * time.Second
		rounds = 6
	)
	for _, b := range testenv.Backends(t) {
		t.Run(b.Name, func(t *testing.T) {
			root, check, tasks, scs := openStores(t, b)
			n := 0
			next := func() *member { n++; return startMember(t, b, root, fmt.Sprintf("n%d", n)) }
			ms := []*member{next(), next()}
			_, epoch := leaderOf(t, ms, 0)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			sc, err := scs.Create(ctx, schedule.CreateRequest{Name: "tick", Spec: schedule.Spec{Every: every.String()},
				Template: schedule.Template{Type: "noop"}, Overlap: "allow"})
			if err != nil {
				t.Fatal(err)
			}
			anchor := sc.Created.Truncate(time.Second)
			rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
			for round := range rounds {
				lead, _ := leaderOf(t, ms, epoch-1)
				// The next tick at least a second away, so the leader
				// has fired the previous one.
				now := time.Now()
				k := now.Sub(anchor)/every + 1
				tick := anchor.Add(k * every)
				if tick.Sub(now) < time.Second {
					tick = tick.Add(every)
				}
				// At the tick, give or take 20 ms.
				at := tick.Add(time.Duration(rng.IntN(41)-20) * time.Millisecond)
				timer := time.NewTimer(time.Until(at))
				<-timer.C
				kind := "stop"
				if round%2 == 1 {
					kind = "partition"
					lead.proxy.Pause()
				} else {
					lead.stop()
				}
				var e int64
				var others []*member
				for _, m := range ms {
					if m != lead {
						others = append(others, m)
					}
				}
				_, e = leaderOf(t, others, epoch)
				t.Logf("round %d: %s of %s at tick %s%+v; epoch %d -> %d", round+1, kind, lead.name,
					tick.Format(time.TimeOnly), at.Sub(tick).Round(time.Millisecond), epoch, e)
				epoch = e
				lead.stop()
				ms = append(others, next())
			}
			// Let the last tick after the final failover fire.
			last := anchor.Add((time.Since(anchor)/every + 1) * every)
			waitTicks(ctx, t, check, tasks.Layout(), sc.Name, last)
			_, st, err := scs.Get(ctx, sc.Name)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range st.Runs {
				if r.Outcome == schedule.Missed || r.Outcome == schedule.Skipped {
					t.Errorf("run %+v: want every tick fired", r)
				}
			}
			byTick := ticksMade(ctx, t, check, tasks.Layout(), sc.Name)
			first := anchor.Add(every)
			fired := 0
			for tk := first; !tk.After(last); tk = tk.Add(every) {
				switch c := byTick[tk.UnixNano()]; c {
				case 1:
					fired++
				case 0:
					t.Errorf("tick %s: no task (missed)", tk.Format(time.TimeOnly))
				default:
					t.Errorf("tick %s: %d tasks (doubled)", tk.Format(time.TimeOnly), c)
				}
			}
			if total := len(byTick); total != fired {
				t.Errorf("%d distinct ticks have tasks, %d expected ticks fired", total, fired)
			}
			if fired < rounds {
				t.Fatalf("only %d ticks fired over %d rounds", fired, rounds)
			}
			t.Logf("%d ticks, each exactly once, across %d leader changes", fired, rounds)
		})
	}
}

// ticksMade counts the tasks of schedule name per tick.
func ticksMade(ctx context.Context, t *testing.T, kv coord.Store, lay keys.Tasks, name string) map[int64]int {
	t.Helper()
	kvs, err := kv.List(ctx, lay.ActiveDir())
	if err != nil {
		t.Fatal(err)
	}
	out := map[int64]int{}
	for _, e := range kvs {
		r, err := task.Decode(e.Key, e.Value, e.Version)
		if err != nil {
			t.Fatal(err)
		}
		if r.Schedule == name {
			out[r.Tick.UnixNano()]++
		}
	}
	return out
}

func waitTicks(ctx context.Context, t *testing.T, kv coord.Store, lay keys.Tasks, name string, tick time.Time) {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := testenv.WaitFor(wctx, 50*time.Millisecond, func() bool {
		return ticksMade(ctx, t, kv, lay, name)[tick.UnixNano()] > 0
	}); err != nil {
		t.Fatalf("tick %s never fired: %v", tick.Format(time.TimeOnly), err)
	}
}

// TestManySchedulesTickTogether: 45 schedules ticking at the same instants
// are written in batches (more than one transaction's worth); each of
// their ticks has exactly one task.
func TestManySchedulesTickTogether(t *testing.T) {
	const (
		n     = 45
		every = 2 * time.Second
	)
	for _, b := range testenv.Backends(t) {
		t.Run(b.Name, func(t *testing.T) {
			root, check, tasks, scs := openStores(t, b)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			m := startMember(t, b, root, "n1")
			leaderOf(t, []*member{m}, 0)
			var created []*schedule.Schedule
			for i := range n {
				sc, err := scs.Create(ctx, schedule.CreateRequest{Name: fmt.Sprintf("s%02d", i), Spec: schedule.Spec{Every: every.String()},
					Template: schedule.Template{Type: "noop"}, Overlap: "allow"})
				if err != nil {
					t.Fatal(err)
				}
				created = append(created, sc)
			}
			// Wait for three ticks after the last creation.
			last := created[n-1].Created.Truncate(time.Second).Add(3 * every)
			for _, sc := range created {
				anchor := sc.Created.Truncate(time.Second)
				final := anchor.Add((last.Sub(anchor)/every + 1) * every)
				waitTicks(ctx, t, check, tasks.Layout(), sc.Name, final)
				made := ticksMade(ctx, t, check, tasks.Layout(), sc.Name)
				count := 0
				for tk := anchor.Add(every); !tk.After(final); tk = tk.Add(every) {
					if c := made[tk.UnixNano()]; c != 1 {
						t.Errorf("%s: tick %s has %d tasks", sc.Name, tk.Format(time.TimeOnly), c)
					}
					count++
				}
				if count < 2 {
					t.Errorf("%s: only %d ticks checked", sc.Name, count)
				}
			}
		})
	}
}

func mustRoot(t testing.TB, dir string) keys.Root {
	t.Helper()
	r, err := keys.NewRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
