package volume_test

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/taskd/taskd/internal/volume"
)

// TestExtentsAndHasHole walks files of known layout (4 KiB blocks of data
// or hole) from several offsets and compares every extent with the layout,
// past the 1024 extents one call returns; HasHole must agree with it.
func TestExtentsAndHasHole(t *testing.T) {
	const bs = 4096
	r := rand.New(rand.NewPCG(7, 7))
	alternating := make([]bool, 2600) // 2600 extents: more than one call's 1024
	for i := range alternating {
		alternating[i] = i%2 == 1
	}
	random := make([]bool, 700)
	for i := range random {
		random[i] = r.IntN(3) == 0
	}
	cases := map[string][]bool{ // true: data
		"alternating, hole first": alternating,
		"random":                  random,
		"data, hole at the end":   {true, true, true, false},
		"hole, then data":         {false, true, true},
		"all data":                {true, true, true},
		"all hole":                {false, false},
		"empty":                   {},
	}
	dir := t.TempDir()
	for name, layout := range cases {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, name)
			f, err := os.Create(path)
			if err != nil {
				t.Fatal(err)
			}
			block := randomBytes(bs, 3)
			for i, data := range layout {
				if data {
					if _, err := f.WriteAt(block, int64(i)*bs); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := f.Truncate(int64(len(layout)) * bs); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			v := openFile(t, path, volume.Options{})
			size := v.Size()
			hole, err := v.HasHole()
			if err != nil {
				t.Fatal(err)
			}
			if want := slices.Contains(layout, false); hole != want {
				t.Errorf("HasHole = %v, want %v", hole, want)
			}
			if size == 0 {
				return
			}
			// want is the layout as extents from off.
			want := func(off int64) []volume.Extent {
				var out []volume.Extent
				for pos := off; pos < size; {
					data := layout[pos/bs]
					end := pos
					for end < size && layout[end/bs] == data {
						end = (end/bs + 1) * bs
					}
					out = append(out, volume.Extent{Off: pos, Len: end - pos, Zero: !data})
					pos = end
				}
				return out
			}
			for _, off := range []int64{0, bs / 2, 3 * bs, size / 2, size - 1} {
				if off >= size {
					continue
				}
				var got []volume.Extent
				for pos := off; pos < size; {
					exts, err := v.Extents(ctxT(t), pos, size-pos)
					if err != nil {
						t.Fatal(err)
					}
					if len(exts) == 0 || len(exts) > 1024 {
						t.Fatalf("Extents(%d) gave %d extents", pos, len(exts))
					}
					got = append(got, exts...)
					pos = exts[len(exts)-1].Off + exts[len(exts)-1].Len
				}
				if w := want(off); !slices.Equal(got, w) {
					t.Errorf("from %d: %d extents, want %d; first difference at %d", off, len(got), len(w), firstDiff(got, w))
				}
			}
		})
	}
}

func firstDiff(a, b []volume.Extent) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
