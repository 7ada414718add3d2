package volcopy_test

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/taskd/taskd/internal/nbd"
	"github.com/taskd/taskd/internal/volcopy"
	"github.com/taskd/taskd/internal/volume"
)

// Every case must fail with a clear error before anything is written: the
// target, if it exists, keeps its bytes, and no file appears.
func TestBadInputWritesNothing(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	root := t.TempDir()
	outside := t.TempDir()
	src := writeImage(t, filepath.Join(root, "src"), 1<<20, rng)
	small := writeImage(t, filepath.Join(root, "small"), 512<<10, rng)
	existing := writeImage(t, filepath.Join(root, "existing"), 1<<20, rng)
	secret := writeImage(t, filepath.Join(outside, "secret"), 1<<20, rng)
	if err := os.Symlink(filepath.Join(outside, "secret"), filepath.Join(root, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "escapedir")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(src.path, filepath.Join(root, "hardlink")); err != nil {
		t.Fatal(err)
	}
	roots := []string{root}

	cases := []struct {
		name    string
		spec    volcopy.Spec
		roots   []string
		want    error
		message string
	}{
		{"missing source", volcopy.Spec{Source: fileURI(filepath.Join(root, "nope")), Target: fileURI(filepath.Join(root, "new1"))}, nil, os.ErrNotExist, "no such file"},
		{"destination smaller", volcopy.Spec{Source: fileURI(src.path), Target: fileURI(small.path)}, nil, volcopy.ErrInvalid, "smaller than the source"},
		{"source equals destination", volcopy.Spec{Source: fileURI(src.path), Target: fileURI(src.path)}, nil, volcopy.ErrInvalid, "same volume"},
		{"same file by a hard link", volcopy.Spec{Source: fileURI(src.path), Target: fileURI(filepath.Join(root, "hardlink"))}, nil, volcopy.ErrInvalid, "same volume"},
		{"target outside roots", volcopy.Spec{Source: fileURI(src.path), Target: fileURI(filepath.Join(outside, "new2"))}, roots, volume.ErrOutsideRoots, "outside the allowed roots"},
		{"source outside roots", volcopy.Spec{Source: fileURI(secret.path), Target: fileURI(filepath.Join(root, "new3"))}, roots, volume.ErrOutsideRoots, "outside the allowed roots"},
		{"dot-dot escape", volcopy.Spec{Source: fileURI(root + "/../" + filepath.Base(outside) + "/secret"), Target: fileURI(filepath.Join(root, "new4"))}, roots, volume.ErrOutsideRoots, "outside the allowed roots"},
		{"symlink escapes root (source)", volcopy.Spec{Source: fileURI(filepath.Join(root, "escape")), Target: fileURI(filepath.Join(root, "new5"))}, roots, volume.ErrOutsideRoots, "symlink"},
		{"symlink escapes root (target)", volcopy.Spec{Source: fileURI(src.path), Target: fileURI(filepath.Join(root, "escape"))}, roots, volume.ErrOutsideRoots, "symlink"},
		{"symlinked dir escapes root (new target)", volcopy.Spec{Source: fileURI(src.path), Target: fileURI(filepath.Join(root, "escapedir", "new6"))}, roots, volume.ErrOutsideRoots, "symlink"},
		{"relative file uri", volcopy.Spec{Source: "file://src", Target: fileURI(filepath.Join(root, "new7"))}, nil, volume.ErrInvalid, "absolute path"},
		{"unknown scheme", volcopy.Spec{Source: "s3://bucket/x", Target: fileURI(filepath.Join(root, "new8"))}, nil, volume.ErrInvalid, "want file://"},
		{"dirty bitmap on a file", volcopy.Spec{Source: fileURI(src.path), Target: fileURI(existing.path), DirtyBitmap: "b0"}, nil, volcopy.ErrInvalid, "NBD source"},
		{"base and bitmap", volcopy.Spec{Source: fileURI(src.path), Target: fileURI(existing.path), Base: fileURI(src.path), DirtyBitmap: "b0"}, nil, volcopy.ErrInvalid, "exclude each other"},
		{"base of another size", volcopy.Spec{Source: fileURI(src.path), Target: fileURI(existing.path), Base: fileURI(small.path)}, nil, volcopy.ErrInvalid, "differ in size"},
		{"request size not a block multiple", volcopy.Spec{Source: fileURI(src.path), Target: fileURI(existing.path), RequestSize: 1000}, nil, volcopy.ErrInvalid, "multiple of the block size"},
		{"nbd socket missing (retryable)", volcopy.Spec{Source: "nbd+unix:///x?socket=" + filepath.Join(root, "no.sock"), Target: fileURI(existing.path)}, nil, nbd.ErrUnreachable, "connect"},
		{"buffer memory above the per-copy cap", volcopy.Spec{Source: fileURI(src.path), Target: fileURI(filepath.Join(root, "new9")), Workers: 1024, RequestSize: 64 << 20}, nil, volcopy.ErrInvalid, "at most 256 MiB"},
		{"buffers just above the cap with verify", volcopy.Spec{Source: fileURI(src.path), Target: fileURI(filepath.Join(root, "new10")), Workers: 64, RequestSize: 3 << 20, Verify: true}, nil, volcopy.ErrInvalid, "384 MiB"},
		{"workers beyond 1024", volcopy.Spec{Source: fileURI(src.path), Target: fileURI(filepath.Join(root, "new11")), Workers: 5000, RequestSize: 4096}, nil, volcopy.ErrInvalid, "outside 1-1024"},
		// Refused after the new target was created: it must go again.
		{"new target, then a bad request size", volcopy.Spec{Source: fileURI(src.path), Target: fileURI(filepath.Join(root, "new12")), RequestSize: 1000}, roots, volcopy.ErrInvalid, "multiple of the block size"},
		{"new target, then a bitmap on a file", volcopy.Spec{Source: fileURI(src.path), Target: fileURI(filepath.Join(root, "new13")), DirtyBitmap: "b0"}, nil, volcopy.ErrInvalid, "NBD source"},
	}
	before := snapshotDir(t, root, outside)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			job, err := volcopy.Prepare(ctxT(t), tc.spec, volume.Options{Roots: tc.roots}, volcopy.Options{})
			if err == nil {
				job.Close()
				t.Fatal("bad input accepted")
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if tc.want == nbd.ErrUnreachable && errors.Is(err, volcopy.ErrInvalid) {
				t.Fatalf("err = %v: an unreachable server is worth retrying, not bad input", err)
			}
			if !bytes.Contains([]byte(err.Error()), []byte(tc.message)) {
				t.Fatalf("err = %q, want it to say %q", err, tc.message)
			}
			if after := snapshotDir(t, root, outside); !equalSnapshots(before, after) {
				t.Fatal("a refused copy changed files")
			}
		})
	}
}

// snapshotDir maps every regular file under dirs to its content.
func snapshotDir(t *testing.T, dirs ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, d := range dirs {
		err := filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err != nil || !e.Type().IsRegular() {
				return err
			}
			b, err := os.ReadFile(p)
			out[p] = string(b)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func equalSnapshots(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
