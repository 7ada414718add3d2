package volcopy_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/taskd/taskd/internal/nbd"
	"github.com/taskd/taskd/internal/nbd/nbdtest"
	"github.com/taskd/taskd/internal/volcopy"
	"github.com/taskd/taskd/internal/volume"
)

// TestReadAnsweredWithoutDataFailsTheCopy plays finding 11: an NBD source
// that answers every READ with NONE+DONE (no data at all). The old client
// took that as success and the copy wrote whatever its buffers held. Now
// the copy fails with a protocol error and the target keeps its bytes.
func TestReadAnsweredWithoutDataFailsTheCopy(t *testing.T) {
	dir := t.TempDir()
	const size = 1 << 20
	srv := nbdtest.Start(t, dir, size, func(r nbdtest.Request) []byte {
		if r.Cmd == nbdtest.CmdBlockStatus {
			return nbdtest.AllData(r)
		}
		return nbdtest.Done(r.Cookie)
	})
	rng := rand.New(rand.NewPCG(11, 11))
	target := writeImage(t, filepath.Join(dir, "target"), size, rng)
	before, err := os.ReadFile(target.path)
	if err != nil {
		t.Fatal(err)
	}
	p, err := run(t, volcopy.Spec{Source: srv.URI(), Target: fileURI(target.path), Workers: 2, RequestSize: 64 << 10}, volcopy.Options{})
	var pe *nbd.ProtocolError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "covered") {
		t.Fatalf("copy from a server that sends no data: err = %v (written %d), want a protocol error about coverage", err, p.BytesWritten)
	}
	after, err := os.ReadFile(target.path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatalf("the target changed (%d bytes written) although no data was read", p.BytesWritten)
	}
	reads := 0
	for _, r := range srv.Requests() {
		if r.Cmd == nbdtest.CmdRead {
			reads++
		}
	}
	if reads == 0 {
		t.Fatal("the copy never read: the test did not reach the server's bad answer")
	}
}

// TestExportOf2To63BytesIsRefused: a source claiming 2^63 bytes (negative
// as an int64; the old code copied "0 B" and succeeded) is refused before
// anything is created, as bad input.
func TestExportOf2To63BytesIsRefused(t *testing.T) {
	dir := t.TempDir()
	srv := nbdtest.Start(t, dir, 1<<63, func(r nbdtest.Request) []byte { return nbdtest.Done(r.Cookie) })
	target := filepath.Join(dir, "new")
	_, err := run(t, volcopy.Spec{Source: srv.URI(), Target: fileURI(target)}, volcopy.Options{})
	if !errors.Is(err, volcopy.ErrInvalid) || !strings.Contains(err.Error(), "2^63") {
		t.Fatalf("err = %v, want bad input naming 2^63", err)
	}
	if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("target created for a refused source: %v", err)
	}
}

// signalHandler closes a channel when a record with the message is logged.
type signalHandler struct {
	msg string
	hit chan struct{}
}

func (h *signalHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *signalHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *signalHandler) WithGroup(string) slog.Handler            { return h }

func (h *signalHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == h.msg {
		select {
		case <-h.hit:
		default:
			close(h.hit)
		}
	}
	return nil
}

// TestMemoryPoolBoundsConcurrentCopies: with a node pool of exactly one
// copy's buffers, a second copy waits before it reads anything, gives up
// when its context ends, and runs once the first has finished. A copy that
// could never fit is refused up front.
func TestMemoryPoolBoundsConcurrentCopies(t *testing.T) {
	rng := rand.New(rand.NewPCG(12, 12))
	dir := t.TempDir()
	src := writeImage(t, filepath.Join(dir, "src"), 4<<20, rng)
	spec := func(dst string) volcopy.Spec {
		return volcopy.Spec{Source: fileURI(src.path), Target: fileURI(filepath.Join(dir, dst)), Workers: 2, RequestSize: 256 << 10, ExtentSize: 1 << 20}
	}
	need := volcopy.BufferMemory(2, 256<<10, false, false)
	pool := volcopy.NewMemoryPool(need)
	ctx := ctxT(t)

	// Copy A holds the pool: it stops in its first checkpoint until let go.
	holding, letGo := make(chan struct{}), make(chan struct{})
	first := true
	a, err := volcopy.Prepare(ctx, spec("a"), volume.Options{}, volcopy.Options{Memory: pool, OnCheckpoint: func([]byte) error {
		if first {
			first = false
			close(holding)
			<-letGo
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	aDone := make(chan error, 1)
	go func() { _, err := a.Run(ctx); aDone <- err }()
	<-holding

	// Copy B waits for memory; cancelled while waiting, it has read nothing.
	h := &signalHandler{msg: "copy waiting for buffer memory", hit: make(chan struct{})}
	bctx, cancelB := context.WithCancel(ctx)
	b, err := volcopy.Prepare(bctx, spec("b"), volume.Options{}, volcopy.Options{Memory: pool, Logger: slog.New(h)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	bDone := make(chan struct {
		p   volcopy.Progress
		err error
	}, 1)
	go func() {
		p, err := b.Run(bctx)
		bDone <- struct {
			p   volcopy.Progress
			err error
		}{p, err}
	}()
	<-h.hit
	cancelB()
	res := <-bDone
	if !errors.Is(res.err, context.Canceled) || res.p.BytesRead != 0 {
		t.Fatalf("copy B waiting for memory: err %v, read %d; want cancelled before reading", res.err, res.p.BytesRead)
	}

	close(letGo)
	if err := <-aDone; err != nil {
		t.Fatalf("copy A: %v", err)
	}
	// The pool is free again: a third copy runs without waiting.
	c, err := volcopy.Prepare(ctx, spec("c"), volume.Options{}, volcopy.Options{Memory: pool})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Run(ctx); err != nil {
		t.Fatalf("copy C after A released the pool: %v", err)
	}
	mustEqual(t, filepath.Join(dir, "c"), src.data)

	// More than the pool holds: refused at once, nothing created.
	big := spec("big")
	big.Workers = 4
	if _, err := volcopy.Prepare(ctx, big, volume.Options{}, volcopy.Options{Memory: pool}); !errors.Is(err, volcopy.ErrInvalid) || !strings.Contains(err.Error(), "--copy-memory-limit") {
		t.Fatalf("copy larger than the pool: err = %v, want bad input naming --copy-memory-limit", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "big")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("refused copy left its target: %v", err)
	}
}
