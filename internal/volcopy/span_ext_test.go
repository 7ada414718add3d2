package volcopy_test

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/taskd/taskd/internal/volcopy"
)

// TestSpannedHolesAreNotWritten: a source of 4 KiB data blocks with 8 KiB
// holes between them is read in few requests, each spanning holes, but
// only its data is written. Content cannot show a written hole (it is
// zeros either way), so the counters do: onto a target full of other data,
// exactly the data is written and exactly the holes are zeroed, each once.
// A spanned hole written as part of its read would be zeroed twice (zero
// detection makes it a zero run).
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

	full := filepath.Join(dir, "full")
	other := make([]byte, size)
	fillRandom(rng, other)
	if err := os.WriteFile(full, other, 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := run(t, volcopy.Spec{Source: fileURI(src.path), Target: fileURI(full)}, volcopy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, full, src.data)
	if may := mayRead(t, src.path, volcopy.SpanGapFile); p.BytesRead <= alloc || p.BytesRead > may {
		t.Fatalf("read %d bytes of a source with %d allocated (%d with its holes): want reads that span holes", p.BytesRead, alloc, may)
	}
	if p.BytesWritten != alloc || p.BytesZeroed != size-alloc {
		t.Fatalf("wrote %d and zeroed %d bytes; want the %d bytes of data written and the %d of holes zeroed, once each", p.BytesWritten, p.BytesZeroed, alloc, size-alloc)
	}
}
