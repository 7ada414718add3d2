package node

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// wallClock is the wall clock of the task center (record times, run
// windows, backoff ends): time.Now plus an offset that is zero unless a
// fault-injection test sets one through --clock-offset-file. Sessions,
// deadlines and fencing use the monotonic clock and never read it.
type wallClock struct {
	offset atomic.Int64
	// stepped receives a signal when the clock was set: the kernel's
	// clock (clockstep) or the injected offset. Buffered by one: a
	// consumer busy during several steps sees one.
	stepped chan struct{}
}

func newWallClock() *wallClock { return &wallClock{stepped: make(chan struct{}, 1)} }

func (c *wallClock) now() time.Time { return time.Now().Add(time.Duration(c.offset.Load())) }

// step signals a setting of the clock without blocking.
func (c *wallClock) step() {
	select {
	case c.stepped <- struct{}{}:
	default:
	}
}

// followOffsetFile reads the offset (a Go duration such as "90s" or
// "-2m") from path at start and at every SIGUSR2, until ctx ends. An empty
// or missing file is no offset.
func (n *Node) followOffsetFile(ctx context.Context, path string) {
	if path == "" {
		return
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR2)
	defer signal.Stop(sig)
	for {
		d, err := readOffset(path)
		if err != nil {
			n.log.Error("clock offset file unreadable; offset unchanged", "path", path, "err", err)
		} else if old := time.Duration(n.clock.offset.Swap(int64(d))); old != d {
			n.log.Warn("wall clock offset changed (fault injection)", "event", "clock_offset", "from", old, "to", d)
			n.clock.step()
		}
		select {
		case <-ctx.Done():
			return
		case <-sig:
		}
	}
}

func readOffset(path string) (time.Duration, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("offset %q: %w", s, err)
	}
	return d, nil
}
