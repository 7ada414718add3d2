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
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// limitKind marks the dd runs of a set's limit line.
type limitKind int

const (
	limitNone  limitKind = iota
	limitRead            // cold read of the bytes the copy has to read
	limitWrite           // write + fsync of the bytes the copy has to write
	// limitInPlace: the blocks an incremental copy has to write, each at
	// its own offset in a target that holds the base, then fdatasync.
	limitInPlace
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
//
// An incremental copy's changed blocks lie scattered over the target, and
// the disk writes 10k blocks at their own offsets far slower than the same
// bytes in one stream. For those sets a third run times exactly that:
// the changed blocks written at their offsets into a target that holds the
// base (made untimed), then fdatasync (limitInPlace; the bench runs itself
// as "taskd-bench inplace-write"). It is the floor of any incremental copy
// of the set on this disk, whatever it reads.
func addLimit(s *copySet, name string, gen imageGen, dir string, img func(string) string) error {
	var (
		err     error
		inPlace []int64 // offsets of the changed 4 KiB blocks (incremental sets)
	)
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
			err = forDifferingBlocks(img(imgIncr), img(imgBase), func(off, n int64) {
				s.limitWrite += n
				inPlace = append(inPlace, off)
			})
		}
	case "dirty-bitmap":
		// The dirty blocks: every one of them is read and written.
		for off := range bitmapWriteOffsets(gen, 10000) {
			inPlace = append(inPlace, off)
		}
		slices.Sort(inPlace)
		s.limitRead = int64(len(inPlace)) * 4096
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
			reset: func() error { return removeFiles(w) },
			argv:  []string{"dd", "if=/dev/zero", "of=" + w, "bs=4M", fmt.Sprintf("count=%d", s.limitWrite), "iflag=count_bytes", "conv=fsync", "status=none"}},
	)
	if inPlace != nil {
		return addInPlaceLimit(s, name, dir, img(imgBase), inPlace)
	}
	return nil
}

// addInPlaceLimit adds the set's limitInPlace run: the blocks at offs
// written into a copy of base.
func addInPlaceLimit(s *copySet, name, dir, base string, offs []int64) error {
	// This binary, even if its file is replaced or removed meanwhile.
	const self = "/proc/self/exe"
	list := filepath.Join(dir, "limit-inplace-"+name+".offsets")
	var b strings.Builder
	for _, off := range offs {
		fmt.Fprintln(&b, off)
	}
	if err := os.WriteFile(list, []byte(b.String()), 0o600); err != nil {
		return err
	}
	w := filepath.Join(dir, "limit-inplace")
	s.tools = append(s.tools, &copyTool{
		name: fmt.Sprintf("limit: %d changed blocks written in place+fdatasync", len(offs)), limit: limitInPlace, target: w,
		reset: func() error {
			if err := removeFiles(w); err != nil {
				return err
			}
			return copyFileSparse(base, w)
		},
		argv: []string{self, "inplace-write", list, w},
	})
	return nil
}

// inPlaceWrite is the in-place limit's timed run (see addLimit): args are
// the file of offsets (one decimal per line) and the target. Each block is
// 4 KiB of one non-zero pattern; the run ends with fdatasync.
func inPlaceWrite(args []string, _ io.Writer) error {
	if len(args) != 2 {
		return errors.New("usage: inplace-write OFFSETS-FILE TARGET")
	}
	list, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	f, err := os.OpenFile(args[1], os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	block := make([]byte, 4096)
	_, _ = rand.NewChaCha8([32]byte{1}).Read(block) // never fails
	for _, line := range strings.Fields(string(list)) {
		off, err := strconv.ParseInt(line, 10, 64)
		if err != nil {
			return fmt.Errorf("offset %q: %w", line, err)
		}
		if _, err := f.WriteAt(block, off); err != nil {
			return err
		}
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return fmt.Errorf("fdatasync %s: %w", args[1], err)
	}
	return f.Close()
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
	var total int64
	err := forDifferingBlocks(path, other, func(_, n int64) { total += n })
	return total, err
}

// forDifferingBlocks calls fn for each 4 KiB block of path that is not all
// zero (other == "") or that differs from other, in offset order.
func forDifferingBlocks(path, other string, fn func(off, n int64)) error {
	a, err := os.Open(path)
	if err != nil {
		return err
	}
	defer a.Close()
	var b *os.File
	if other != "" {
		if b, err = os.Open(other); err != nil {
			return err
		}
		defer b.Close()
	}
	bufA, bufB := make([]byte, 4<<20), make([]byte, 4<<20)
	zero := make([]byte, 4096)
	return forData(path, func(off, n int64) error {
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
					fn(off+i, e-i)
				}
			}
			off, n = off+m, n-m
		}
		return nil
	})
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
	var rd, wr, ip, full *copyResult
	fullName := ""
	for _, t := range s.tools {
		switch t.limit {
		case limitRead:
			rd = results[t.name]
		case limitWrite:
			wr = results[t.name]
		case limitInPlace:
			ip = results[t.name]
		}
		if t.fullCopy {
			full, fullName = results[t.name], t.name
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
	if ip != nil {
		printInPlace(out, s.tools[0].name, first, rd, ip, fullName, full)
	}
}

// printInPlace prints the in-place limit (see addLimit): read + the
// changed blocks written at their offsets, and, against the set's full
// copy, the floor of an incremental copy's ratio to it on this disk.
func printInPlace(out io.Writer, firstName string, first, rd, ip *copyResult, fullName string, full *copyResult) {
	sum := make([]time.Duration, len(rd.walls))
	floor := make([]time.Duration, len(rd.walls))
	for i := range sum {
		sum[i] = rd.walls[i] + ip.walls[i]
		floor[i] = max(rd.walls[i], ip.walls[i])
	}
	r, w, l, f := median(rd.walls), median(ip.walls), median(sum), median(floor)
	fmt.Fprintf(out, "limit in place (same repetitions): cold read %.2fs + the changed blocks written at their offsets+fdatasync %.2fs = %.2fs (%.2f-%.2f); overlapped perfectly max = %.2fs\n",
		r.Seconds(), w.Seconds(), l.Seconds(), slices.Min(sum).Seconds(), slices.Max(sum).Seconds(), f.Seconds())
	lo, hi := pairedRange(first.walls, sum)
	fmt.Fprintf(out, "ratio %s / limit in place = %.2f (per repetition %.2f-%.2f); / max(read, in place) = %.2f\n", firstName,
		median(first.walls).Seconds()/l.Seconds(), lo, hi, median(first.walls).Seconds()/f.Seconds())
	if full == nil {
		return
	}
	lo, hi = pairedRange(floor, full.walls)
	fmt.Fprintf(out, "floor of an incremental copy on this disk: max(read, in place) / %s = %.2f (per repetition %.2f-%.2f); the bound of any copy that reads these bytes and writes these blocks\n",
		fullName, f.Seconds()/median(full.walls).Seconds(), lo, hi)
}
