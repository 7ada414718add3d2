package volcopy_test

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/taskd/taskd/internal/volcopy"
	"golang.org/x/sys/unix"
)

// TestSpannedHolesAreNotWritten: a source of 4 KiB data blocks with 8 KiB
// holes between them is read in few requests, each spanning holes, but only
// its data is written. With zero detection off (so a read hole, were it
// written, would be written as data) a new target allocates exactly what
// the source does; a target full of other data ends equal to the source.
func TestSpannedHolesAreNotWritten(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(11, 11))
	const size = 4 << 20
	src := image{path: filepath.Join(dir, "src"), data: make([]byte, size)}
	f, err := os.Create(src.path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for off := 0; off < size; off += 12 << 10 {
		fillRandom(rng, src.data[off:off+blk])
		if _, err := f.WriteAt(src.data[off:off+blk], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	alloc := allocated(t, src.path)
	// The targets are on another file system, so that the copy reads and
	// writes: copy_file_range reads nothing of ours and spans nothing.
	other, err := os.MkdirTemp("/dev/shm", "taskd-span-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(other) })
	if sameFS(t, dir, other) {
		t.Fatalf("%s and %s are one file system; the test needs two", dir, other)
	}
	opts := volcopy.Options{ZeroDetect: volcopy.ZeroNever}

	fresh := filepath.Join(other, "fresh")
	p, err := run(t, volcopy.Spec{Source: fileURI(src.path), Target: fileURI(fresh)}, opts)
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, fresh, src.data)
	if p.BytesRead <= alloc || p.BytesRead > mayRead(t, src.path, volcopy.SpanGapFile) {
		t.Fatalf("read %d bytes of a source with %d allocated (%d with its holes): want reads that span holes", p.BytesRead, alloc, mayRead(t, src.path, volcopy.SpanGapFile))
	}
	if got := allocated(t, fresh); p.BytesWritten != alloc || got != alloc {
		t.Fatalf("wrote %d bytes and the target allocates %d; the source allocates %d: a spanned hole was written", p.BytesWritten, got, alloc)
	}

	full := writeImage(t, filepath.Join(other, "full"), size, rng)
	fillRandom(rng, full.data)
	if err := os.WriteFile(full.path, full.data, 0o600); err != nil {
		t.Fatal(err)
	}
	p, err = run(t, volcopy.Spec{Source: fileURI(src.path), Target: fileURI(full.path)}, opts)
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, full.path, src.data)
	if p.BytesWritten != alloc || p.BytesZeroed != size-alloc {
		t.Fatalf("wrote %d and zeroed %d bytes; want the %d bytes of data written and the %d of holes zeroed", p.BytesWritten, p.BytesZeroed, alloc, size-alloc)
	}
}

func sameFS(t *testing.T, a, b string) bool {
	t.Helper()
	var sa, sb unix.Stat_t
	if err := unix.Stat(a, &sa); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(b, &sb); err != nil {
		t.Fatal(err)
	}
	return sa.Dev == sb.Dev
}
