package volcopy

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/taskd/taskd/internal/volume"
)

// scratch is what one worker owns: its buffers, made when first needed
// (a copy_file_range copy never needs them), and the block entries of one
// request.
type scratch struct {
	buf, base []byte
	cur, old  []entry
}

func (c *Copier) scratchFor(s *scratch) {
	if s.buf != nil {
		return
	}
	s.buf = volume.AlignedBuffer(c.opts.RequestSize)
	if c.base != nil {
		s.base = volume.AlignedBuffer(c.opts.RequestSize)
	}
	if c.manifest != nil {
		blocks := c.opts.RequestSize / c.opts.BlockSize
		s.cur, s.old = make([]entry, blocks), make([]entry, blocks)
	}
}

// worker runs items until the queue closes. Each worker owns its buffers.
func (c *Copier) worker(ctx context.Context, items <-chan item) error {
	var s scratch
	for {
		var it item
		var ok bool
		select {
		case it, ok = <-items:
			if !ok {
				return nil
			}
		case <-ctx.Done():
			return ctx.Err()
		}
		var err error
		switch it.kind {
		case itemData:
			if c.plan.path == pathCopyRange && it.keep == nil && !c.noRange.Load() {
				err = c.copyRange(ctx, it)
				if !errors.Is(err, volume.ErrNoCopyRange) {
					break
				}
				if c.noRange.CompareAndSwap(false, true) {
					c.log.Info("copy_file_range refused: reading and writing instead", "reason", err)
				}
			}
			c.scratchFor(&s)
			err = c.copyRequest(ctx, &s, it, false)
		case itemZero:
			if err = it.ext.awaitWritable(ctx); err == nil {
				err = c.zeroTarget(ctx, it.ext, it.off, it.n)
			}
		case itemCompare:
			c.scratchFor(&s)
			err = c.copyRequest(ctx, &s, it, true)
		case itemHash:
			c.scratchFor(&s)
			err = c.copyRequest(ctx, &s, it, false)
		}
		if err != nil {
			return err
		}
		c.logicalDone.Add(it.logical())
		it.ext.finishOne()
	}
}

// copyRange copies one request inside the kernel: the data never passes
// through the copy, so it is neither scanned for zeros nor hashed.
func (c *Copier) copyRange(ctx context.Context, it item) error {
	if err := c.throttle.wait(ctx, int(it.n)); err != nil {
		return err
	}
	if err := it.ext.awaitWritable(ctx); err != nil {
		return err
	}
	if err := c.mayWrite(); err != nil {
		return err
	}
	src, dst := c.src.(volume.File), c.dst.(volume.File)
	if err := src.CopyRange(ctx, dst, it.off, it.n); err != nil {
		if errors.Is(err, volume.ErrNoCopyRange) {
			return err
		}
		return fmt.Errorf("copy at %d: %w", it.off, err)
	}
	e := it.ext
	c.read.Add(it.n)
	e.read.Add(it.n)
	c.allocDone.Add(it.n)
	e.alloc.Add(it.n)
	c.written.Add(it.n)
	e.written.Add(it.n)
	return nil
}

// mayWrite asks the caller's gate before a target write.
func (c *Copier) mayWrite() error {
	if c.opts.MayWrite == nil {
		return nil
	}
	return c.opts.MayWrite()
}

func (c *Copier) zeroTarget(ctx context.Context, e *extentWork, off, n int64) error {
	if err := c.mayWrite(); err != nil {
		return err
	}
	if err := c.dst.Zero(ctx, off, n); err != nil {
		return fmt.Errorf("zero target at %d: %w", off, err)
	}
	c.zeroed.Add(n)
	e.zeroed.Add(n)
	return nil
}

func (c *Copier) readSource(ctx context.Context, e *extentWork, v volume.Volume, buf []byte, off int64) error {
	if err := c.throttle.wait(ctx, len(buf)); err != nil {
		return err
	}
	if err := v.ReadAt(ctx, buf, off); err != nil {
		return err
	}
	c.read.Add(int64(len(buf)))
	e.read.Add(int64(len(buf)))
	return nil
}

// copyRequest reads one request of the source (across the gaps between
// the ranges it is for, see spanner) and writes each of those ranges
// (with compare, after reading the base's same range): data blocks as
// data, all-zero blocks as holes (or nothing, on a zero target), and only
// the blocks that differ from the base, or whose hash differs from the old
// manifest's (itemHash). With a manifest it records every block's entry.
func (c *Copier) copyRequest(ctx context.Context, s *scratch, it item, compare bool) error {
	off, e := it.off, it.ext
	buf := s.buf[:it.n]
	if err := c.readSource(ctx, e, c.src, buf, off); err != nil {
		return fmt.Errorf("read source at %d: %w", off, err)
	}
	return it.ranges(func(r volume.Range) error {
		return c.writeRange(ctx, s, it, buf[r.Off-off:r.Off-off+r.Len], r.Off, compare)
	})
}

// writeRange writes one range of what a request read: buf holds the source
// at off. With compare it reads the base's same range: read across the
// gaps of a span, the base was not faster in the measurements (its holes
// cost page-cache pages too; docs/benchmarks/2026-11-27-copy-spans.txt).
func (c *Copier) writeRange(ctx context.Context, s *scratch, it item, buf []byte, off int64, compare bool) error {
	e := it.ext
	var base []byte
	if compare {
		base = s.base[:len(buf)]
		if err := c.readSource(ctx, e, c.base, base, off); err != nil {
			return fmt.Errorf("read base at %d: %w", off, err)
		}
	}
	var cur, old []entry
	recorded := false // cur is the extent's own (held) entries
	if c.manifest != nil {
		bs := int64(c.opts.BlockSize)
		first, blocks := off/bs, (int64(len(buf))+bs-1)/bs
		switch cur = e.entries.curOf(first, blocks); {
		case cur != nil:
			recorded = true
		case e.entries.holdsCur():
			// Recorded on its own, the range would be overwritten by the
			// unit's held entries: never let that pass silently.
			return fmt.Errorf("internal error: blocks %d-%d lie outside the manifest entries of their unit", first, first+blocks-1)
		default:
			cur = s.cur[:blocks]
		}
		if it.kind == itemHash {
			if old = e.entries.oldOf(first, blocks); old == nil {
				old = s.old[:blocks]
				if err := c.manifest.old.readEntries(first, old); err != nil {
					return err
				}
			}
		}
	}
	if err := e.awaitWritable(ctx); err != nil {
		return err
	}
	c.allocDone.Add(int64(len(buf)))
	e.alloc.Add(int64(len(buf)))
	if err := c.writeRuns(ctx, e, buf, off, base, cur, old); err != nil {
		return err
	}
	if recorded {
		return nil // written with the extent (manifestRun.closeUnit)
	}
	return c.manifest.record(off, cur)
}

// writeRuns classifies buf block by block and writes maximal runs: data
// runs as writes, zero runs as zeroing. Blocks equal to the base, or whose
// entry equals the old manifest's, are skipped; so is a zero run on a zero
// target. cur, when given, receives every block's manifest entry.
func (c *Copier) writeRuns(ctx context.Context, e *extentWork, buf []byte, off int64, base []byte, cur, old []entry) error {
	const (
		skip = iota
		data
		zero
	)
	bs := c.opts.BlockSize
	runKind, runStart := skip, 0
	flush := func(end int) error {
		if end == runStart {
			return nil
		}
		o, n := off+int64(runStart), int64(end-runStart)
		switch runKind {
		case data:
			if err := c.mayWrite(); err != nil {
				return err
			}
			if err := c.dst.WriteAt(ctx, buf[runStart:end], o); err != nil {
				return fmt.Errorf("write target at %d: %w", o, err)
			}
			c.written.Add(n)
			e.written.Add(n)
		case zero:
			return c.zeroTarget(ctx, e, o, n)
		}
		return nil
	}
	for i := 0; i < len(buf); i += bs {
		blk := buf[i:min(i+bs, len(buf))]
		isZero := c.plan.zeroDetect && bytes.Equal(blk, c.zeroBlock[:len(blk)])
		if cur != nil {
			cur[i/bs] = blockEntry(blk, isZero)
		}
		k := data
		switch {
		case base != nil && bytes.Equal(blk, base[i:i+len(blk)]):
			k = skip
		case old != nil && old[i/bs] == cur[i/bs]:
			k = skip
		case isZero:
			k = zero
			if c.targetZero {
				k = skip
			}
		}
		if k != runKind {
			if err := flush(i); err != nil {
				return err
			}
			runKind, runStart = k, i
		}
	}
	return flush(len(buf))
}
