package volume

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestReadAdvice: a file opened for reading is advised as read in order, a
// file opened for writing (a target) is left to the kernel's default, and
// IO.Prefetch turns readahead off (random) until a SetIO without it gives
// the file its own advice back. The advice is what open and SetIO gave.
func TestReadAdvice(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	open := func(write bool) *fileVolume {
		v, err := Open(context.Background(), "file://"+p, Options{Write: write})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { v.Close() })
		return v.(*fileVolume)
	}
	src, dst := open(false), open(true)
	if src.advice != unix.FADV_SEQUENTIAL {
		t.Errorf("source opened with advice %d, want FADV_SEQUENTIAL (%d)", src.advice, unix.FADV_SEQUENTIAL)
	}
	if dst.advice != unix.FADV_NORMAL {
		t.Errorf("target opened with advice %d, want FADV_NORMAL (%d)", dst.advice, unix.FADV_NORMAL)
	}
	src.SetIO(IO{Prefetch: true})
	if src.advice != unix.FADV_RANDOM {
		t.Errorf("with Prefetch: advice %d, want FADV_RANDOM (%d)", src.advice, unix.FADV_RANDOM)
	}
	src.SetIO(IO{})
	if src.advice != unix.FADV_SEQUENTIAL {
		t.Errorf("after Prefetch: advice %d, want FADV_SEQUENTIAL back", src.advice)
	}
	dst.SetIO(IO{Prefetch: true})
	dst.SetIO(IO{WriteBehind: 1 << 20})
	if dst.advice != unix.FADV_NORMAL {
		t.Errorf("target after Prefetch: advice %d, want FADV_NORMAL back", dst.advice)
	}
}
