package volcopy

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/taskd/taskd/internal/testenv"
	"github.com/taskd/taskd/internal/volume"
)

// TestPlanForRealEndpoints opens real endpoints of each kind (files on one
// and on two file systems, a loop block device, a qemu-nbd export), checks
// the plan New makes for them (path, zero detection, queue, request size,
// how each file endpoint moves data), runs the copy with it and compares
// the target with the source byte by byte. TestChoosePlan pins the policy
// on described endpoints; this pins that real endpoints are described as
// the policy assumes and that every path copies correctly.
func TestPlanForRealEndpoints(t *testing.T) {
	dir := t.TempDir()
	const size = 8 << 20
	rng := rand.New(rand.NewPCG(17, 17))
	full := make([]byte, size) // no holes, no zero blocks
	for i := range full {
		full[i] = byte(rng.Uint32() | 1)
	}
	fullPath := filepath.Join(dir, "full")
	if err := os.WriteFile(fullPath, full, 0o600); err != nil {
		t.Fatal(err)
	}
	// A sparse image: data, a hole, data, allocated zeros.
	sparse := make([]byte, size)
	copy(sparse[:2<<20], full)
	copy(sparse[5<<20:6<<20], full[5<<20:])
	sparsePath := filepath.Join(dir, "sparse")
	f, err := os.Create(sparsePath)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct{ off, n int }{{0, 2 << 20}, {5 << 20, 1 << 20}, {6 << 20, 1 << 20}} {
		if _, err := f.WriteAt(sparse[w.off:w.off+w.n], int64(w.off)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()

	buffered := volume.IO{WriteBehind: writeBehind, DropCache: true}
	direct := volume.IO{Direct: true}
	announced := buffered // a sparse source file: its reads announced
	announced.Prefetch = true
	type want struct {
		path             ioPath
		zero             bool
		workers, request int
		srcIO, dstIO     volume.IO
	}
	check := func(t *testing.T, srcURI, dstURI string, opts Options, w want, data []byte, readBack func() []byte) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		src, err := volume.Open(ctx, srcURI, volume.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		dst, err := volume.Open(ctx, dstURI, volume.Options{Write: true, CreateSize: size})
		if err != nil {
			t.Fatal(err)
		}
		defer dst.Close()
		c, err := New(src, dst, opts)
		if err != nil {
			t.Fatal(err)
		}
		p := c.plan
		if p.path != w.path || p.zeroDetect != w.zero || p.workers != w.workers || p.request != w.request || p.srcIO != w.srcIO || p.dstIO != w.dstIO {
			t.Fatalf("plan %+v\nwant %+v", p, w)
		}
		if _, err := c.Run(ctx); err != nil {
			t.Fatalf("copy on the %s path: %v", p.path, err)
		}
		if p.path == pathCopyRange && c.noRange.Load() {
			t.Fatal("the kernel refused copy_file_range: the copy fell back to reading and writing")
		}
		if err := dst.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if got := readBack(); !bytes.Equal(got[:len(data)], data) {
			t.Fatalf("the %s path left a target that differs from the source", p.path)
		}
	}
	fileBack := func(p string) func() []byte {
		return func() []byte {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}

	t.Run("file onto the same file system", func(t *testing.T) {
		dst := filepath.Join(dir, "same")
		check(t, "file://"+fullPath, "file://"+dst, Options{},
			want{pathCopyRange, false, rangeWorkers, rangeRequest, buffered, buffered}, full, fileBack(dst))
	})
	t.Run("sparse file onto the same file system", func(t *testing.T) {
		dst := filepath.Join(dir, "same-sparse")
		check(t, "file://"+sparsePath, "file://"+dst, Options{},
			want{pathBuffered, true, bufferedWorkers, bufferedRequest, announced, buffered}, sparse, fileBack(dst))
	})
	t.Run("file onto another file system", func(t *testing.T) {
		other := otherFileSystem(t, dir)
		dst := filepath.Join(other, "other")
		check(t, "file://"+fullPath, "file://"+dst, Options{},
			want{pathBuffered, false, bufferedWorkers, bufferedRequest, buffered, buffered}, full, fileBack(dst))
	})
	t.Run("file onto a block device", func(t *testing.T) {
		backing := filepath.Join(dir, "backing")
		if err := os.WriteFile(backing, bytes.Repeat([]byte{0xee}, size), 0o600); err != nil {
			t.Fatal(err)
		}
		dev := loopDevice(t, backing)
		check(t, "file://"+sparsePath, "file://"+dev, Options{},
			want{pathDirect, true, directWorkers, directRequest, direct, direct}, sparse, fileBack(dev))
	})
	t.Run("NBD export onto a file", func(t *testing.T) {
		srv := testenv.StartQemuNBD(t, "plan", sparsePath, "-f", "raw", "--read-only", "--shared=4")
		dst := filepath.Join(dir, "from-nbd")
		check(t, srv.URI(), "file://"+dst, Options{},
			want{pathNBD, true, nbdWorkers, nbdRequest, volume.IO{}, buffered}, sparse, fileBack(dst))
	})
	t.Run("file onto an NBD export", func(t *testing.T) {
		tgt := filepath.Join(dir, "nbd-target")
		if err := os.WriteFile(tgt, bytes.Repeat([]byte{0xee}, size), 0o600); err != nil {
			t.Fatal(err)
		}
		srv := testenv.StartQemuNBD(t, "plantgt", tgt, "-f", "raw", "--shared=4", "--discard=unmap")
		check(t, "file://"+fullPath, srv.URI(), Options{},
			want{pathNBD, false, nbdWorkers, nbdRequest, buffered, volume.IO{}}, full, func() []byte {
				srv.Stop()
				return fileBack(tgt)()
			})
	})
}

// otherFileSystem is a directory on a file system other than dir's
// (/dev/shm, tmpfs), removed when the test ends.
func otherFileSystem(t *testing.T, dir string) string {
	t.Helper()
	var a, b unix.Stat_t
	if err := unix.Stat(dir, &a); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat("/dev/shm", &b); err != nil || a.Dev == b.Dev {
		testenv.Missing(t, "a second file system: /dev/shm (%v) is on the test's temporary directory's", err)
	}
	other, err := os.MkdirTemp("/dev/shm", "taskd-plan")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(other) })
	return other
}

// loopDevice attaches backing to a free loop device for the test.
func loopDevice(t *testing.T, backing string) string {
	t.Helper()
	testenv.Need(t, "mount", "losetup")
	if os.Geteuid() != 0 {
		testenv.Missing(t, "a loop device needs root")
	}
	out, err := exec.Command("losetup", "--find", "--show", backing).CombinedOutput()
	if err != nil {
		testenv.Missing(t, "losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v: %s", dev, err, out)
		}
	})
	return dev
}
