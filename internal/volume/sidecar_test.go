package volume_test

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/taskd/taskd/internal/volume"
)

// TestSidecars: a sidecar is written through a temporary file and a
// rename, lives beside its file (also when the file is opened under a
// root), and is refused when it is anything this process did not write
// alone: a symlink, a second link, group-writable, another owner.
func TestSidecars(t *testing.T) {
	root := t.TempDir()
	p := filepath.Join(root, "vol")
	if err := os.WriteFile(p, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := volume.SidecarsOf(openFile(t, p, volume.Options{})); !errors.Is(err, volume.ErrNoSidecar) {
		t.Fatalf("read-only open: %v, want ErrNoSidecar", err)
	}
	v := openFile(t, p, volume.Options{Confined: true, Roots: []string{root}, Write: true})
	sc, err := volume.SidecarsOf(v)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sc.OpenSidecar("manifest"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing sidecar: %v, want ErrNotExist", err)
	}
	if _, err := sc.CreateSidecar("Bad/Suffix", false); !errors.Is(err, volume.ErrInvalid) {
		t.Fatalf("bad suffix: %v", err)
	}
	f, err := sc.CreateSidecar("manifest", false)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("one")
	f.Close()
	if _, err := os.Stat(filepath.Join(root, ".vol.manifest")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("the sidecar exists before its commit")
	}
	if err := sc.CommitSidecar("manifest"); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(root, ".vol.manifest"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("committed sidecar: %v, %v", fi, err)
	}
	read := func() (string, error) {
		f, err := sc.OpenSidecar("manifest")
		if err != nil {
			return "", err
		}
		defer f.Close()
		b, err := io.ReadAll(f)
		return string(b), err
	}
	if s, err := read(); err != nil || s != "one" {
		t.Fatalf("read back %q, %v", s, err)
	}
	// A stale temporary file is replaced, a resumed one reopened.
	f, _ = sc.CreateSidecar("manifest", false)
	f.WriteString("two")
	f.Close()
	if f, err = sc.CreateSidecar("manifest", true); err != nil {
		t.Fatal(err)
	}
	f.Close()

	sidecar := filepath.Join(root, ".vol.manifest")
	for _, tc := range []struct {
		name  string
		spoil func(t *testing.T)
	}{
		{"symlink", func(t *testing.T) {
			other := filepath.Join(t.TempDir(), "other")
			os.WriteFile(other, []byte("elsewhere"), 0o600)
			os.Remove(sidecar)
			if err := os.Symlink(other, sidecar); err != nil {
				t.Fatal(err)
			}
		}},
		{"second link", func(t *testing.T) {
			if err := os.Link(sidecar, filepath.Join(root, "link")); err != nil {
				t.Fatal(err)
			}
		}},
		{"group writable", func(t *testing.T) {
			if err := os.Chmod(sidecar, 0o620); err != nil {
				t.Fatal(err)
			}
		}},
		{"another owner", func(t *testing.T) {
			if os.Geteuid() != 0 {
				t.Skip("needs root to give the file away")
			}
			if err := os.Chown(sidecar, 65534, 65534); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(sidecar)
			os.Remove(filepath.Join(root, "link"))
			if err := os.WriteFile(sidecar, []byte("ok"), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := read(); err != nil {
				t.Fatalf("before: %v", err)
			}
			tc.spoil(t)
			if s, err := read(); !errors.Is(err, volume.ErrUntrusted) {
				t.Fatalf("read %q, %v; want ErrUntrusted", s, err)
			}
		})
	}
	if err := sc.RemoveSidecar("manifest"); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{".vol.manifest", ".vol.manifest.tmp"} {
		if _, err := os.Lstat(filepath.Join(root, n)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s left after RemoveSidecar", n)
		}
	}
}

// TestNoSidecarsThroughASymlink: a target named through a symlink has no
// directory entry of its own, so no sidecar can land in the symlink's
// directory while describing a file elsewhere.
func TestNoSidecarsThroughASymlink(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	if err := os.WriteFile(real, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("real", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	for _, o := range []volume.Options{{Write: true}, {Write: true, Confined: true, Roots: []string{dir}}} {
		v := openFile(t, filepath.Join(dir, "link"), o)
		if _, err := volume.SidecarsOf(v); !errors.Is(err, volume.ErrNoSidecar) {
			t.Fatalf("%+v: %v, want ErrNoSidecar", o, err)
		}
	}
}
