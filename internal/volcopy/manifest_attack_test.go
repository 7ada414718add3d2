package volcopy

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/taskd/taskd/internal/volume"
)

// asNobody runs file operations as uid 65534 through the test binary's
// plant mode (see TestMain in attack_test.go).
func asNobody(t *testing.T, ops ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the attacker test needs root (it drops to uid 65534 for the attacker)")
	}
	binDir, err := os.MkdirTemp("", "planter")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(binDir)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(binDir, "planter")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Env = []string{"TASKD_COPY_PLANT=" + strings.Join(ops, "\n")}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("attacker (%q): %v: %s", ops, err, out)
	}
}

type attackLayout struct {
	root, shared, outside, precious string
}

// attackDirs makes root/shared (shared as mode says, owned by owner) and a
// directory outside the root holding a root-owned file.
func attackDirs(t *testing.T, mode os.FileMode, owner int) attackLayout {
	t.Helper()
	base, err := os.MkdirTemp("", "manifest-attack")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	l := attackLayout{root: filepath.Join(base, "root"), outside: filepath.Join(base, "outside")}
	l.shared = filepath.Join(l.root, "shared")
	l.precious = filepath.Join(l.outside, "precious")
	for _, d := range []string{l.root, l.outside, l.shared} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{base, l.root, l.outside} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(l.shared, owner, owner); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(l.shared, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(l.precious, []byte("root's precious bytes\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return l
}

func randomFile(t *testing.T, path string, size int, seed uint64) []byte {
	t.Helper()
	b := make([]byte, size)
	r := rand.New(rand.NewPCG(seed, seed))
	for i := range b {
		b[i] = byte(r.Uint32() | 1)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return b
}

func confinedCopy(t *testing.T, l attackLayout, src, dst string, manifest bool) Progress {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	spec := Spec{Source: "file://" + src, Target: "file://" + dst, Manifest: manifest, RequestSize: 64 << 10}
	job, err := Prepare(ctx, spec, volume.Options{Confined: true, Roots: []string{l.root}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer job.Close()
	p, err := job.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func mustHold(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s does not hold the source", path)
	}
}

// craftManifest builds, the way an attacker can (stat of the target is
// open to anyone who may enter its directory), a well-formed manifest that
// says the target already holds want.
func craftManifest(t *testing.T, target string, want []byte) []byte {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(target, &st); err != nil {
		t.Fatal(err)
	}
	h := manifestHead{blockSize: defaultBlock, size: int64(len(want)),
		target: volume.FileState{Dev: st.Dev, Ino: st.Ino, Size: st.Size, CtimeSec: st.Ctim.Sec, CtimeNsec: st.Ctim.Nsec}}
	entries := make([]entry, h.blocks())
	for i := range entries {
		b := want[i*defaultBlock : min((i+1)*defaultBlock, len(want))]
		entries[i] = blockEntry(b, false)
	}
	f, err := os.CreateTemp(t.TempDir(), "crafted")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(entryBytes(entries), manifestHeader); err != nil {
		t.Fatal(err)
	}
	if h.sum, err = entriesSum(f, h); err != nil {
		t.Fatal(err)
	}
	b := append(h.encode(), entryBytes(entries)...)
	// The crafted file passes every check but its owner's: the test
	// proves it by loading it as this process's own.
	own := filepath.Join(t.TempDir(), "own")
	if err := os.WriteFile(own, b, 0o600); err != nil {
		t.Fatal(err)
	}
	of, err := os.Open(own)
	if err != nil {
		t.Fatal(err)
	}
	defer of.Close()
	m, err := checkManifest(of, defaultBlock, int64(len(want)))
	if err != nil || !sameTarget(m.head.target, volume.FileState{Dev: st.Dev, Ino: st.Ino, Size: st.Size, CtimeSec: st.Ctim.Sec, CtimeNsec: st.Ctim.Nsec}) {
		t.Fatalf("the crafted manifest would not pass the checks anyway: %v", err)
	}
	return b
}

// TestManifestFromAnotherUserIsNotTrusted: in a world-writable sticky
// directory under the root, uid 65534 plants a well-formed manifest beside
// a target (saying it already holds the new source) and a symlink to a
// root-owned file outside the root at the manifest's temporary name. The
// copy trusts neither: the target ends up equal to the source (it was
// compared), the file outside is untouched and nothing appears outside, and
// the manifest left beside the target is the copy's own.
func TestManifestFromAnotherUserIsNotTrusted(t *testing.T) {
	l := attackDirs(t, 0o1777, 0)
	src := filepath.Join(l.root, "src")
	randomFile(t, src, 1<<20, 1)
	dst := filepath.Join(l.shared, "vol")
	confinedCopy(t, l, src, dst, false) // the target holds the old source, without a manifest
	want := randomFile(t, src, 1<<20, 2)
	crafted := filepath.Join(filepath.Dir(l.root), "crafted")
	if err := os.WriteFile(crafted, craftManifest(t, dst, want), 0o644); err != nil {
		t.Fatal(err)
	}
	manifest := filepath.Join(l.shared, ".vol.taskd-manifest")
	asNobody(t, "cp "+crafted+" "+manifest, "ln "+l.precious+" "+manifest+".tmp")
	preciousBefore, _ := os.ReadFile(l.precious)
	planted, _ := os.ReadFile(manifest)

	p := confinedCopy(t, l, src, dst, true)
	mustHold(t, dst, want)
	if p.BytesRead < 2<<20 {
		t.Fatalf("read %d bytes: the planted manifest was trusted instead of comparing with the target", p.BytesRead)
	}
	if b, _ := os.ReadFile(l.precious); !bytes.Equal(b, preciousBefore) {
		t.Fatal("the file outside the root changed")
	}
	if entries, _ := os.ReadDir(l.outside); len(entries) != 1 {
		t.Fatalf("files appeared outside the root: %v", entries)
	}
	// Root may remove entries of a sticky directory: the attacker's
	// files are gone, replaced by a manifest of ours that the next copy
	// trusts (it reads only the source and writes nothing).
	var st unix.Stat_t
	if err := unix.Lstat(manifest, &st); err != nil || st.Uid != 0 || st.Mode&unix.S_IFMT != unix.S_IFREG {
		t.Fatalf("the manifest beside the target is not ours: uid %d, mode %o, %v", st.Uid, st.Mode, err)
	}
	if b, _ := os.ReadFile(manifest); bytes.Equal(b, planted) {
		t.Fatal("the planted manifest is still there")
	}
	p = confinedCopy(t, l, src, dst, true)
	if p.BytesRead != 1<<20 || p.BytesWritten != 0 {
		t.Fatalf("the copy after: read %d, wrote %d; want only the source read", p.BytesRead, p.BytesWritten)
	}
}

// TestManifestReplayIsNotTrusted: uid 65534 owns the target's directory.
// It keeps aside a genuine manifest of ours, lets a copy change the
// target, then puts the old manifest back. The old manifest is ours and
// well-formed, but no longer describes the target (its change time moved
// on): a copy of a source equal to that old state must still write.
func TestManifestReplayIsNotTrusted(t *testing.T) {
	l := attackDirs(t, 0o755, 65534)
	src := filepath.Join(l.root, "src")
	dst := filepath.Join(l.shared, "vol")
	manifest := filepath.Join(l.shared, ".vol.taskd-manifest")
	first := randomFile(t, src, 1<<20, 3)
	confinedCopy(t, l, src, dst, true)
	asNobody(t, "mv "+manifest+" "+filepath.Join(l.shared, "saved"))
	randomFile(t, src, 1<<20, 4)
	confinedCopy(t, l, src, dst, true)
	asNobody(t, "mv "+filepath.Join(l.shared, "saved")+" "+manifest)

	if err := os.WriteFile(src, first, 0o600); err != nil {
		t.Fatal(err)
	}
	p := confinedCopy(t, l, src, dst, true)
	mustHold(t, dst, first)
	if p.BytesWritten == 0 {
		t.Fatal("the replayed manifest was trusted: nothing written")
	}
}
