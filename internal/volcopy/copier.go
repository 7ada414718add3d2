package volcopy

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/taskd/taskd/internal/volume"
)

// Copier copies one volume onto another. Create it with New, run it once.
type Copier struct {
	src, dst, base volume.Volume
	dirty          volume.DirtyTracker
	mode           Mode
	opts           Options
	plan           plan
	targetZero     bool
	throttle       *throttle
	log            *slog.Logger
	unit           int64      // bytes between checkpoints (see applyDefaults)
	lag            int        // units whose writes may run ahead of the last checkpoint
	resumed        checkpoint // the state the run starts from (Next: first offset to copy)
	zeroBlock      []byte
	manifest       *manifestRun // with Options.Manifest
	noRange        atomic.Bool  // copy_file_range refused: read and write instead

	read, written, zeroed  atomic.Int64
	allocDone, logicalDone atomic.Int64
	extentsDone            atomic.Int64
	flushes                atomic.Int64
	verified               atomic.Int64 // extents this run hashed on both sides
	allocTotal             atomic.Int64
}

// New checks the volumes and options and prepares a copy of src onto dst.
// An error wraps ErrInvalid and nothing has been written.
func New(src, dst volume.Volume, opts Options) (*Copier, error) {
	c := &Copier{src: src, dst: dst, base: opts.Base, opts: opts, mode: ModeFull, log: opts.Logger}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if src.Identity() == dst.Identity() {
		return nil, fmt.Errorf("%w: source and destination are the same volume (%s)", ErrInvalid, src.Identity())
	}
	if dst.Size() < src.Size() {
		return nil, fmt.Errorf("%w: destination (%d bytes) is smaller than the source (%d bytes)", ErrInvalid, dst.Size(), src.Size())
	}
	switch {
	case opts.Manifest && (opts.Base != nil || opts.DirtyBitmap != ""):
		return nil, fmt.Errorf("%w: --manifest excludes --base and --dirty-bitmap", ErrInvalid)
	case opts.Base != nil && opts.DirtyBitmap != "":
		return nil, fmt.Errorf("%w: --base and --dirty-bitmap exclude each other", ErrInvalid)
	case opts.Base != nil:
		c.mode = ModeBase
		if opts.Base.Size() != src.Size() {
			return nil, fmt.Errorf("%w: base (%d bytes) and source (%d bytes) differ in size", ErrInvalid, opts.Base.Size(), src.Size())
		}
	case opts.DirtyBitmap != "":
		c.mode = ModeDirty
		d, ok := src.(volume.DirtyTracker)
		if !ok {
			return nil, fmt.Errorf("%w: --dirty-bitmap needs an NBD source that exports the bitmap", ErrInvalid)
		}
		c.dirty = d
	case opts.Manifest:
		if _, err := volume.SidecarsOf(dst); err != nil {
			return nil, fmt.Errorf("%w: --manifest needs a regular file target named by its own path (not a symlink): %w", ErrInvalid, err)
		}
		// A new target is copied in full (and gets its manifest); an
		// existing one is compared, with its manifest where it can be
		// trusted and with its content where not.
		if !dst.IsZero() {
			c.mode, c.base = ModeManifest, dst
		}
	}
	if _, err := ParseZeroDetect(string(opts.ZeroDetect)); err != nil {
		return nil, err
	}
	if _, err := ParseDirectIO(string(opts.DirectIO)); err != nil {
		return nil, err
	}
	c.targetZero = opts.TargetIsZero || dst.IsZero()
	if opts.Resume != nil {
		cp, err := decodeCheckpoint(opts.Resume)
		if err != nil {
			return nil, err
		}
		// A manifest copy that created its target resumes onto the
		// target it created: same copy, now an existing file.
		if opts.Manifest && (cp.Mode == ModeFull || cp.Mode == ModeManifest) {
			c.mode, c.base = cp.Mode, nil
			if cp.Mode == ModeManifest {
				c.base = dst
			}
		}
		c.resumed = cp
	}
	if err := c.choosePlan(); err != nil {
		return nil, err
	}
	if err := c.applyDefaults(); err != nil {
		return nil, err
	}
	fresh := checkpoint{Version: 1, Mode: c.mode, Size: src.Size(), Extent: c.opts.ExtentSize, Bitmap: opts.DirtyBitmap}
	if opts.Resume == nil {
		c.resumed = fresh
	} else {
		cp := c.resumed
		if cp.Mode != c.mode || cp.Size != src.Size() || cp.Extent != c.opts.ExtentSize || cp.Bitmap != opts.DirtyBitmap ||
			(cp.Manifest != "" || cp.Against != "") && !opts.Manifest {
			return nil, fmt.Errorf("%w: the checkpoint belongs to a different copy (mode %s, %d bytes, extent %d)", ErrInvalid, cp.Mode, cp.Size, cp.Extent)
		}
		if cp.Next < 0 || cp.Next > src.Size() || cp.Next%c.unit != 0 && cp.Next != src.Size() {
			return nil, fmt.Errorf("%w: checkpoint offset %d is not a checkpoint boundary", ErrInvalid, cp.Next)
		}
		c.read.Store(cp.Read)
		c.written.Store(cp.Written)
		c.zeroed.Store(cp.Zeroed)
		c.allocDone.Store(cp.AllocDone)
		c.extentsDone.Store(cp.Next / c.unit)
		// A resumed target is no longer known to be zero: the extent cut
		// off may hold partial writes.
		c.targetZero = opts.TargetIsZero
	}
	c.logicalDone.Store(c.resumed.Next)
	c.throttle = newThrottle(c.opts.Rate, c.opts.RequestSize)
	c.zeroBlock = make([]byte, c.opts.BlockSize)
	return c, nil
}

func isNBD(v volume.Volume) bool { return strings.HasPrefix(v.Identity(), "nbd:") }

// choosePlan describes the endpoints and picks the I/O path.
func (c *Copier) choosePlan() error {
	in := planInput{src: describe(c.src), dst: describe(c.dst), mode: c.mode, hashing: c.opts.Manifest,
		zero: c.opts.ZeroDetect, direct: c.opts.DirectIO, workers: c.opts.Workers, request: c.opts.RequestSize}
	// One SEEK_HOLE: whether the source has holes decides zero detection
	// (--zero-detect auto) and whether its reads are announced.
	in.srcSparse = sparseFile(c.src, in.src)
	c.plan = choosePlan(in)
	return nil
}

func (c *Copier) applyDefaults() error {
	o := &c.opts
	if o.Workers == 0 {
		o.Workers = c.plan.workers
	}
	defaultedRequest := o.RequestSize == 0
	if o.RequestSize == 0 {
		o.RequestSize = c.plan.request
	}
	if o.BlockSize == 0 {
		o.BlockSize = defaultBlock
	}
	if o.ExtentSize == 0 {
		o.ExtentSize = defaultExtent
	}
	if defaultedRequest && int64(o.RequestSize) > o.ExtentSize {
		o.RequestSize = int(o.ExtentSize)
	}
	if o.ProgressInterval == 0 {
		o.ProgressInterval = defaultProgressT
	}
	maxReq := min(c.src.MaxRequest(), c.dst.MaxRequest())
	if c.base != nil {
		maxReq = min(maxReq, c.base.MaxRequest())
	}
	switch {
	case o.Workers < 1 || o.Workers > maxWorkers:
		return fmt.Errorf("%w: workers %d outside 1-%d", ErrInvalid, o.Workers, maxWorkers)
	case o.BlockSize < 512 || o.BlockSize&(o.BlockSize-1) != 0:
		return fmt.Errorf("%w: block size %d is not a power of two of at least 512", ErrInvalid, o.BlockSize)
	case o.RequestSize < o.BlockSize || o.RequestSize%o.BlockSize != 0:
		return fmt.Errorf("%w: request size %d is not a multiple of the block size %d", ErrInvalid, o.RequestSize, o.BlockSize)
	case o.RequestSize > maxReq:
		return fmt.Errorf("%w: request size %d exceeds what the endpoints accept (%d)", ErrInvalid, o.RequestSize, maxReq)
	case o.ExtentSize < int64(o.RequestSize) || o.ExtentSize%int64(o.BlockSize) != 0:
		return fmt.Errorf("%w: extent size %d must be a multiple of the block size and at least the request size", ErrInvalid, o.ExtentSize)
	case o.Rate < 0:
		return fmt.Errorf("%w: rate %d is negative", ErrInvalid, o.Rate)
	}
	if err := checkMemory(o.Workers, o.RequestSize, c.base != nil, o.Verify); err != nil {
		return err
	}
	if o.Memory != nil && c.bufferMemory() > o.Memory.Limit() {
		return fmt.Errorf("%w: the copy needs %d MiB of buffers, more than this node's --copy-memory-limit of %d MiB",
			ErrInvalid, c.bufferMemory()>>20, o.Memory.Limit()>>20)
	}
	// Checkpoint every half extent, and let writes run one half ahead of
	// the last checkpoint: the flush of one half overlaps the writes of the
	// next, yet a crash still loses at most two halves, one extent. An
	// extent too small to halve checkpoints whole, without overlap.
	c.unit, c.lag = o.ExtentSize, 1
	if half := o.ExtentSize / 2; half >= int64(o.RequestSize) && half%int64(o.BlockSize) == 0 {
		c.unit, c.lag = half, 2
	}
	return nil
}

// bufferMemory is what the copy allocates for its buffers (MaxBufferMemory
// explains the sum).
func (c *Copier) bufferMemory() int64 {
	return BufferMemory(c.opts.Workers, c.opts.RequestSize, c.base != nil, c.opts.Verify)
}

// SetRate changes the read rate limit (bytes per second, 0 unlimited) while
// the copy runs. Reads already waiting at the old rate wait at the new one
// from now on.
func (c *Copier) SetRate(bytesPerSecond int64) { c.throttle.setRate(bytesPerSecond) }

// Run copies, and returns the final progress. It returns when every
// goroutine it started has ended.
func (c *Copier) Run(ctx context.Context) (Progress, error) {
	// Take the buffers' share of the node's pool before allocating them.
	if pool := c.opts.Memory; pool != nil {
		need := c.bufferMemory()
		release, err := pool.acquire(ctx, need, func() {
			c.log.Info("copy waiting for buffer memory", "need", need, "limit", pool.Limit())
		})
		if err != nil {
			return c.snapshot(), fmt.Errorf("wait for copy buffer memory: %w", err)
		}
		defer release()
	}
	c.applyIO()
	if c.opts.Manifest {
		if err := c.openManifests(); err != nil {
			return c.snapshot(), err
		}
		defer c.manifest.close()
	}
	total, err := c.scanAllocated(ctx)
	if err != nil {
		return c.snapshot(), err
	}
	c.allocTotal.Store(total)
	c.log.Info("copy started", "mode", c.mode, "size", c.src.Size(), "allocated", total,
		"resume_from", c.resumed.Next, "path", c.plan.path, "zero_detect", c.plan.zeroDetect,
		"workers", c.opts.Workers, "request", c.opts.RequestSize, "why", c.plan.why)

	repCtx, stopReporter := context.WithCancel(ctx)
	reporterDone := make(chan struct{})
	go func() { defer close(reporterDone); c.report(repCtx) }()
	defer func() { stopReporter(); <-reporterDone }()

	g, gctx := errgroup.WithContext(ctx)
	items := make(chan item, c.opts.Workers*2)
	extents := make(chan *extentWork, 1)
	// Units open at once: lag of them may write past the last checkpoint,
	// one more may read ahead.
	window := make(chan struct{}, c.lag+1)
	for range c.opts.Workers {
		g.Go(func() error { return c.worker(gctx, items) })
	}
	g.Go(func() error { return c.flusher(gctx, extents, window) })
	g.Go(func() error {
		defer close(items)
		defer close(extents)
		return c.produce(gctx, items, extents, window)
	})
	err = g.Wait()
	if err == nil && c.manifest != nil {
		c.manifest.finish(c.dst)
	}
	p := c.snapshot()
	if err != nil {
		return p, err
	}
	if c.opts.OnProgress != nil {
		c.opts.OnProgress(p)
	}
	c.log.Info("copy finished", "read", p.BytesRead, "written", p.BytesWritten, "zeroed", p.BytesZeroed)
	return p, nil
}

// applyIO sets how the file endpoints move data, as the plan says.
func (c *Copier) applyIO() {
	set := func(v volume.Volume, role string, want volume.IO) {
		f, ok := v.(volume.File)
		if !ok {
			return
		}
		if got := f.SetIO(want); got.Direct != want.Direct {
			c.log.Info("direct I/O refused by the file system; using the page cache", "endpoint", role)
		}
	}
	set(c.src, "source", c.plan.srcIO)
	if c.base != nil && c.base != c.dst {
		b := c.plan.srcIO
		b.Prefetch = false // announced for the source only
		set(c.base, "base", b)
	}
	set(c.dst, "target", c.plan.dstIO)
}

func (c *Copier) snapshot() Progress {
	size := c.src.Size()
	ext := (size + c.unit - 1) / c.unit
	return Progress{
		LogicalDone: c.logicalDone.Load(), LogicalTotal: size,
		AllocatedDone: c.allocDone.Load(), AllocatedTotal: c.allocTotal.Load(),
		BytesRead: c.read.Load(), BytesWritten: c.written.Load(), BytesZeroed: c.zeroed.Load(),
		ExtentsDone: c.extentsDone.Load(), ExtentsTotal: ext, Flushes: c.flushes.Load(), ExtentsVerified: c.verified.Load(),
	}
}

// report calls OnProgress every interval with a smoothed rate and ETA.
func (c *Copier) report(ctx context.Context) {
	if c.opts.OnProgress == nil {
		return
	}
	t := time.NewTicker(c.opts.ProgressInterval)
	defer t.Stop()
	last, lastAt := c.allocDone.Load(), time.Now()
	var rateEWMA float64
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			p := c.snapshot()
			inst := float64(p.AllocatedDone-last) / now.Sub(lastAt).Seconds()
			if rateEWMA == 0 {
				rateEWMA = inst
			} else {
				rateEWMA = 0.5*rateEWMA + 0.5*inst
			}
			last, lastAt = p.AllocatedDone, now
			p.Rate = rateEWMA
			p.ETA = eta(p.AllocatedTotal-p.AllocatedDone, rateEWMA)
			c.opts.OnProgress(p)
		}
	}
}

// maxETA is the longest time left a copy reports; beyond it the estimate
// says nothing and reads as unknown.
const maxETA = 100 * 365 * 24 * time.Hour

// eta is the time left for remaining bytes at bytesPerSecond, or 0
// (unknown) when no estimate is possible: no rate (stalled, or nothing
// measured yet), or one so slow that the time left would exceed maxETA
// (and, unchecked, overflow time.Duration into a negative figure).
func eta(remaining int64, bytesPerSecond float64) time.Duration {
	if remaining <= 0 || !(bytesPerSecond > 0) || math.IsInf(bytesPerSecond, 0) {
		return 0
	}
	secs := float64(remaining) / bytesPerSecond
	if !(secs*float64(time.Second) < float64(maxETA)) {
		return 0
	}
	return max(time.Duration(secs*float64(time.Second)), time.Second)
}
