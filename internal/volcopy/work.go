package volcopy

import (
	"bytes"
	"context"
	"fmt"
	"sync/atomic"

	"github.com/taskd/taskd/internal/volume"
)

type itemKind int

const (
	itemData    itemKind = iota // read source, write data, zero what is zero
	itemZero                    // make the target range zero
	itemCompare                 // read source and base, write what differs
)

type item struct {
	kind   itemKind
	off, n int64
	ext    *extentWork
}

// extentWork tracks the items of one checkpoint extent. pending starts at 1,
// the producer's seal, so done closes only after every item is queued and
// finished.
//
// The copy checkpoints in units (half an extent, see applyDefaults).
// writable gates a unit's writes: it is the checkpointed channel of the unit
// lag places before. With lag 2, unit m writes while unit m-1 is flushed,
// but only once unit m-2 is checkpointed; so after the last checkpoint at
// most two units, one extent, have written anything, and that is all a
// crash makes the resume do again. Reads may run a unit further ahead.
type extentWork struct {
	index, off, end int64
	pending         atomic.Int64
	done            chan struct{}
	writable        <-chan struct{}
	checkpointed    chan struct{}

	// What this extent read and wrote, so a checkpoint records counters
	// that match its offset even while the next extent reads ahead.
	read, written, zeroed, alloc atomic.Int64
}

func newExtent(index, off, end int64, writable <-chan struct{}) *extentWork {
	e := &extentWork{index: index, off: off, end: end, done: make(chan struct{}),
		writable: writable, checkpointed: make(chan struct{})}
	e.pending.Store(1)
	return e
}

// awaitWritable blocks until the extent may change the target.
func (e *extentWork) awaitWritable(ctx context.Context) error {
	select {
	case <-e.writable:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (e *extentWork) finishOne() {
	if e.pending.Add(-1) == 0 {
		close(e.done)
	}
}

// produce walks the source checkpoint unit by unit and queues work. A unit
// writes only once the unit lag places before it is checkpointed; see
// extentWork for why a crash then loses at most lag units (one extent).
func (c *Copier) produce(ctx context.Context, items chan<- item, extents chan<- *extentWork, window chan struct{}) error {
	size := c.src.Size()
	open := make(chan struct{})
	close(open)
	gates := make([]<-chan struct{}, c.lag) // checkpointed channels of the last lag units
	for i := range gates {
		gates[i] = open
	}
	for off := c.resumed.Next; off < size; off += c.unit {
		select {
		case window <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		e := newExtent(off/c.unit, off, min(off+c.unit, size), gates[0])
		gates = append(gates[1:], e.checkpointed)
		send := func(it item) error {
			it.ext = e
			e.pending.Add(1)
			select {
			case items <- it:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		var err error
		switch c.mode {
		case ModeFull:
			err = c.walkFull(ctx, e, send)
		case ModeBase:
			err = c.walkBase(ctx, e, send)
		case ModeDirty:
			err = c.walkDirty(ctx, e, send)
		}
		if err != nil {
			return err
		}
		e.finishOne()
		select {
		case extents <- e:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// split queues a data-bearing range in request-sized items.
func (c *Copier) split(kind itemKind, off, n int64, send func(item) error) error {
	req := int64(c.opts.RequestSize)
	for n > 0 {
		m := min(n, req)
		if err := send(item{kind: kind, off: off, n: m}); err != nil {
			return err
		}
		off, n = off+m, n-m
	}
	return nil
}

// forExtents calls fn for each allocation extent of v in [off, end).
func forExtents(ctx context.Context, v volume.Volume, role string, off, end int64, fn func(volume.Extent) error) error {
	for pos := off; pos < end; {
		exts, err := v.Extents(ctx, pos, end-pos)
		if err != nil {
			return fmt.Errorf("%s allocation at %d: %w", role, pos, err)
		}
		for _, x := range exts {
			if err := fn(x); err != nil {
				return err
			}
			pos = x.Off + x.Len
		}
	}
	return nil
}

func (c *Copier) walkFull(ctx context.Context, e *extentWork, send func(item) error) error {
	return forExtents(ctx, c.src, "source", e.off, e.end, func(x volume.Extent) error {
		switch {
		case !x.Zero:
			return c.split(itemData, x.Off, x.Len, send)
		case c.targetZero:
			c.logicalDone.Add(x.Len)
			return nil
		default:
			return send(item{kind: itemZero, off: x.Off, n: x.Len})
		}
	})
}

// forDirty calls fn with the dirty ranges of the source's bitmap in
// [off, end), a piece at a time: the ranges (clamped to end) and the offset
// up to which the piece is complete.
func (c *Copier) forDirty(ctx context.Context, off, end int64, fn func(ranges []volume.Range, upTo int64) error) error {
	for pos := off; pos < end; {
		ranges, upTo, err := c.dirty.Dirty(ctx, c.opts.DirtyBitmap, pos, end-pos)
		if err != nil {
			return fmt.Errorf("dirty bitmap at %d: %w", pos, err)
		}
		if upTo <= pos {
			return fmt.Errorf("dirty bitmap at %d: server answered no progress", pos)
		}
		upTo = min(upTo, end)
		for i := range ranges {
			ranges[i].Len = min(ranges[i].Off+ranges[i].Len, upTo) - ranges[i].Off
		}
		if err := fn(ranges, upTo); err != nil {
			return err
		}
		pos = upTo
	}
	return nil
}

func (c *Copier) walkDirty(ctx context.Context, e *extentWork, send func(item) error) error {
	pos := e.off
	return c.forDirty(ctx, e.off, e.end, func(ranges []volume.Range, upTo int64) error {
		clean := upTo - pos
		for _, r := range ranges {
			clean -= r.Len
			if err := c.split(itemData, r.Off, r.Len, send); err != nil {
				return err
			}
		}
		c.logicalDone.Add(clean)
		pos = upTo
		return nil
	})
}

// walkBase compares what the source holds with the base.
func (c *Copier) walkBase(ctx context.Context, e *extentWork, send func(item) error) error {
	return forExtents(ctx, c.src, "source", e.off, e.end, func(x volume.Extent) error {
		if !x.Zero {
			return c.split(itemCompare, x.Off, x.Len, send)
		}
		// Where the source is a hole but the base holds data, zero the
		// target (which holds the base).
		return forExtents(ctx, c.base, "base", x.Off, x.Off+x.Len, func(b volume.Extent) error {
			if b.Zero {
				c.logicalDone.Add(b.Len)
				return nil
			}
			return send(item{kind: itemZero, off: b.Off, n: b.Len})
		})
	})
}

// scanAllocated sums the bytes the copy will have to read, for progress.
func (c *Copier) scanAllocated(ctx context.Context) (int64, error) {
	size := c.src.Size()
	var total int64
	if c.mode != ModeDirty {
		err := forExtents(ctx, c.src, "source", 0, size, func(x volume.Extent) error {
			if !x.Zero {
				total += x.Len
			}
			return nil
		})
		return total, err
	}
	err := c.forDirty(ctx, 0, size, func(ranges []volume.Range, _ int64) error {
		for _, r := range ranges {
			total += r.Len
		}
		return nil
	})
	return total, err
}

// worker runs items until the queue closes. Each worker owns its buffers.
func (c *Copier) worker(ctx context.Context, items <-chan item) error {
	buf := volume.AlignedBuffer(c.opts.RequestSize)
	var baseBuf []byte
	if c.mode == ModeBase {
		baseBuf = volume.AlignedBuffer(c.opts.RequestSize)
	}
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
			err = c.copyRequest(ctx, buf[:it.n], nil, it.off, it.ext)
		case itemZero:
			if err = it.ext.awaitWritable(ctx); err == nil {
				err = c.zeroTarget(ctx, it.ext, it.off, it.n)
			}
		case itemCompare:
			err = c.copyRequest(ctx, buf[:it.n], baseBuf[:it.n], it.off, it.ext)
		}
		if err != nil {
			return err
		}
		c.logicalDone.Add(it.n)
		it.ext.finishOne()
	}
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

// copyRequest reads one request of the source (and, with base, the same
// range of the base) and writes it: data blocks as data, all-zero blocks as
// holes (or nothing, on a zero target), and with base only the blocks that
// differ from it.
func (c *Copier) copyRequest(ctx context.Context, buf, base []byte, off int64, e *extentWork) error {
	if err := c.readSource(ctx, e, c.src, buf, off); err != nil {
		return fmt.Errorf("read source at %d: %w", off, err)
	}
	if base != nil {
		if err := c.readSource(ctx, e, c.base, base, off); err != nil {
			return fmt.Errorf("read base at %d: %w", off, err)
		}
	}
	if err := e.awaitWritable(ctx); err != nil {
		return err
	}
	c.allocDone.Add(int64(len(buf)))
	e.alloc.Add(int64(len(buf)))
	return c.writeRuns(ctx, e, buf, off, base)
}

// writeRuns classifies buf block by block and writes maximal runs: data
// runs as writes, zero runs as zeroing. With base, blocks equal to the base
// are skipped. A zero run on a zero target is skipped too.
func (c *Copier) writeRuns(ctx context.Context, e *extentWork, buf []byte, off int64, base []byte) error {
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
		k := data
		switch {
		case base != nil && bytes.Equal(blk, base[i:i+len(blk)]):
			k = skip
		case bytes.Equal(blk, c.zeroBlock[:len(blk)]):
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
