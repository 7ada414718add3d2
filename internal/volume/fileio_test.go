package volume_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/taskd/taskd/internal/volume"
)

func openFile(t *testing.T, path string, o volume.Options) volume.File {
	t.Helper()
	v, err := volume.Open(ctxT(t), "file://"+path, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	f, ok := v.(volume.File)
	if !ok {
		t.Fatalf("%s is not a volume.File", path)
	}
	return f
}

func randomBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TestCopyRange copies inside one file system, and refuses (having
// copied nothing) between two, so that the copy can fall back.
func TestCopyRange(t *testing.T) {
	dir := t.TempDir()
	data := randomBytes(3<<20, 1)
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	s := openFile(t, src, volume.Options{})
	s.SetIO(volume.IO{DropCache: true})
	d := openFile(t, filepath.Join(dir, "dst"), volume.Options{Write: true, CreateSize: int64(len(data))})
	d.SetIO(volume.IO{WriteBehind: 1 << 20, DropCache: true})
	if s.Info().Dev != d.Info().Dev || s.Info().Block {
		t.Fatalf("info: %+v and %+v", s.Info(), d.Info())
	}
	ctx := context.Background()
	if err := s.CopyRange(ctx, d, 4096, 2<<20); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "dst"))
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, len(data))
	copy(want[4096:4096+2<<20], data[4096:])
	if !bytes.Equal(got, want) {
		t.Fatal("copy_file_range copied something else")
	}
	if err := s.CopyRange(ctx, d, 3<<20-4096, 8192); err == nil {
		t.Fatal("a copy past the target's end was accepted")
	}

	shm, err := os.MkdirTemp("/dev/shm", "taskd-copyrange")
	if err != nil {
		t.Skip("no /dev/shm:", err)
	}
	t.Cleanup(func() { os.RemoveAll(shm) })
	other := openFile(t, filepath.Join(shm, "dst"), volume.Options{Write: true, CreateSize: int64(len(data))})
	if other.Info().Dev == s.Info().Dev {
		t.Skip("/dev/shm is the temporary directory's file system")
	}
	err = s.CopyRange(ctx, other, 0, 1<<20)
	if !errors.Is(err, volume.ErrNoCopyRange) {
		t.Fatalf("across file systems: %v, want ErrNoCopyRange", err)
	}
	if b, _ := os.ReadFile(filepath.Join(shm, "dst")); !bytes.Equal(b, make([]byte, len(data))) {
		t.Fatal("a refused copy_file_range wrote something")
	}
}

// TestSetIODirect: direct I/O where the file system has it, the page cache
// where it refuses; the data is the same either way, and direct I/O can be
// switched off again.
func TestSetIODirect(t *testing.T) {
	for _, dir := range []string{t.TempDir(), "/dev/shm"} {
		d, err := os.MkdirTemp(dir, "direct")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		p := filepath.Join(d, "f")
		v := openFile(t, p, volume.Options{Write: true, CreateSize: 1 << 20})
		var st unix.Statfs_t
		if err := unix.Statfs(d, &st); err != nil {
			t.Fatal(err)
		}
		got := v.SetIO(volume.IO{Direct: true})
		if st.Type == unix.EXT4_SUPER_MAGIC && !got.Direct {
			t.Fatalf("%s on ext4: direct I/O not in effect", d)
		}
		buf := volume.AlignedBuffer(512 << 10)
		copy(buf, randomBytes(len(buf), 2))
		if err := v.WriteAt(context.Background(), buf, 256<<10); err != nil {
			t.Fatal(err)
		}
		back := volume.AlignedBuffer(512 << 10)
		if err := v.ReadAt(context.Background(), back, 256<<10); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(back, buf) {
			t.Fatal("read back differs")
		}
		if got := v.SetIO(volume.IO{}); got.Direct {
			t.Fatal("direct I/O still on after switching it off")
		}
	}
}

// TestPrefetch: with IO.Prefetch, a read brings in only what it asked for
// (no readahead of the kernel's own), Prefetch brings a range of a cold
// file into the page cache (both seen with mincore), and reads return the
// file's data; direct I/O and SetIO without it turn it off.
func TestPrefetch(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "src")
	data := randomBytes(4<<20, 5)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	v := openFile(t, p, volume.Options{})
	if got := v.SetIO(volume.IO{Direct: true, Prefetch: true}); got.Direct && got.Prefetch {
		t.Fatal("Prefetch in effect with direct I/O")
	}
	if got := v.SetIO(volume.IO{Prefetch: true}); !got.Prefetch {
		t.Fatal("Prefetch not in effect on a regular file")
	}
	// Cold: written back and dropped from the cache.
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(int(f.Fd()), 0, len(data), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	const off, n = 1 << 20, 1 << 20
	pages := n / os.Getpagesize()
	residentAt := func(at int) int {
		vec := make([]byte, pages)
		if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[at])), n, uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
			t.Fatal(e)
		}
		c := 0
		for _, b := range vec {
			c += int(b & 1)
		}
		return c
	}
	resident := func() int { return residentAt(off) }
	if r, r0 := resident(), residentAt(0); r == pages || r0 == pages {
		t.Skipf("the file system keeps the file cached after FADV_DONTNEED (%d, %d pages): nothing to see", r, r0)
	}
	// The first two pages, read in order: the kernel would read ahead
	// (at least 4 pages); with Prefetch set it reads only those two.
	for _, at := range []int64{0, 4096} {
		if err := v.ReadAt(context.Background(), make([]byte, 4096), at); err != nil {
			t.Fatal(err)
		}
	}
	if r := residentAt(0); r > 2 {
		t.Errorf("two one-page reads with Prefetch set cached %d pages: the kernel still reads ahead", r)
	}
	v.Prefetch(off, n)
	deadline := time.Now().Add(10 * time.Second)
	for resident() < pages {
		if time.Now().After(deadline) {
			t.Fatalf("after Prefetch, %d of %d pages cached", resident(), pages)
		}
		time.Sleep(time.Millisecond) // the reads are in flight: look again
	}
	back := make([]byte, n)
	if err := v.ReadAt(context.Background(), back, off); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, data[off:off+n]) {
		t.Fatal("read after Prefetch differs from the file")
	}
	if got := v.SetIO(volume.IO{}); got.Prefetch {
		t.Fatal("Prefetch still on after SetIO without it")
	}
}
