package volcopy_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/taskd/taskd/internal/volcopy"
	"github.com/taskd/taskd/internal/volume"
)

// durableTarget wraps a real target file and keeps the ledger a power loss
// would settle: which completed writes a completed Flush covers. A write
// counts as durable only if it completed before a Flush started and that
// Flush returned. published checks a checkpoint against the ledger: every
// byte before its offset that the copy wrote must be durable by then.
type durableTarget struct {
	volume.File
	mu        sync.Mutex
	pending   []volume.Range // completed writes no finished flush covers, in completion order
	published int64          // offset of the last checkpoint
	flushes   int
	problems  []string
}

func (d *durableTarget) wrote(off, n int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off < d.published {
		d.problems = append(d.problems, fmt.Sprintf("write [%d, %d) behind the published checkpoint %d", off, off+n, d.published))
	}
	d.pending = append(d.pending, volume.Range{Off: off, Len: n})
}

func (d *durableTarget) WriteAt(ctx context.Context, p []byte, off int64) error {
	if err := d.File.WriteAt(ctx, p, off); err != nil {
		return err
	}
	d.wrote(off, int64(len(p)))
	return nil
}

func (d *durableTarget) Zero(ctx context.Context, off, n int64) error {
	if err := d.File.Zero(ctx, off, n); err != nil {
		return err
	}
	d.wrote(off, n)
	return nil
}

// Flush covers exactly the writes that completed before it started:
// writes completing while it runs may or may not be on the disk.
func (d *durableTarget) Flush(ctx context.Context) error {
	d.mu.Lock()
	covered := len(d.pending)
	d.mu.Unlock()
	if err := d.File.Flush(ctx); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.pending = append([]volume.Range(nil), d.pending[covered:]...)
	d.flushes++
	return nil
}

func (d *durableTarget) checkpoint(cp []byte) error {
	info, err := volcopy.DescribeCheckpoint(cp)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if info.Next < d.published {
		d.problems = append(d.problems, fmt.Sprintf("checkpoint went back from %d to %d", d.published, info.Next))
	}
	for _, r := range d.pending {
		if r.Off < info.Next {
			d.problems = append(d.problems, fmt.Sprintf("checkpoint at %d published while the write [%d, %d) was not yet flushed",
				info.Next, r.Off, r.Off+r.Len))
		}
	}
	d.published = info.Next
	return nil
}

// durableSource passes copy_file_range through to the real target and
// records it in the target's ledger (the kernel copy never calls WriteAt).
type durableSource struct{ volume.File }

func (s durableSource) CopyRange(ctx context.Context, dst volume.File, off, n int64) error {
	d, ok := dst.(*durableTarget)
	if !ok {
		return s.File.CopyRange(ctx, dst, off, n)
	}
	if err := s.File.CopyRange(ctx, d.File, off, n); err != nil {
		return err
	}
	d.wrote(off, n)
	return nil
}

// TestCheckpointNeverAheadOfDurableData: a checkpoint is published only
// once every byte before its offset that the copy wrote has been covered by
// a flush that started after the write completed; otherwise a power loss
// right after the checkpoint would leave a target whose resume skips data
// it never had. Random sparse and fully allocated sources (the latter take
// copy_file_range), fresh and existing targets, odd request and extent
// sizes, several workers.
func TestCheckpointNeverAheadOfDurableData(t *testing.T) {
	for seed := range uint64(10) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 17))
			dir := t.TempDir()
			size := 2<<20 + rng.IntN(6<<20)
			var src image
			if seed%2 == 0 {
				src = writeImage(t, filepath.Join(dir, "src"), size, rng)
			} else {
				src = image{path: filepath.Join(dir, "src"), data: make([]byte, size)}
				fillRandom(rng, src.data)
				if err := os.WriteFile(src.path, src.data, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			dst := filepath.Join(dir, "dst")
			if seed%3 == 0 {
				writeImage(t, dst, size, rng) // existing data: holes get zeroed
			}
			spec := tuning(rng)
			ctx := ctxT(t)
			srcVol, err := volume.Open(ctx, fileURI(src.path), volume.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer srcVol.Close()
			dstVol, err := volume.Open(ctx, fileURI(dst), volume.Options{Write: true, CreateSize: int64(size)})
			if err != nil {
				t.Fatal(err)
			}
			defer dstVol.Close()
			target := &durableTarget{File: dstVol.(volume.File)}
			c, err := volcopy.New(durableSource{srcVol.(volume.File)}, target, volcopy.Options{
				Workers: spec.Workers, RequestSize: spec.RequestSize, ExtentSize: spec.ExtentSize,
				TargetIsZero: seed%3 != 0, OnCheckpoint: target.checkpoint,
			})
			if err != nil {
				t.Fatal(err)
			}
			p, err := c.Run(ctx)
			if err != nil {
				t.Fatalf("copy (%+v): %v", spec, err)
			}
			for _, msg := range target.problems {
				t.Error(msg)
			}
			if target.published != int64(size) {
				t.Errorf("last checkpoint at %d, want the end %d", target.published, size)
			}
			if target.flushes == 0 || int64(target.flushes) != p.Flushes {
				t.Errorf("target saw %d flushes, the copy reports %d", target.flushes, p.Flushes)
			}
			mustEqual(t, dst, src.data)
		})
	}
}
