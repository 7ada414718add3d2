package volcopy_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/taskd/taskd/internal/volcopy"
	"github.com/taskd/taskd/internal/volume"
)

const blk = 4096

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// image is a random sparse image: runs of holes, random data, and
// allocated zeros.
type image struct {
	path string
	data []byte
}

func writeImage(t *testing.T, path string, size int, rng *rand.Rand) image {
	t.Helper()
	img := image{path: path, data: make([]byte, size)}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(int64(size)); err != nil {
		t.Fatal(err)
	}
	for off := 0; off < size; {
		n := min(size-off, (1+rng.IntN(64))*blk)
		if rng.IntN(5) == 0 {
			n = min(size-off, 1+rng.IntN(3*blk)) // unaligned runs too
		}
		switch k := rng.IntN(20); {
		case k < 10: // hole
		case k < 17:
			fillRandom(rng, img.data[off:off+n])
			if _, err := f.WriteAt(img.data[off:off+n], int64(off)); err != nil {
				t.Fatal(err)
			}
		default: // allocated zeros
			if _, err := f.WriteAt(make([]byte, n), int64(off)); err != nil {
				t.Fatal(err)
			}
		}
		off += n
	}
	return img
}

func fillRandom(rng *rand.Rand, b []byte) {
	for i := range b {
		b[i] = byte(rng.Uint32() | 1) // never a zero byte: data stays data
	}
}

// mutate applies random changes to an image file: new data, zeroed
// ranges (written and punched) and returns the changed bytes.
func mutate(t *testing.T, img *image, rng *rand.Rand, changes int) {
	t.Helper()
	f, err := os.OpenFile(img.path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size := len(img.data)
	for range changes {
		off := rng.IntN(size)
		n := min(size-off, 1+rng.IntN(4*blk))
		switch rng.IntN(3) {
		case 0, 1:
			fillRandom(rng, img.data[off:off+n])
			if _, err := f.WriteAt(img.data[off:off+n], int64(off)); err != nil {
				t.Fatal(err)
			}
		case 2:
			clear(img.data[off : off+n])
			if err := syscall.Fallocate(int(f.Fd()), 0x03 /* PUNCH_HOLE|KEEP_SIZE */, int64(off), int64(n)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func cloneFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// allocated sums the data extents of a file as SEEK_DATA/SEEK_HOLE see
// them (st_blocks would also count the file system's extent-tree blocks).
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	total, _ := allocatedAndGaps(t, path, 0)
	return total
}

// mayRead is what a copy of the file at path may read: its allocated
// data, and the holes between two data extents short enough for one read
// to span (at most gap bytes).
func mayRead(t *testing.T, path string, gap int64) int64 {
	t.Helper()
	total, gaps := allocatedAndGaps(t, path, gap)
	return total + gaps
}

func allocatedAndGaps(t *testing.T, path string, gap int64) (total, gaps int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	end := int64(-1) // the end of the last data extent
	for pos := int64(0); pos < fi.Size(); {
		data, err := unix.Seek(int(f.Fd()), pos, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		if end >= 0 && data-end <= gap {
			gaps += data - end
		}
		total += hole - data
		pos, end = hole, hole
	}
	return total, gaps
}

// nonZeroBytes is the size of the blocks of b that hold a non-zero byte:
// the most a sparse copy may allocate.
func nonZeroBytes(b []byte) int64 {
	var n int64
	zero := make([]byte, blk)
	for i := 0; i < len(b); i += blk {
		e := min(i+blk, len(b))
		if !bytes.Equal(b[i:e], zero[:e-i]) {
			n += blk
		}
	}
	return n
}

func run(t *testing.T, spec volcopy.Spec, opts volcopy.Options) (volcopy.Progress, error) {
	t.Helper()
	ctx := ctxT(t)
	job, err := volcopy.Prepare(ctx, spec, volume.Options{}, opts)
	if err != nil {
		return volcopy.Progress{}, err
	}
	defer job.Close()
	p, err := job.Run(ctx)
	if err == nil && p.LogicalDone != p.LogicalTotal {
		t.Errorf("a finished copy accounts for %d of %d logical bytes", p.LogicalDone, p.LogicalTotal)
	}
	return p, err
}

func mustEqual(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) < len(want) {
		t.Fatalf("%s: %d bytes, want at least %d", path, len(got), len(want))
	}
	if i := firstDiff(got[:len(want)], want); i >= 0 {
		t.Fatalf("%s differs from the source at byte %d", path, i)
	}
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// tuning draws small, odd engine settings so that request, block and extent
// boundaries fall everywhere.
func tuning(rng *rand.Rand) volcopy.Spec {
	req := (1 + rng.IntN(32)) * blk
	return volcopy.Spec{
		Workers:     1 + rng.IntN(8),
		RequestSize: req,
		ExtentSize:  int64(req * (1 + rng.IntN(16))),
	}
}

func fileURI(p string) string { return "file://" + p }

func TestPropertyFullCopy(t *testing.T) {
	for seed := range uint64(12) {
		t.Run("", func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 7))
			dir := t.TempDir()
			size := 1<<20 + rng.IntN(7<<20)
			src := writeImage(t, filepath.Join(dir, "src"), size, rng)
			spec := tuning(rng)
			spec.Source, spec.Target = fileURI(src.path), fileURI(filepath.Join(dir, "new"))
			spec.Verify = seed%3 == 0
			p, err := run(t, spec, volcopy.Options{})
			if err != nil {
				t.Fatalf("copy to a new file (%+v): %v", spec, err)
			}
			mustEqual(t, filepath.Join(dir, "new"), src.data)
			if a, max := allocated(t, filepath.Join(dir, "new")), nonZeroBytes(src.data); a > max {
				t.Fatalf("target allocates %d bytes, source has only %d bytes of non-zero blocks", a, max)
			}
			if p.BytesWritten > nonZeroBytes(src.data) {
				t.Fatalf("wrote %d bytes, more than the %d non-zero bytes", p.BytesWritten, nonZeroBytes(src.data))
			}

			// Onto an existing target full of other data: holes must
			// be zeroed, and the target still ends up sparse.
			old := writeImage(t, filepath.Join(dir, "old"), size+rng.IntN(3)*blk, rng)
			spec.Target = fileURI(old.path)
			if _, err := run(t, spec, volcopy.Options{}); err != nil {
				t.Fatalf("copy onto an existing file: %v", err)
			}
			mustEqual(t, old.path, src.data)
			if a, max := allocated(t, old.path), nonZeroBytes(src.data)+int64(len(old.data)-size)+blk; a > max {
				t.Fatalf("existing target allocates %d bytes after the copy, want at most %d", a, max)
			}
		})
	}
}

func TestPropertyIncrementalAgainstBase(t *testing.T) {
	for seed := range uint64(12) {
		t.Run("", func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 11))
			dir := t.TempDir()
			size := 1<<20 + rng.IntN(7<<20)
			base := writeImage(t, filepath.Join(dir, "base"), size, rng)
			src := image{path: filepath.Join(dir, "src"), data: bytes.Clone(base.data)}
			cloneFile(t, base.path, src.path)
			changes := 1 + rng.IntN(40)
			mutate(t, &src, rng, changes)
			dst := filepath.Join(dir, "dst")
			cloneFile(t, base.path, dst)

			spec := tuning(rng)
			spec.Source, spec.Target, spec.Base = fileURI(src.path), fileURI(dst), fileURI(base.path)
			spec.Verify = seed%2 == 0
			p, err := run(t, spec, volcopy.Options{})
			if err != nil {
				t.Fatalf("incremental copy (%+v): %v", spec, err)
			}
			mustEqual(t, dst, src.data)
			// Only changed blocks are written: at most the blocks
			// that differ between base and source.
			var changed int64
			for i := 0; i < size; i += blk {
				e := min(i+blk, size)
				if !bytes.Equal(base.data[i:e], src.data[i:e]) {
					changed += int64(e - i)
				}
			}
			if p.BytesWritten+p.BytesZeroed > changed+int64(size)/2 && p.BytesWritten > changed {
				t.Fatalf("wrote %d bytes for %d changed bytes", p.BytesWritten, changed)
			}
			if p.BytesWritten > changed {
				t.Fatalf("wrote %d bytes for %d bytes in changed blocks", p.BytesWritten, changed)
			}
		})
	}
}

func TestResumeRecopiesAtMostOneExtent(t *testing.T) {
	rng := rand.New(rand.NewPCG(42, 42))
	dir := t.TempDir()
	src := writeImage(t, filepath.Join(dir, "src"), 16<<20, rng)
	dst := filepath.Join(dir, "dst")
	spec := volcopy.Spec{Source: fileURI(src.path), Target: fileURI(dst), RequestSize: 64 << 10, ExtentSize: 1 << 20, Workers: 4}

	// First run: crash it in the middle of an extent past half the
	// volume (nothing of the copier runs after the cancel).
	ctx, cancel := context.WithCancel(ctxT(t))
	var last []byte
	opts := volcopy.Options{
		RequestSize: spec.RequestSize, ExtentSize: spec.ExtentSize, Workers: spec.Workers,
		OnCheckpoint: func(cp []byte) error { last = bytes.Clone(cp); return nil },
	}
	srcVol, err := volume.Open(ctx, spec.Source, volume.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srcVol.Close()
	dstVol, err := volume.Open(ctx, spec.Target, volume.Options{Write: true, CreateSize: srcVol.Size()})
	if err != nil {
		t.Fatal(err)
	}
	defer dstVol.Close()
	crashAt := int64(8<<20 + 300<<10)
	c, err := volcopy.New(srcVol, &crashingVolume{Volume: dstVol, at: crashAt, crash: cancel}, opts)
	if err != nil {
		t.Fatal(err)
	}
	first, err := c.Run(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("first run: err = %v, want it cut off", err)
	}
	if last == nil {
		t.Fatal("no checkpoint before the crash")
	}
	info, err := volcopy.DescribeCheckpoint(last)
	if err != nil {
		t.Fatal(err)
	}

	// Second run from the checkpoint.
	second, err := run(t, spec, volcopy.Options{Resume: last})
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, dst, src.data)
	full, err := run(t, volcopy.Spec{Source: spec.Source, Target: fileURI(filepath.Join(dir, "ref")),
		RequestSize: spec.RequestSize, ExtentSize: spec.ExtentSize}, volcopy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// What the first run wrote past its last checkpoint is work the crash
	// threw away and the resume does again: at most one extent. (Reads may
	// run one extent further ahead; they change nothing.)
	recopied := first.BytesWritten + first.BytesZeroed - info.BytesWritten - info.BytesZeroed
	// Writes never run more than one extent ahead of the last checkpoint.
	if info.Next > crashAt || crashAt-info.Next > spec.ExtentSize {
		t.Fatalf("last checkpoint at %d, crash at %d: more than one extent (%d) apart", info.Next, crashAt, spec.ExtentSize)
	}
	if recopied > spec.ExtentSize {
		t.Fatalf("resume re-wrote %d bytes, more than one extent (%d)", recopied, spec.ExtentSize)
	}
	// The resumed run's counters continue from the checkpoint: they end
	// where an uninterrupted copy's end.
	if second.BytesRead != full.BytesRead || second.BytesWritten != full.BytesWritten {
		t.Fatalf("resumed run ends at %d read, %d written; an uninterrupted copy at %d, %d",
			second.BytesRead, second.BytesWritten, full.BytesRead, full.BytesWritten)
	}
	if recopied == 0 {
		t.Fatal("the crash lost no writes; the test proves nothing")
	}
	t.Logf("cut at %d of %d bytes; %d bytes re-written on resume", info.Next, first.LogicalTotal, recopied)
}

// crashingVolume models a process that dies right after a write reaching
// offset at has landed: that write completes, the copy's context is
// cancelled, and every later write, zero or flush is refused. The write
// that reached at is therefore always work past the last checkpoint (its
// extent can no longer be flushed), whatever order the workers ran in.
type crashingVolume struct {
	volume.Volume
	at      int64
	crash   context.CancelFunc
	crashed atomic.Bool
}

func (v *crashingVolume) WriteAt(ctx context.Context, p []byte, off int64) error {
	if v.crashed.Load() {
		return context.Canceled
	}
	if err := v.Volume.WriteAt(ctx, p, off); err != nil {
		return err
	}
	if off+int64(len(p)) > v.at && v.crashed.CompareAndSwap(false, true) {
		v.crash()
	}
	return nil
}

func (v *crashingVolume) Zero(ctx context.Context, off, n int64) error {
	if v.crashed.Load() {
		return context.Canceled
	}
	return v.Volume.Zero(ctx, off, n)
}

func (v *crashingVolume) Flush(ctx context.Context) error {
	if v.crashed.Load() {
		return context.Canceled
	}
	return v.Volume.Flush(ctx)
}

// Units that change nothing on the target are not flushed: on a fresh
// target, only the units holding data cost a flush. A copy whose
// checkpoints nobody keeps flushes once, at its end.
func TestEmptyUnitsNeedNoFlush(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	data := make([]byte, 1<<20)
	fillRandom(rand.New(rand.NewPCG(3, 3)), data)
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(8 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	// Extent 1 MiB: units of 512 KiB, two of them hold the data.
	spec := volcopy.Spec{Source: fileURI(src), Target: fileURI(filepath.Join(dir, "dst")), RequestSize: 64 << 10, ExtentSize: 1 << 20}
	var checkpoints int
	p, err := run(t, spec, volcopy.Options{OnCheckpoint: func([]byte) error { checkpoints++; return nil }})
	if err != nil {
		t.Fatal(err)
	}
	if p.ExtentsTotal != 16 || p.ExtentsDone != 16 || checkpoints != 16 {
		t.Fatalf("units %d/%d, %d checkpoints, want 16/16 and 16", p.ExtentsDone, p.ExtentsTotal, checkpoints)
	}
	if p.Flushes != 2 {
		t.Fatalf("%d flushes, want 2 (one per unit holding data)", p.Flushes)
	}
	mustEqual(t, filepath.Join(dir, "dst"), append(data, make([]byte, 7<<20)...))

	// Without checkpoints: one flush, after the last unit.
	spec.Target = fileURI(filepath.Join(dir, "dst2"))
	if p, err = run(t, spec, volcopy.Options{}); err != nil {
		t.Fatal(err)
	}
	if p.Flushes != 1 {
		t.Fatalf("%d flushes without checkpoints, want 1", p.Flushes)
	}
	mustEqual(t, filepath.Join(dir, "dst2"), append(data, make([]byte, 7<<20)...))
}

// TestMayWriteStopsWrites: once the gate refuses, the copy stops with the
// gate's error and writes nothing more to the target.
func TestMayWriteStopsWrites(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	dir := t.TempDir()
	src := writeImage(t, filepath.Join(dir, "src"), 8<<20, rng)
	dst := filepath.Join(dir, "dst")
	gone := errors.New("attempt no longer active")
	var allowed, refused atomic.Int64
	opts := volcopy.Options{MayWrite: func() error {
		if allowed.Load() >= 10 {
			refused.Add(1)
			return gone
		}
		allowed.Add(1)
		return nil
	}}
	_, err := run(t, volcopy.Spec{Source: fileURI(src.path), Target: fileURI(dst), RequestSize: 64 << 10, Workers: 1}, opts)
	if !errors.Is(err, gone) {
		t.Fatalf("copy with a closed gate: err = %v, want the gate's error", err)
	}
	if refused.Load() == 0 {
		t.Fatal("the gate was never asked after it closed")
	}
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	// With one worker, at most the 10 allowed writes of at most one
	// request each reached the target.
	if n := nonZeroBytes(got); n > 10*64<<10 {
		t.Fatalf("%d bytes written, more than the 10 allowed requests", n)
	}
}
