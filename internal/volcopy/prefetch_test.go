package volcopy

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/volume"
)

// announcing records the ranges a copy announces on its source.
type announcing struct {
	volume.File
	mu     sync.Mutex
	ranges []volume.Range
}

func (a *announcing) Prefetch(off, n int64) {
	a.mu.Lock()
	a.ranges = append(a.ranges, volume.Range{Off: off, Len: n})
	a.mu.Unlock()
	a.File.Prefetch(off, n)
}

// TestCopyAnnouncesSparseReads: a copy from a sparse file announces every
// range it reads before the workers read it, and never a long hole; a copy
// from a file without holes announces nothing (the kernel reads ahead).
func TestCopyAnnouncesSparseReads(t *testing.T) {
	const size = 8 << 20
	dir := t.TempDir()
	data := make([]byte, size)
	rng := rand.New(rand.NewPCG(3, 3))
	for i := range data {
		data[i] = byte(rng.Uint32() | 1)
	}
	write := func(name string, runs [][2]int) string {
		p := filepath.Join(dir, name)
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for _, r := range runs {
			if _, err := f.WriteAt(data[r[0]:r[1]], int64(r[0])); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// Data, a 3 MiB hole, data, a 1 MiB hole at the end.
	sparseRuns := [][2]int{{0, 2 << 20}, {5 << 20, 7 << 20}}
	cases := []struct {
		name     string
		runs     [][2]int
		announce bool
	}{
		{"sparse", sparseRuns, true},
		{"no holes", [][2]int{{0, size}}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			src := write(tc.name, tc.runs)
			v, err := volume.Open(ctx, "file://"+src, volume.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer v.Close()
			a := &announcing{File: v.(volume.File)}
			dstPath := filepath.Join(dir, tc.name+".copy")
			dst, err := volume.Open(ctx, "file://"+dstPath, volume.Options{Write: true, CreateSize: size})
			if err != nil {
				t.Fatal(err)
			}
			defer dst.Close()
			// Not the copy_file_range path: the announcements are of
			// reads through the page cache.
			c, err := New(a, dst, Options{ZeroDetect: ZeroAlways})
			if err != nil {
				t.Fatal(err)
			}
			if c.plan.srcIO.Prefetch != tc.announce {
				t.Fatalf("plan %+v: announced reads %v, want %v", c.plan, c.plan.srcIO.Prefetch, tc.announce)
			}
			if _, err := c.Run(ctx); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(dstPath)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := os.ReadFile(src)
			if !bytes.Equal(got, want) {
				t.Fatal("the copy differs from the source")
			}
			if !tc.announce {
				if len(a.ranges) != 0 {
					t.Fatalf("%d ranges announced on a source without holes", len(a.ranges))
				}
				return
			}
			// Every data byte announced; nothing of the long hole beyond
			// the span gap.
			for _, r := range tc.runs {
				for off := int64(r[0]); off < int64(r[1]); off += 4096 {
					if !covered(a.ranges, off) {
						t.Fatalf("data at %d was not announced (%d ranges)", off, len(a.ranges))
					}
				}
			}
			for off := int64(2<<20 + spanGapFile); off < 5<<20-spanGapFile; off += 4096 {
				if covered(a.ranges, off) {
					t.Fatalf("the hole at %d was announced", off)
				}
			}
		})
	}
}

func covered(rs []volume.Range, off int64) bool {
	for _, r := range rs {
		if off >= r.Off && off < r.Off+r.Len {
			return true
		}
	}
	return false
}
