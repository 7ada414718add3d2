// Package clockhook is the daemon's side of the chaos campaign's clock
// steps (internal/chaos, stepClock): a wall clock whose offset a
// fault-injection test sets through a file (--clock-offset-file) and
// SIGUSR2. Without the file the offset stays zero.
package clockhook

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/taskd/taskd/internal/events"
)

// Clock is the wall clock of the task center (record times, run windows,
// backoff ends): time.Now plus the offset. Sessions, deadlines and fencing
// use the monotonic clock and never read it. The zero Clock has no offset.
type Clock struct {
	offset  atomic.Int64
	once    sync.Once
	stepped chan struct{}
}

func (c *Clock) steps() chan struct{} {
	c.once.Do(func() { c.stepped = make(chan struct{}, 1) })
	return c.stepped
}

// Stepped signals each setting of the clock: a change of the offset, or
// Step (the system clock set, as package clockstep sees it). It holds one
// signal: a reader busy during several steps sees one.
func (c *Clock) Stepped() <-chan struct{} { return c.steps() }

// Step signals a setting of the clock without blocking.
func (c *Clock) Step() {
	select {
	case c.steps() <- struct{}{}:
	default:
	}
}

// Now is time.Now plus the offset.
func (c *Clock) Now() time.Time { return time.Now().Add(time.Duration(c.offset.Load())) }

// Follow reads the offset (a Go duration such as "90s" or "-2m") from path
// at start and at every SIGUSR2, until ctx ends. An empty path does
// nothing; an empty or missing file is no offset.
func (c *Clock) Follow(ctx context.Context, path string, log *slog.Logger) {
	if path == "" {
		return
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR2)
	defer signal.Stop(sig)
	for {
		d, err := ReadOffset(path)
		if err != nil {
			log.Error("clock offset file unreadable; offset unchanged", "path", path, "err", err)
		} else if old := time.Duration(c.offset.Swap(int64(d))); old != d {
			log.Warn("wall clock offset changed (fault injection)", events.ClockOffset.Attr(), "from", old, "to", d)
			c.Step()
		}
		select {
		case <-ctx.Done():
			return
		case <-sig:
		}
	}
}

// ReadOffset reads the offset file at path.
func ReadOffset(path string) (time.Duration, error) {
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
