package volcopy

import (
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
	itemHash                    // read source, write blocks whose hash differs from the old manifest
)

type item struct {
	kind   itemKind
	off, n int64
	ext    *extentWork
	// keep, when set, lists the ranges of [off, off+n) the item is for,
	// in order: the item reads its whole range in one request and writes
	// only these (see spanner). Unset, the item is for all of its range.
	keep []volume.Range
}

// ranges calls fn for each range the item is for.
func (it item) ranges(fn func(volume.Range) error) error {
	if it.keep == nil {
		return fn(volume.Range{Off: it.off, Len: it.n})
	}
	for _, r := range it.keep {
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

// logical is how many bytes of the volume the item accounts for: its
// kept ranges, not the gaps it reads across (the walk accounts for those).
func (it item) logical() int64 {
	if it.keep == nil {
		return it.n
	}
	var n int64
	for _, r := range it.keep {
		n += r.Len
	}
	return n
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

	// entries: the manifest entries of its blocks, when held in memory
	// (manifestRun.openUnit; nil otherwise).
	entries *unitEntries
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
	// prefetch: the source, when it wants its reads announced (a sparse
	// file: see volume.IO.Prefetch). An item is announced as it is queued,
	// at most the queue's length ahead of the workers.
	var prefetch volume.File
	if f, ok := c.src.(volume.File); ok && c.plan.srcIO.Prefetch {
		prefetch = f
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
			if prefetch != nil && (it.kind == itemData || it.kind == itemHash || it.kind == itemCompare) {
				prefetch.Prefetch(it.off, it.n)
			}
			select {
			case items <- it:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if err := c.manifest.openUnit(e, size); err != nil {
			return err
		}
		var err error
		switch c.mode {
		case ModeFull:
			err = c.walkFull(ctx, e, send)
		case ModeBase:
			err = c.walkBase(ctx, e, send)
		case ModeDirty:
			err = c.walkDirty(ctx, e, send)
		case ModeManifest:
			err = c.walkManifest(ctx, e, send)
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

// spanner joins the data ranges of a walk into reads. A range joins the
// read before it when the gap between them (a hole, or data the copy does
// not need) is at most gap bytes and the read stays within the request
// size: one request costs both endpoints more than reading a short gap
// does (docs/volume-copy.md#small-extents). The gap is read, never written.
type spanner struct {
	c    *Copier
	kind itemKind
	send func(item) error
	keep []volume.Range
}

func (c *Copier) spanner(kind itemKind, send func(item) error) *spanner {
	return &spanner{c: c, kind: kind, send: send}
}

// add queues a data range. Ranges come in ascending order; one that does
// not (a misbehaving extent map) starts a read of its own. A range that
// touches the last one extends it.
func (s *spanner) add(off, n int64) error {
	if n <= 0 {
		return nil
	}
	if k := len(s.keep); k > 0 {
		last := &s.keep[k-1]
		start, end := s.keep[0].Off, last.Off+last.Len
		switch {
		case off < end || off-end > s.c.plan.spanGap || off+n-start > int64(s.c.opts.RequestSize):
			if err := s.flush(); err != nil {
				return err
			}
		case off == end:
			last.Len += n
			return nil
		}
	}
	s.keep = append(s.keep, volume.Range{Off: off, Len: n})
	return nil
}

// flush sends the read the queued ranges make. A read of one range is
// that range, in requests of the request size.
func (s *spanner) flush() error {
	keep := s.keep
	s.keep = nil
	switch len(keep) {
	case 0:
		return nil
	case 1:
		return s.c.split(s.kind, keep[0].Off, keep[0].Len, s.send)
	}
	start, last := keep[0].Off, keep[len(keep)-1]
	return s.send(item{kind: s.kind, off: start, n: last.Off + last.Len - start, keep: keep})
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
	al := c.aligner(e)
	data := c.spanner(itemData, send)
	err := forExtents(ctx, c.src, "source", e.off, e.end, func(x volume.Extent) error {
		x = al.align(x)
		switch {
		case x.Len == 0:
			return nil
		case !x.Zero:
			return data.add(x.Off, x.Len)
		case c.targetZero:
			c.logicalDone.Add(x.Len)
			return nil
		default:
			return send(item{kind: itemZero, off: x.Off, n: x.Len})
		}
	})
	if err != nil {
		return err
	}
	return data.flush()
}

// aligner rounds extents to whole blocks when the copy keeps a manifest
// (whose entries are per block): data outward, holes inward, never twice
// over the same block. Without a manifest extents pass as they are.
type aligner struct {
	bs, size, pos int64
	on            bool
}

func (c *Copier) aligner(e *extentWork) *aligner {
	return &aligner{bs: int64(c.opts.BlockSize), size: c.src.Size(), pos: e.off, on: c.manifest != nil}
}

func (a *aligner) align(x volume.Extent) volume.Extent {
	if !a.on {
		return x
	}
	start, end := x.Off/a.bs*a.bs, x.Off+x.Len
	if x.Zero {
		start = (x.Off + a.bs - 1) / a.bs * a.bs
		if end != a.size {
			end = end / a.bs * a.bs
		}
	} else {
		end = min((end+a.bs-1)/a.bs*a.bs, a.size)
	}
	start = max(start, a.pos)
	if end <= start {
		return volume.Extent{Off: start, Zero: x.Zero}
	}
	a.pos = end
	return volume.Extent{Off: start, Len: end - start, Zero: x.Zero}
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
	data := c.spanner(itemData, send)
	err := c.forDirty(ctx, e.off, e.end, func(ranges []volume.Range, upTo int64) error {
		clean := upTo - pos
		for _, r := range ranges {
			clean -= r.Len
			if err := data.add(r.Off, r.Len); err != nil {
				return err
			}
		}
		c.logicalDone.Add(clean)
		pos = upTo
		return nil
	})
	if err != nil {
		return err
	}
	return data.flush()
}

// walkBase compares what the source holds with the base (in ModeManifest:
// the target itself).
func (c *Copier) walkBase(ctx context.Context, e *extentWork, send func(item) error) error {
	al := c.aligner(e)
	data := c.spanner(itemCompare, send)
	err := forExtents(ctx, c.src, "source", e.off, e.end, func(x volume.Extent) error {
		x = al.align(x)
		if x.Len == 0 {
			return nil
		}
		if !x.Zero {
			return data.add(x.Off, x.Len)
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
	if err != nil {
		return err
	}
	return data.flush()
}

// walkManifest reads only the source where the old manifest can be
// trusted: data is hashed block by block against it, and where the source
// is a hole, the blocks the manifest says hold data are zeroed. Elsewhere
// it compares with the target.
func (c *Copier) walkManifest(ctx context.Context, e *extentWork, send func(item) error) error {
	if !c.manifest.trusted(e) {
		return c.walkBase(ctx, e, send)
	}
	al := c.aligner(e)
	bs := int64(c.opts.BlockSize)
	data := c.spanner(itemHash, send)
	err := forExtents(ctx, c.src, "source", e.off, e.end, func(x volume.Extent) error {
		x = al.align(x)
		if x.Len == 0 {
			return nil
		}
		if !x.Zero {
			return data.add(x.Off, x.Len)
		}
		first, blocks := x.Off/bs, (x.Len+bs-1)/bs
		covered := int64(0)
		err := c.manifest.old.nonZeroRuns(e.entries.oldOf(first, blocks), first, blocks, func(b, n int64) error {
			off := b * bs
			m := min(n*bs, x.Off+x.Len-off)
			covered += m
			return send(item{kind: itemZero, off: off, n: m})
		})
		c.logicalDone.Add(x.Len - covered)
		return err
	})
	if err != nil {
		return err
	}
	return data.flush()
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
