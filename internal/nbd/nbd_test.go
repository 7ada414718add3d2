package nbd_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/nbd"
	"github.com/taskd/taskd/internal/testenv"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func dial(t *testing.T, uri string, opts nbd.Options) *nbd.Client {
	t.Helper()
	target, err := nbd.ParseURI(uri)
	if err != nil {
		t.Fatal(err)
	}
	c, err := nbd.Dial(ctxT(t), target, opts)
	if err != nil {
		t.Fatalf("dial %s: %v", uri, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// sparseImage writes a 16 MiB raw image with random data in [1M,3M) and
// [8M,8M+64K), holes elsewhere, and returns the path and content.
func sparseImage(t *testing.T) (string, []byte) {
	t.Helper()
	const size = 16 << 20
	want := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	for _, r := range [][2]int{{1 << 20, 3 << 20}, {8 << 20, 8<<20 + 64<<10}} {
		for i := r[0]; i < r[1]; i++ {
			want[i] = byte(rng.Uint32())
		}
	}
	path := filepath.Join(t.TempDir(), "img.raw")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, r := range [][2]int{{1 << 20, 3 << 20}, {8 << 20, 8<<20 + 64<<10}} {
		if _, err := f.WriteAt(want[r[0]:r[1]], int64(r[0])); err != nil {
			t.Fatal(err)
		}
	}
	return path, want
}

func TestQemuNBDReadBlockStatusWrite(t *testing.T) {
	path, want := sparseImage(t)
	srv := testenv.StartQemuNBD(t, "q", path, "-f", "raw", "--discard=unmap", "--cache=none")
	c := dial(t, srv.URI(), nbd.Options{MetaContexts: []string{nbd.ContextAllocation}})
	ctx := ctxT(t)
	if c.Size() != int64(len(want)) {
		t.Fatalf("size %d, want %d", c.Size(), len(want))
	}
	got := make([]byte, len(want))
	if err := c.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("read back differs from the image")
	}

	// Block status must say data exactly where the image has it.
	var data [][2]int64
	for off := int64(0); off < c.Size(); {
		ext, err := c.BlockStatus(ctx, nbd.ContextAllocation, off, c.Size()-off)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ext {
			if e.Flags&nbd.StateZero == 0 {
				data = append(data, [2]int64{int64(e.Offset), int64(e.Offset + e.Length)})
			}
			off = int64(e.Offset + e.Length)
		}
	}
	wantData := [][2]int64{{1 << 20, 3 << 20}, {8 << 20, 8<<20 + 64<<10}}
	if len(data) != len(wantData) || data[0] != wantData[0] || data[1] != wantData[1] {
		t.Fatalf("data extents %v, want %v", data, wantData)
	}

	// Write, zero, trim, flush; the file shows each.
	blob := bytes.Repeat([]byte{0xab}, 1<<20)
	if err := c.WriteAt(ctx, blob, 12<<20); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteZeroes(ctx, 1<<20, 1<<20, false); err != nil {
		t.Fatal(err)
	}
	if err := c.Trim(ctx, 2<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(file[12<<20:13<<20], blob) {
		t.Fatal("write not in the file after flush")
	}
	if !bytes.Equal(file[1<<20:2<<20], make([]byte, 1<<20)) {
		t.Fatal("WRITE_ZEROES range not zero in the file")
	}
}

func TestNbdkitMultiConnAndPipelining(t *testing.T) {
	srv := testenv.StartNbdkit(t, "k", "memory", "size=64M")
	c := dial(t, srv.URI(), nbd.Options{Connections: 4, InFlight: 64, MetaContexts: []string{nbd.ContextAllocation}})
	if c.Connections() != 4 {
		t.Fatalf("nbdkit memory advertises multi-conn; got %d connections, want 4", c.Connections())
	}
	ctx := ctxT(t)
	// 256 concurrent 64 KiB writes, then reads, spread over the connections.
	rng := rand.New(rand.NewPCG(3, 4))
	want := make([]byte, 16<<20)
	for i := range want {
		want[i] = byte(rng.Uint32())
	}
	const chunk = 64 << 10
	errs := make(chan error, len(want)/chunk)
	for off := 0; off < len(want); off += chunk {
		go func() { errs <- c.WriteAt(ctx, want[off:off+chunk], int64(off)) }()
	}
	for range len(want) / chunk {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	for off := 0; off < len(want); off += chunk {
		go func() { errs <- c.ReadAt(ctx, got[off:off+chunk], int64(off)) }()
	}
	for range len(want) / chunk {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatal("pipelined reads differ from pipelined writes")
	}
	// The untouched tail reads as a hole.
	ext, err := c.BlockStatus(ctx, nbd.ContextAllocation, 32<<20, 32<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(ext) == 0 || ext[0].Flags&nbd.StateZero == 0 {
		t.Fatalf("tail of a fresh memory disk: %+v, want a zero extent", ext)
	}
}

func TestRequestsOutsideExportAreRefused(t *testing.T) {
	srv := testenv.StartNbdkit(t, "k", "memory", "size=1M")
	c := dial(t, srv.URI(), nbd.Options{})
	ctx := ctxT(t)
	if err := c.ReadAt(ctx, make([]byte, 4096), 1<<20-100); err == nil {
		t.Fatal("read past the end succeeded")
	}
	if err := c.WriteZeroes(ctx, 1<<20, 1, false); err == nil {
		t.Fatal("zero past the end succeeded")
	}
	// The connection is still usable.
	if err := c.ReadAt(ctx, make([]byte, 4096), 0); err != nil {
		t.Fatalf("read after refused requests: %v", err)
	}
}
