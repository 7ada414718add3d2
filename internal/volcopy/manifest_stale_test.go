package volcopy_test

import (
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/taskd/taskd/internal/volcopy"
)

// Each test below leaves beside the target a manifest that is checksummed
// and owned as a good one, but does not describe the target as it is: a
// copy that trusted it would skip blocks the target does not hold, and
// the target would silently differ from the source. The copy must compare
// with the target's content instead (reading it: BytesRead at least source
// plus target), and the target must end equal to the source, byte by byte.

// manifestCopy copies src onto dst with --manifest.
func manifestCopy(t *testing.T, src, dst string, opts volcopy.Options) (volcopy.Progress, error) {
	t.Helper()
	return run(t, volcopy.Spec{Source: fileURI(src), Target: fileURI(dst), Manifest: true, RequestSize: 64 << 10, ExtentSize: 512 << 10, Workers: 3}, opts)
}

// mustCompare checks that a copy read the target (did not trust the
// manifest) and left it equal to the source.
func mustCompare(t *testing.T, p volcopy.Progress, dst string, src image) {
	t.Helper()
	mustEqual(t, dst, src.data)
	if a := allocated(t, src.path); p.BytesRead < 2*a {
		t.Fatalf("read %d bytes for a source of %d allocated: the target was not compared (manifest trusted)", p.BytesRead, a)
	}
}

// twoImages writes two different images of the same size and layout.
func twoImages(t *testing.T, dir string, seed uint64) (x, y image) {
	x = writeImage(t, filepath.Join(dir, "x"), 3<<20, rand.New(rand.NewPCG(seed, 1)))
	y = writeImage(t, filepath.Join(dir, "y"), 3<<20, rand.New(rand.NewPCG(seed, 2)))
	return x, y
}

// TestManifestOfAnotherTargetIsNotTrusted: the manifest of target B
// (holding Y) is moved beside target A (holding X). A copy of Y onto A
// trusting it would write nothing and leave X.
func TestManifestOfAnotherTargetIsNotTrusted(t *testing.T) {
	dir := t.TempDir()
	x, y := twoImages(t, dir, 1)
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	for _, c := range [][2]string{{x.path, a}, {y.path, b}} {
		if _, err := manifestCopy(t, c[0], c[1], volcopy.Options{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Rename(manifestPath(b), manifestPath(a)); err != nil {
		t.Fatal(err)
	}
	p, err := manifestCopy(t, y.path, a, volcopy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	mustCompare(t, p, a, y)
}

// TestManifestOfAnEarlierCopyIsNotTrusted: the manifest of an earlier copy
// of the same target, saved and put back after a later copy (a backup
// restored, a replay). It says the target holds X; it holds Y.
func TestManifestOfAnEarlierCopyIsNotTrusted(t *testing.T) {
	dir := t.TempDir()
	x, y := twoImages(t, dir, 2)
	a := filepath.Join(dir, "a")
	if _, err := manifestCopy(t, x.path, a, volcopy.Options{}); err != nil {
		t.Fatal(err)
	}
	saved := filepath.Join(dir, "saved-manifest")
	cloneFile(t, manifestPath(a), saved)
	if _, err := manifestCopy(t, y.path, a, volcopy.Options{}); err != nil {
		t.Fatal(err)
	}
	mustEqual(t, a, y.data)
	if err := os.Rename(saved, manifestPath(a)); err != nil {
		t.Fatal(err)
	}
	p, err := manifestCopy(t, x.path, a, volcopy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	mustCompare(t, p, a, x)
}

// TestManifestAfterACutOffCopyIsNotTrusted: a copy of Y onto A (which
// holds X, with X's manifest) is cut off part way and not resumed. The
// committed manifest still says X; A holds part X, part Y. A copy of X
// trusting it would write nothing; one of Y would have to be compared too.
func TestManifestAfterACutOffCopyIsNotTrusted(t *testing.T) {
	for _, back := range []bool{true, false} {
		dir := t.TempDir()
		x, y := twoImages(t, dir, 3)
		a := filepath.Join(dir, "a")
		if _, err := manifestCopy(t, x.path, a, volcopy.Options{}); err != nil {
			t.Fatal(err)
		}
		var writes atomic.Int64
		cut := errors.New("cut off")
		_, err := manifestCopy(t, y.path, a, volcopy.Options{MayWrite: func() error {
			if writes.Add(1) > 20 {
				return cut
			}
			return nil
		}})
		if !errors.Is(err, cut) {
			t.Fatalf("the copy was not cut off: %v", err)
		}
		want := y
		if back {
			want = x
		}
		p, err := manifestCopy(t, want.path, a, volcopy.Options{})
		if err != nil {
			t.Fatal(err)
		}
		mustCompare(t, p, a, want)
	}
}

// TestManifestOfAReplacedTargetIsNotTrusted: the target file is replaced
// (renamed over) by another file of the same size; its manifest stays.
func TestManifestOfAReplacedTargetIsNotTrusted(t *testing.T) {
	dir := t.TempDir()
	x, y := twoImages(t, dir, 4)
	a := filepath.Join(dir, "a")
	if _, err := manifestCopy(t, x.path, a, volcopy.Options{}); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other")
	cloneFile(t, y.path, other)
	if err := os.Rename(other, a); err != nil {
		t.Fatal(err)
	}
	p, err := manifestCopy(t, x.path, a, volcopy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	mustCompare(t, p, a, x)
}

// TestManifestWriteRightAfterTheCopy: a write to the target as soon as the
// copy returns (within the same tick of the file system's clock) must still
// make the manifest stale. A kernel that stamps ctime from the coarse clock
// leaves ctime unchanged by a write in the tick of the recorded state; the
// copy records the state only once the clock has moved past it
// (settledState). Kernels with multigrain timestamps (6.13 on) stamp a
// write after a stat finely, so there the race does not show either way.
func TestManifestWriteRightAfterTheCopy(t *testing.T) {
	dir := t.TempDir()
	x, _ := twoImages(t, dir, 5)
	a := filepath.Join(dir, "a")
	block := make([]byte, blk)
	for i := range block {
		block[i] = 0x5a
	}
	for round := range 20 {
		if _, err := manifestCopy(t, x.path, a, volcopy.Options{}); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(a, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.WriteAt(block, int64(round*7%700)*blk)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		p, err := manifestCopy(t, x.path, a, volcopy.Options{})
		if err != nil {
			t.Fatal(err)
		}
		mustCompare(t, p, a, x)
	}
}

// TestManifestResumeAfterATargetWrite: a manifest copy is cut off, the
// target is written to before the copy resumes (beyond where the cut-off
// run could have written), and the copy resumes from its checkpoint. The
// old manifest no longer describes that part of the target; a resumed run
// that trusted it there would leave the foreign write in place.
func TestManifestResumeAfterATargetWrite(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(6, 6))
	src := writeImage(t, filepath.Join(dir, "src"), 16<<20, rng)
	a := filepath.Join(dir, "a")
	if _, err := manifestCopy(t, src.path, a, volcopy.Options{}); err != nil {
		t.Fatal(err)
	}
	// Change every other block of the first 4 MiB: many small writes.
	f, err := os.OpenFile(src.path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < 4<<20; off += 2 * blk {
		fillRandom(rng, src.data[off:off+blk])
		if _, err := f.WriteAt(src.data[off:off+blk], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	var last []byte
	var writes atomic.Int64
	cut := errors.New("cut off")
	_, err = manifestCopy(t, src.path, a, volcopy.Options{
		OnCheckpoint: func(cp []byte) error { last = append([]byte(nil), cp...); return nil },
		MayWrite: func() error {
			if writes.Add(1) > 150 {
				return cut
			}
			return nil
		},
	})
	if !errors.Is(err, cut) || last == nil {
		t.Fatalf("want a copy cut off after a checkpoint: err %v, checkpoint %v", err, last != nil)
	}
	// A foreign write far past the cut, where the source did not change.
	off := int64(15 << 20)
	g, err := os.OpenFile(a, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	junk := make([]byte, blk)
	for i := range junk {
		junk[i] = 0x77
	}
	_, err = g.WriteAt(junk, off)
	g.Close()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := manifestCopy(t, src.path, a, volcopy.Options{Resume: last}); err != nil {
		t.Fatal(err)
	}
	mustEqual(t, a, src.data)
}
