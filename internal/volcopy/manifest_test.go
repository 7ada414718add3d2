package volcopy_test

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/taskd/taskd/internal/volcopy"
	"github.com/taskd/taskd/internal/volume"
)

func manifestPath(target string) string {
	return filepath.Join(filepath.Dir(target), "."+filepath.Base(target)+".taskd-manifest")
}

// changedBlocks is the size of the blocks that differ between a and b.
func changedBlocks(a, b []byte) int64 {
	var n int64
	for i := 0; i < len(a); i += blk {
		e := min(i+blk, len(a))
		if !bytes.Equal(a[i:e], b[i:e]) {
			n += int64(e - i)
		}
	}
	return n
}

// TestManifestIncrementalReadsOnlySource: a copy with a trusted manifest
// reads the source's allocated data and nothing of the target, and writes
// only blocks that changed; the result is the source, and the next
// manifest is valid again. Seeds 2, 3, 6 and 7 keep no extent's entries
// in memory (every range reads and writes the manifest files itself).
func TestManifestIncrementalReadsOnlySource(t *testing.T) {
	for seed := range uint64(8) {
		t.Run("", func(t *testing.T) {
			if seed%4 >= 2 {
				defer volcopy.HoldUnitEntries(0)()
			}
			rng := rand.New(rand.NewPCG(seed, 21))
			dir := t.TempDir()
			size := 1<<20 + rng.IntN(7<<20)
			src := writeImage(t, filepath.Join(dir, "src"), size, rng)
			dst := filepath.Join(dir, "dst")
			spec := tuning(rng)
			spec.Source, spec.Target, spec.Manifest = fileURI(src.path), fileURI(dst), true
			if _, err := run(t, spec, volcopy.Options{}); err != nil {
				t.Fatalf("first copy: %v", err)
			}
			if _, err := os.Stat(manifestPath(dst)); err != nil {
				t.Fatalf("no manifest after the first copy: %v", err)
			}
			before := bytes.Clone(src.data)
			mutate(t, &src, rng, 1+rng.IntN(40))
			spec.Verify = seed%2 == 0
			p, err := run(t, spec, volcopy.Options{})
			if err != nil {
				t.Fatalf("incremental copy (%+v): %v", spec, err)
			}
			mustEqual(t, dst, src.data)
			if want := mayRead(t, src.path, volcopy.SpanGapFile); p.BytesRead > want+int64(spec.RequestSize) {
				t.Fatalf("read %d bytes; the source holds %d: the target was read", p.BytesRead, want)
			}
			if ch := changedBlocks(before, src.data); p.BytesWritten > ch {
				t.Fatalf("wrote %d bytes for %d bytes in changed blocks", p.BytesWritten, ch)
			}
			// Once more with nothing changed: nothing is written.
			p, err = run(t, spec, volcopy.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if p.BytesWritten+p.BytesZeroed != 0 {
				t.Fatalf("an unchanged source wrote %d and zeroed %d bytes", p.BytesWritten, p.BytesZeroed)
			}
		})
	}
}

// TestManifestNotTrustedComparesWithTarget: a manifest that no longer
// describes the target (the target written to behind its back, the
// manifest corrupt, truncated, for another size, or gone) is not trusted:
// the copy reads the target, and the target ends up equal to the source,
// also in the block the manifest would have called unchanged.
func TestManifestNotTrustedComparesWithTarget(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spoil func(t *testing.T, dst, manifest string)
	}{
		{"target written after the copy", func(t *testing.T, dst, _ string) {
			f, err := os.OpenFile(dst, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt([]byte("tampered"), 4096); err != nil {
				t.Fatal(err)
			}
		}},
		{"an entry flipped", func(t *testing.T, _, manifest string) {
			b, err := os.ReadFile(manifest)
			if err != nil {
				t.Fatal(err)
			}
			b[128+16+3] ^= 0x40
			if err := os.WriteFile(manifest, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"header flipped", func(t *testing.T, _, manifest string) {
			b, err := os.ReadFile(manifest)
			if err != nil {
				t.Fatal(err)
			}
			b[60] ^= 1
			if err := os.WriteFile(manifest, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"truncated", func(t *testing.T, _, manifest string) {
			if err := os.Truncate(manifest, 1000); err != nil {
				t.Fatal(err)
			}
		}},
		{"missing", func(t *testing.T, _, manifest string) {
			if err := os.Remove(manifest); err != nil {
				t.Fatal(err)
			}
		}},
		{"group writable", func(t *testing.T, _, manifest string) {
			if err := os.Chmod(manifest, 0o620); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(5, 5))
			dir := t.TempDir()
			src := image{path: filepath.Join(dir, "src"), data: make([]byte, 2<<20)}
			fillRandom(rng, src.data)
			if err := os.WriteFile(src.path, src.data, 0o600); err != nil {
				t.Fatal(err)
			}
			dst := filepath.Join(dir, "dst")
			spec := volcopy.Spec{Source: fileURI(src.path), Target: fileURI(dst), Manifest: true, RequestSize: 64 << 10}
			if _, err := run(t, spec, volcopy.Options{}); err != nil {
				t.Fatal(err)
			}
			tc.spoil(t, dst, manifestPath(dst))
			// The source is unchanged: a trusted manifest would write
			// nothing and leave the tampered block.
			p, err := run(t, spec, volcopy.Options{})
			if err != nil {
				t.Fatal(err)
			}
			mustEqual(t, dst, src.data)
			if p.BytesRead < 2*int64(len(src.data)) {
				t.Fatalf("read %d bytes: the target (%d bytes) was not compared", p.BytesRead, len(src.data))
			}
			// The copy left a valid manifest again.
			p, err = run(t, spec, volcopy.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if p.BytesRead != int64(len(src.data)) || p.BytesWritten != 0 {
				t.Fatalf("after repair: read %d, wrote %d; want %d read, nothing written", p.BytesRead, p.BytesWritten, len(src.data))
			}
		})
	}
}

// TestManifestResume: a manifest copy cut off resumes from its checkpoint
// and ends equal to the source; the copies after it go back to a trusted
// manifest.
func TestManifestResume(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	dir := t.TempDir()
	src := writeImage(t, filepath.Join(dir, "src"), 16<<20, rng)
	dst := filepath.Join(dir, "dst")
	spec := volcopy.Spec{Source: fileURI(src.path), Target: fileURI(dst), Manifest: true, RequestSize: 64 << 10, ExtentSize: 1 << 20, Workers: 2}
	if _, err := run(t, spec, volcopy.Options{}); err != nil {
		t.Fatal(err)
	}
	for round := range 2 {
		mutate(t, &src, rng, 200)
		var last []byte
		var writes atomic.Int64 // MayWrite runs on every worker
		cut := errors.New("cut off")
		_, err := run(t, spec, volcopy.Options{
			OnCheckpoint: func(cp []byte) error { last = bytes.Clone(cp); return nil },
			MayWrite: func() error {
				if writes.Add(1) > 60 {
					return cut
				}
				return nil
			},
		})
		if !errors.Is(err, cut) {
			t.Fatalf("round %d: first run: %v, want it cut off", round, err)
		}
		if last == nil {
			t.Fatalf("round %d: no checkpoint before the cut", round)
		}
		if _, err := run(t, spec, volcopy.Options{Resume: last}); err != nil {
			t.Fatalf("round %d: resume: %v", round, err)
		}
		mustEqual(t, dst, src.data)
		// A resumed copy leaves no manifest (it cannot tell what
		// happened to the target between the runs): the next copy
		// compares with the target, writes nothing, and leaves one
		// that the copy after it trusts.
		p, err := run(t, spec, volcopy.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if a := allocated(t, src.path); p.BytesWritten+p.BytesZeroed != 0 || p.BytesRead < 2*a {
			t.Fatalf("round %d: the copy after the resumed one: read %d, wrote %d, zeroed %d; want the target compared (%d) and nothing written",
				round, p.BytesRead, p.BytesWritten, p.BytesZeroed, 2*a)
		}
		p, err = run(t, spec, volcopy.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if p.BytesWritten+p.BytesZeroed != 0 || p.BytesRead > mayRead(t, src.path, volcopy.SpanGapFile)+int64(spec.RequestSize) {
			t.Fatalf("round %d: read %d, wrote %d, zeroed %d: the manifest left by the comparing copy was not trusted",
				round, p.BytesRead, p.BytesWritten, p.BytesZeroed)
		}
	}
}

// TestManifestNeedsAFileTarget: --manifest onto something without a
// directory entry of its own is refused before anything is written.
func TestManifestNeedsAFileTarget(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	real := filepath.Join(dir, "real")
	if err := os.WriteFile(real, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	_, err := run(t, volcopy.Spec{Source: fileURI(src), Target: fileURI(link), Manifest: true}, volcopy.Options{})
	if !errors.Is(err, volcopy.ErrInvalid) || !errors.Is(err, volume.ErrNoSidecar) {
		t.Fatalf("manifest onto a symlink: %v, want ErrInvalid naming the missing sidecar", err)
	}
	for _, name := range []string{".link.taskd-manifest", ".real.taskd-manifest", ".link.taskd-manifest.tmp"} {
		if _, err := os.Lstat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s exists after a refused copy", name)
		}
	}
}
