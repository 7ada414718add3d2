package volcopy

import (
	"context"
	"fmt"

	"golang.org/x/sync/semaphore"
)

// MaxBufferMemory is the most buffer memory one copy may use: its workers ×
// request size × buffers per worker (1, plus 1 with a base or a manifest,
// plus 1 with verify). Options above it are refused (ErrInvalid) before anything is
// opened for writing. Reading ahead needs no memory of its own: the work
// queue holds offsets, and data only ever sits in the workers' buffers.
const MaxBufferMemory = 256 << 20

// DefaultNodeMemory is the default of --copy-memory-limit: buffer memory
// all copy tasks of a node may hold at once.
const DefaultNodeMemory = 1 << 30

// BufferMemory is the buffer memory a copy with these settings allocates.
func BufferMemory(workers, requestSize int, base, verify bool) int64 {
	per := int64(1)
	if base {
		per++
	}
	if verify {
		per++
	}
	return int64(workers) * int64(requestSize) * per
}

// CheckLimits refuses a spec whose options would exceed MaxBufferMemory
// with any endpoints (a zero option counted at its largest default), or
// that asks for what cannot be, so that a task is refused when it is
// created, not when it runs.
func (s Spec) CheckLimits() error {
	if s.Workers < 0 || s.Workers > maxWorkers {
		return fmt.Errorf("%w: workers %d outside 1-%d", ErrInvalid, s.Workers, maxWorkers)
	}
	if s.RequestSize < 0 || s.RequestSize > maxRequestSize {
		return fmt.Errorf("%w: request size %d above %d MiB", ErrInvalid, s.RequestSize, maxRequestSize>>20)
	}
	if _, err := ParseZeroDetect(s.ZeroDetect); err != nil {
		return err
	}
	if s.Manifest && (s.Base != "" || s.DirtyBitmap != "") {
		return fmt.Errorf("%w: a manifest copy excludes --base and --dirty-bitmap", ErrInvalid)
	}
	// Every path's queue, as choosePlan would size it for this spec.
	for _, path := range []ioPath{pathBuffered, pathDirect, pathCopyRange, pathNBD} {
		workers, req := queueOf(path, s.Workers, s.RequestSize)
		if err := checkMemory(workers, req, s.Base != "" || s.Manifest, s.Verify); err != nil {
			return err
		}
	}
	return nil
}

func checkMemory(workers, req int, base, verify bool) error {
	if need := BufferMemory(workers, req, base, verify); need > MaxBufferMemory {
		return fmt.Errorf("%w: %d workers × %d-byte requests need %d MiB of buffers; a copy may use at most %d MiB (use fewer workers or smaller requests)",
			ErrInvalid, workers, req, need>>20, MaxBufferMemory>>20)
	}
	return nil
}

// MemoryPool bounds the buffer memory of every copy of a node together
// (--copy-memory-limit). A copy takes its share before it allocates any
// buffer, waiting while others hold the pool, and returns it when it ends.
type MemoryPool struct {
	limit int64
	sem   *semaphore.Weighted
}

// NewMemoryPool makes a pool of limit bytes.
func NewMemoryPool(limit int64) *MemoryPool {
	return &MemoryPool{limit: limit, sem: semaphore.NewWeighted(limit)}
}

// Limit is the pool's size in bytes.
func (p *MemoryPool) Limit() int64 { return p.limit }

// acquire takes n bytes, waiting until they are free or ctx ends; waiting
// is called once if it has to wait. A request larger than the pool never
// fits; New refuses those beforehand.
func (p *MemoryPool) acquire(ctx context.Context, n int64, waiting func()) (release func(), err error) {
	if n > p.limit {
		return nil, fmt.Errorf("%w: the copy needs %d MiB of buffers, more than this node's --copy-memory-limit of %d MiB", ErrInvalid, n>>20, p.limit>>20)
	}
	if !p.sem.TryAcquire(n) {
		waiting()
		if err := p.sem.Acquire(ctx, n); err != nil {
			return nil, err
		}
	}
	return func() { p.sem.Release(n) }, nil
}
