package clockhook

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/testenv"
)

// TestFollow: the offset in the file applies at start and changes on
// SIGUSR2; an unreadable offset leaves it as it was.
func TestFollow(t *testing.T) {
	path := filepath.Join(t.TempDir(), "offset")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("1h\n")
	var c Clock
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); c.Follow(fctx, path, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	defer func() { stop(); <-done }()
	near := func(d time.Duration) func() bool {
		return func() bool { off := time.Until(c.Now()); return off > d-time.Minute && off < d+time.Minute }
	}
	if err := testenv.WaitFor(ctx, time.Millisecond, near(time.Hour)); err != nil {
		t.Fatalf("offset at start: %v (now %v)", err, c.Now())
	}
	step := func(s string, want time.Duration) {
		t.Helper()
		write(s)
		// Signal until the change shows (a repeated signal rereads the
		// same file).
		err := testenv.WaitFor(ctx, 10*time.Millisecond, func() bool {
			syscall.Kill(os.Getpid(), syscall.SIGUSR2)
			return near(want)()
		})
		if err != nil {
			t.Fatalf("offset after %q: %v (now %v)", s, err, c.Now())
		}
	}
	step("-2m", -2*time.Minute)
	step("", 0)
	step("90s", 90*time.Second)
	write("soon")
	if _, err := ReadOffset(path); err == nil {
		t.Fatal("ReadOffset accepted \"soon\"")
	}
	syscall.Kill(os.Getpid(), syscall.SIGUSR2)
	step("90s", 90*time.Second) // still, and still following
}
