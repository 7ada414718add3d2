package volcopy

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/zeebo/xxh3"

	"github.com/taskd/taskd/internal/volume"
	"golang.org/x/sync/errgroup"
)

// flusher makes each finished extent durable, verifies it when asked, and
// emits its checkpoint; then it opens the next extent for writes and the
// producer's window for the one after.
//
// A copy whose checkpoints nobody keeps (no OnCheckpoint: `taskd volume
// copy` without --checkpoint) and that does not verify has no use for a
// durable point before its end: it flushes once, after its last unit, as
// cp does. Every flush is a journal commit and a cache flush of the disk.
func (c *Copier) flusher(ctx context.Context, extents <-chan *extentWork, window <-chan struct{}) error {
	durable := c.resumed
	everyUnit := c.opts.OnCheckpoint != nil || c.opts.Verify
	unflushed := false
	for {
		var e *extentWork
		var ok bool
		select {
		case e, ok = <-extents:
			if !ok {
				return nil
			}
		case <-ctx.Done():
			return ctx.Err()
		}
		select {
		case <-e.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if err := c.manifest.closeUnit(e); err != nil {
			return err
		}
		// A unit that changed nothing needs no flush: every write before
		// it was covered by the previous unit's flush, which finished
		// after all of them (units are flushed in order).
		unflushed = unflushed || e.written.Load()+e.zeroed.Load() > 0
		if unflushed && (everyUnit || e.end == c.src.Size()) {
			if err := c.dst.Flush(ctx); err != nil {
				return fmt.Errorf("flush target after unit %d: %w", e.index, err)
			}
			c.flushes.Add(1)
			unflushed = false
		}
		if everyUnit {
			// A checkpoint vouches for the manifest entries before it.
			if err := c.manifest.sync(); err != nil {
				return err
			}
		}
		if c.opts.Verify {
			if err := c.verifyExtent(ctx, e); err != nil {
				return err
			}
			c.verified.Add(1)
		}
		c.extentsDone.Store(e.index + 1)
		durable.Next = e.end
		durable.Read += e.read.Load()
		durable.Written += e.written.Load()
		durable.Zeroed += e.zeroed.Load()
		durable.AllocDone += e.alloc.Load()
		if c.opts.OnCheckpoint != nil {
			if err := c.opts.OnCheckpoint(durable.encode()); err != nil {
				return fmt.Errorf("save checkpoint after extent %d: %w", e.index, err)
			}
		}
		close(e.checkpointed)
		<-window
	}
}

// verifyExtent hashes the extent on both sides: XXH3 of each request-sized
// chunk, read in parallel, then XXH3 over the chunk hashes in order.
func (c *Copier) verifyExtent(ctx context.Context, e *extentWork) error {
	req := int64(c.opts.RequestSize)
	chunks := (e.end - e.off + req - 1) / req
	srcSums := make([]uint64, chunks)
	dstSums := make([]uint64, chunks)
	g, gctx := errgroup.WithContext(ctx)
	next := make(chan int64)
	g.Go(func() error {
		defer close(next)
		for i := range chunks {
			select {
			case next <- i:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	for range min(int64(c.opts.Workers), chunks) {
		g.Go(func() error {
			buf := volume.AlignedBuffer(int(req))
			for i := range next {
				off := e.off + i*req
				b := buf[:min(req, e.end-off)]
				if err := c.src.ReadAt(gctx, b, off); err != nil {
					return fmt.Errorf("verify: read source at %d: %w", off, err)
				}
				srcSums[i] = xxh3.Hash(b)
				if err := c.dst.ReadAt(gctx, b, off); err != nil {
					return fmt.Errorf("verify: read target at %d: %w", off, err)
				}
				dstSums[i] = xxh3.Hash(b)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	s, d := combine(srcSums), combine(dstSums)
	if s != d {
		return fmt.Errorf("%w: extent %d [%d, %d): source xxh3 %016x, target xxh3 %016x", ErrVerify, e.index, e.off, e.end, s, d)
	}
	return nil
}

func combine(sums []uint64) uint64 {
	b := make([]byte, 0, 8*len(sums))
	for _, s := range sums {
		b = binary.BigEndian.AppendUint64(b, s)
	}
	return xxh3.Hash(b)
}
