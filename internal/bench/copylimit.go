package bench

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// limitKind marks the dd runs of a set's limit line.
type limitKind int

const (
	limitNone  limitKind = iota
	limitRead            // cold read of the bytes the copy has to read
	limitWrite           // write + fsync of the bytes the copy has to write
)

// The limit line of a set: the least a copy of it has to do on this disk,
// timed in the same repetitions as the tools: a cold dd read of as many
// bytes as the source has allocated (or, for the dirty bitmap, marked
// dirty), and a dd write + fsync of as many bytes as the target has to
// receive (non-zero blocks; for the incremental sets, the changed blocks).
// dd reads sequentially from the random100 image and writes zeros to a new
// file, 4 MiB at a time. The limit is the sum: a copy on one disk cannot
// overlap its reads and writes perfectly, and the sum is what dd does one
// after the other; max(read, write) is printed too, as the bound of a copy
// that overlapped them perfectly.
func addLimit(s *copySet, name string, gen imageGen, dir string, img func(string) string) error {
	var err error
	switch name {
	case imgSparse, imgHalf, imgRandom, imgSmall, "nbd":
		src := img(imgSparse)
		if name != "nbd" {
			src = img(name)
		}
		s.limitRead, err = allocatedBytes(src)
		if err == nil {
			s.limitWrite, err = differingBlocks(src, "")
		}
	case "incremental":
		s.limitRead, err = allocatedBytes(img(imgIncr))
		if err == nil {
			s.limitWrite, err = differingBlocks(img(imgIncr), img(imgBase))
		}
	case "dirty-bitmap":
		// The dirty blocks: every one of them is read and written.
		s.limitRead = int64(len(bitmapWriteOffsets(gen, 10000))) * 4096
		s.limitWrite = s.limitRead
	default:
		return fmt.Errorf("no limit line for set %q", name)
	}
	if err != nil {
		return err
	}
	readFrom := img(imgRandom)
	if name == imgSmall {
		// Its own 4 KiB, cold after the drop: no 1 GiB image to make.
		readFrom = img(imgSmall)
	}
	if _, err := os.Stat(readFrom); err != nil {
		if err := gen.write(readFrom, imgRandom); err != nil {
			return err
		}
	}
	w := filepath.Join(dir, "limit-write")
	s.tools = append(s.tools,
		&copyTool{name: "limit: dd read", limit: limitRead, target: readFrom, reset: func() error { return nil },
			argv: []string{"dd", "if=" + readFrom, "of=/dev/null", "bs=4M", fmt.Sprintf("count=%d", s.limitRead), "iflag=count_bytes", "status=none"}},
		&copyTool{name: "limit: dd write+fsync", limit: limitWrite, target: w,
			reset: func() error {
				if err := os.Remove(w); err != nil && !errors.Is(err, os.ErrNotExist) {
					return err
				}
				return nil
			},
			argv: []string{"dd", "if=/dev/zero", "of=" + w, "bs=4M", fmt.Sprintf("count=%d", s.limitWrite), "iflag=count_bytes", "conv=fsync", "status=none"}},
	)
	return nil
}

// bitmapWriteOffsets are the distinct offsets writeBitmapImage writes.
func bitmapWriteOffsets(g imageGen, writes int) map[int64]bool {
	rng := rand.New(rand.NewPCG(g.seed, 6))
	out := map[int64]bool{}
	for range writes {
		out[rng.Int64N(g.size/4096)*4096] = true
	}
	return out
}

// allocatedBytes sums the data extents of a file (SEEK_DATA/SEEK_HOLE).
func allocatedBytes(path string) (int64, error) {
	var total int64
	err := forData(path, func(off, n int64) error { total += n; return nil })
	return total, err
}

func forData(path string, fn func(off, n int64) error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	fd := int(f.Fd())
	for pos := int64(0); pos < st.Size(); {
		data, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil
		}
		if err != nil {
			return err
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		if err := fn(data, hole-data); err != nil {
			return err
		}
		pos = hole
	}
	return nil
}

// differingBlocks counts the bytes of the 4 KiB blocks of path that a
// copy has to write: blocks that are not all zero (other == ""), or that
// differ from other.
func differingBlocks(path, other string) (int64, error) {
	a, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer a.Close()
	var b *os.File
	if other != "" {
		if b, err = os.Open(other); err != nil {
			return 0, err
		}
		defer b.Close()
	}
	bufA, bufB := make([]byte, 4<<20), make([]byte, 4<<20)
	zero := make([]byte, 4096)
	var total int64
	err = forData(path, func(off, n int64) error {
		for n > 0 {
			m := min(n, int64(len(bufA)))
			if _, err := a.ReadAt(bufA[:m], off); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			ref := zero
			if b != nil {
				if _, err := b.ReadAt(bufB[:m], off); err != nil && !errors.Is(err, io.EOF) {
					return err
				}
			}
			for i := int64(0); i < m; i += 4096 {
				e := min(i+4096, m)
				if b != nil {
					ref = bufB[i:e]
				}
				if !bytes.Equal(bufA[i:e], ref[:e-i]) {
					total += e - i
				}
			}
			off, n = off+m, n-m
		}
		return nil
	})
	return total, err
}

// pairedRange is the range of a[i] / b[i] over the repetitions: the tools
// ran next to each other, so the ratio of one repetition shares its noise.
func pairedRange(a, b []time.Duration) (lo, hi float64) {
	var r []float64
	for i := range min(len(a), len(b)) {
		r = append(r, a[i].Seconds()/b[i].Seconds())
	}
	if len(r) == 0 {
		return 0, 0
	}
	return slices.Min(r), slices.Max(r)
}

func printLimit(out io.Writer, s *copySet, results map[string]*copyResult) {
	var rd, wr *copyResult
	for _, t := range s.tools {
		switch t.limit {
		case limitRead:
			rd = results[t.name]
		case limitWrite:
			wr = results[t.name]
		}
	}
	if rd == nil || wr == nil {
		return
	}
	sum := make([]time.Duration, len(rd.walls))
	for i := range sum {
		sum[i] = rd.walls[i] + wr.walls[i]
	}
	first := results[s.tools[0].name]
	lo, hi := pairedRange(first.walls, sum)
	r, w, l := median(rd.walls), median(wr.walls), median(sum)
	fmt.Fprintf(out, "limit (dd, same repetitions): cold read of %s %.2fs + write+fsync of %s %.2fs = %.2fs (%.2f-%.2f); overlapped perfectly max = %.2fs\n",
		humanSize(s.limitRead), r.Seconds(), humanSize(s.limitWrite), w.Seconds(), l.Seconds(),
		slices.Min(sum).Seconds(), slices.Max(sum).Seconds(), max(r, w).Seconds())
	fmt.Fprintf(out, "ratio %s / limit = %.2f (per repetition %.2f-%.2f); / max(read, write) = %.2f\n", s.tools[0].name,
		median(first.walls).Seconds()/l.Seconds(), lo, hi, median(first.walls).Seconds()/max(r, w).Seconds())
}
