package volcopy_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/testenv"
	"github.com/taskd/taskd/internal/volcopy"
)

func runCmd(t *testing.T, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

func TestCopyThroughQemuNBD(t *testing.T) {
	testenv.Need(t, "qemu-utils", "qemu-nbd", "qemu-img")
	rng := rand.New(rand.NewPCG(5, 5))
	dir := t.TempDir()
	src := writeImage(t, filepath.Join(dir, "src"), 12<<20+512, rng)

	// File to NBD: the export starts full of other data; the copy must
	// zero the holes, and WRITE_ZEROES lets qemu punch them.
	tgt := writeImage(t, filepath.Join(dir, "tgt"), len(src.data), rng)
	srv := testenv.StartQemuNBD(t, "tgt", tgt.path, "-f", "raw", "--discard=unmap", "--cache=none")
	p, err := run(t, volcopy.Spec{Source: fileURI(src.path), Target: srv.URI(), Verify: true}, volcopy.Options{})
	if err != nil {
		t.Fatalf("file -> nbd: %v", err)
	}
	srv.Stop()
	mustEqual(t, tgt.path, src.data)
	if a, max := allocated(t, tgt.path), nonZeroBytes(src.data)+1<<20; a > max {
		t.Fatalf("nbd target allocates %d bytes; the source has %d non-zero bytes", a, nonZeroBytes(src.data))
	}
	if p.BytesRead > mayRead(t, src.path, volcopy.SpanGapFile) {
		t.Fatalf("read %d bytes from a source with %d allocated (%d with the holes a read may span)", p.BytesRead, allocated(t, src.path), mayRead(t, src.path, volcopy.SpanGapFile))
	}

	// NBD to file: only what block status reports as data is read.
	ro := testenv.StartQemuNBD(t, "src", src.path, "-f", "raw", "--read-only", "--shared=4")
	out := filepath.Join(dir, "out")
	p, err = run(t, volcopy.Spec{Source: ro.URI(), Target: fileURI(out)}, volcopy.Options{})
	if err != nil {
		t.Fatalf("nbd -> file: %v", err)
	}
	mustEqual(t, out, src.data)
	if p.BytesRead > mayRead(t, src.path, volcopy.SpanGapNBD) {
		t.Fatalf("read %d bytes over NBD from a source with %d allocated", p.BytesRead, allocated(t, src.path))
	}
}

func TestCopyIntoNbdkit(t *testing.T) {
	testenv.Need(t, "nbdkit", "nbdkit")
	rng := rand.New(rand.NewPCG(6, 6))
	dir := t.TempDir()
	src := writeImage(t, filepath.Join(dir, "src"), 8<<20, rng)
	srv := testenv.StartNbdkit(t, "mem", "memory", fmt.Sprintf("size=%d", len(src.data)))
	if _, err := run(t, volcopy.Spec{Source: fileURI(src.path), Target: srv.URI(), TargetIsZero: true, Verify: true}, volcopy.Options{}); err != nil {
		t.Fatal(err)
	}
	// Read it back with a plain copy to a file.
	back := filepath.Join(dir, "back")
	if _, err := run(t, volcopy.Spec{Source: srv.URI(), Target: fileURI(back)}, volcopy.Options{}); err != nil {
		t.Fatal(err)
	}
	mustEqual(t, back, src.data)
}

// A dirty bitmap made with qemu-img: the copy reads only the extents it
// marks, and the target (which held the base) ends up equal to the image.
func TestDirtyBitmapCopy(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 8))
	dir := t.TempDir()
	base := writeImage(t, filepath.Join(dir, "base.raw"), 16<<20, rng)
	var args []string
	var changed int64
	for range 25 {
		off := rng.IntN(16<<20-8192) &^ 511
		n := (1 + rng.IntN(16)) * 512
		if rng.IntN(4) == 0 {
			args = append(args, "-c", fmt.Sprintf("write -z %d %d", off, n))
		} else {
			args = append(args, "-c", fmt.Sprintf("write -P %d %d %d", 1+rng.IntN(255), off, n))
		}
		changed += 2 * 65536 // at most two bitmap granules per write
	}
	srv, wantData, target := bitmapExport(t, dir, base, 65536, args)
	p, err := run(t, volcopy.Spec{Source: srv.URI(), Target: fileURI(target), DirtyBitmap: "b0", Verify: true}, volcopy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, target, wantData)
	if p.AllocatedTotal == 0 || p.AllocatedTotal > changed {
		t.Fatalf("bitmap marks %d bytes dirty; 25 small writes dirty at most %d", p.AllocatedTotal, changed)
	}
	// Verify reads whole extents; without it the copy reads only dirty data.
	cloneFile(t, base.path, target)
	p, err = run(t, volcopy.Spec{Source: srv.URI(), Target: fileURI(target), DirtyBitmap: "b0"}, volcopy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, target, wantData)
	// A read spans a clean gap of up to SpanGapNBD between two dirty ranges;
	// 25 writes make at most 50 ranges.
	if p.BytesRead < p.AllocatedTotal || p.BytesRead > p.AllocatedTotal+49*volcopy.SpanGapNBD {
		t.Fatalf("read %d bytes for %d dirty bytes", p.BytesRead, p.AllocatedTotal)
	}
	if p.BytesWritten+p.BytesZeroed > p.AllocatedTotal {
		t.Fatalf("wrote %d and zeroed %d bytes for %d dirty bytes", p.BytesWritten, p.BytesZeroed, p.AllocatedTotal)
	}
	t.Logf("dirty %d bytes of %d; read %d, wrote %d, zeroed %d", p.AllocatedTotal, len(wantData), p.BytesRead, p.BytesWritten, p.BytesZeroed)

	// A bitmap the export does not have is refused before anything runs.
	_, err = run(t, volcopy.Spec{Source: srv.URI(), Target: fileURI(target), DirtyBitmap: "nope"}, volcopy.Options{})
	if err == nil {
		t.Fatal("copy with an unknown bitmap succeeded")
	}
}

// TestDirtyBitmapSpansCleanGaps: the dirty ranges of a 4 KiB bitmap, 4-28
// KiB apart, are read in spans across the clean blocks between them, and
// only the dirty ranges are written. Content cannot show a written clean
// block (it equals what the target holds), so the counters do: the bytes
// written and zeroed are exactly the dirty bytes.
func TestDirtyBitmapSpansCleanGaps(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	dir := t.TempDir()
	base := writeImage(t, filepath.Join(dir, "base.raw"), 8<<20, rng)
	var args []string
	for off := 1 << 20; off < 3<<20; off += (2 + rng.IntN(7)) * 4096 {
		args = append(args, "-c", fmt.Sprintf("write -P %d %d 4096", 1+rng.IntN(255), off))
	}
	srv, wantData, target := bitmapExport(t, dir, base, 4096, args)
	p, err := run(t, volcopy.Spec{Source: srv.URI(), Target: fileURI(target), DirtyBitmap: "b0"}, volcopy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, target, wantData)
	if p.BytesRead <= p.AllocatedTotal {
		t.Fatalf("read %d bytes for %d dirty bytes: no read spanned a clean gap", p.BytesRead, p.AllocatedTotal)
	}
	if p.BytesWritten+p.BytesZeroed != p.AllocatedTotal {
		t.Fatalf("wrote %d and zeroed %d bytes for %d dirty bytes: a clean gap was written", p.BytesWritten, p.BytesZeroed, p.AllocatedTotal)
	}
	t.Logf("dirty %d bytes; read %d, wrote %d, zeroed %d", p.AllocatedTotal, p.BytesRead, p.BytesWritten, p.BytesZeroed)
}

// bitmapExport makes a qcow2 image of base with a dirty bitmap "b0" of the
// given granularity, applies the qemu-io commands (-c ...) to it, and
// serves it read-only with the bitmap. It returns the export, what the
// image now holds, and a target file that holds the base.
func bitmapExport(t *testing.T, dir string, base image, granularity int, cmds []string) (*harness.NBDServer, []byte, string) {
	t.Helper()
	testenv.Need(t, "qemu-utils", "qemu-nbd", "qemu-img", "qemu-io")
	disk := filepath.Join(dir, "disk.qcow2")
	runCmd(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", base.path, disk)
	runCmd(t, "qemu-img", "bitmap", "--add", "-g", fmt.Sprint(granularity), disk, "b0")
	runCmd(t, "qemu-io", append(append([]string{"-f", "qcow2"}, cmds...), disk)...)
	want := filepath.Join(dir, "want.raw")
	runCmd(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", disk, want)
	wantData, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "target.raw")
	cloneFile(t, base.path, target)
	return testenv.StartQemuNBD(t, "disk", disk, "-f", "qcow2", "--read-only", "--bitmap=b0"), wantData, target
}
