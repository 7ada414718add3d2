package volume

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/taskd/taskd/internal/nbd"
)

type nbdVolume struct {
	c  *nbd.Client
	id string
}

func openNBD(ctx context.Context, t nbd.Target, opts Options) (Volume, error) {
	o := opts.NBD
	if !slices.Contains(o.MetaContexts, nbd.ContextAllocation) {
		o.MetaContexts = append(slices.Clone(o.MetaContexts), nbd.ContextAllocation)
	}
	if opts.Confined {
		dial, release, err := confineNBD(ctx, t, opts)
		if err != nil {
			return nil, err
		}
		defer release() // every connection is open once Dial returns
		o.Dial = dial
	}
	c, err := nbd.Dial(ctx, t, o)
	if err != nil {
		return nil, err
	}
	if opts.Write && c.ReadOnly() {
		c.Close()
		return nil, fmt.Errorf("%w: nbd export %q at %s is read-only", ErrInvalid, t.Export, t.Address)
	}
	return &nbdVolume{c: c, id: fmt.Sprintf("nbd:%s:%s/%s", t.Network, t.Address, t.Export)}, nil
}

func (v *nbdVolume) Size() int64      { return v.c.Size() }
func (v *nbdVolume) IsZero() bool     { return false }
func (v *nbdVolume) MaxRequest() int  { return v.c.MaxRequest() }
func (v *nbdVolume) Identity() string { return v.id }
func (v *nbdVolume) Close() error     { return v.c.Close() }

func (v *nbdVolume) ReadAt(ctx context.Context, p []byte, off int64) error {
	return v.c.ReadAt(ctx, p, off)
}

func (v *nbdVolume) WriteAt(ctx context.Context, p []byte, off int64) error {
	return v.c.WriteAt(ctx, p, off)
}

// Zero uses WRITE_ZEROES, which lets the server punch a hole; without it,
// zeros are written.
func (v *nbdVolume) Zero(ctx context.Context, off, n int64) error {
	err := v.c.WriteZeroes(ctx, off, n, false)
	if errors.Is(err, nbd.ErrNotFast) {
		return writeZeros(ctx, v, off, n)
	}
	return err
}

func (v *nbdVolume) Flush(ctx context.Context) error { return v.c.Flush(ctx) }

func (v *nbdVolume) Extents(ctx context.Context, off, n int64) ([]Extent, error) {
	if !v.c.HasContext(nbd.ContextAllocation) {
		return []Extent{{Off: off, Len: min(n, v.Size()-off)}}, nil
	}
	ext, err := v.c.BlockStatus(ctx, nbd.ContextAllocation, off, n)
	if err != nil {
		return nil, err
	}
	out := make([]Extent, 0, len(ext))
	for _, e := range ext {
		z := e.Flags&nbd.StateZero != 0
		if k := len(out); k > 0 && out[k-1].Zero == z {
			out[k-1].Len += int64(e.Length)
			continue
		}
		out = append(out, Extent{Off: int64(e.Offset), Len: int64(e.Length), Zero: z})
	}
	return out, nil
}

func (v *nbdVolume) Dirty(ctx context.Context, bitmap string, off, n int64) ([]Range, int64, error) {
	name := nbd.DirtyBitmapContext(bitmap)
	if !v.c.HasContext(name) {
		return nil, 0, fmt.Errorf("%w: nbd export %s has no dirty bitmap %q (export it with qemu-nbd -B %s)", ErrInvalid, v.id, bitmap, bitmap)
	}
	ext, err := v.c.BlockStatus(ctx, name, off, n)
	if err != nil {
		return nil, 0, err
	}
	var out []Range
	end := off
	for _, e := range ext {
		end = int64(e.Offset + e.Length)
		if e.Flags&nbd.StateDirty == 0 {
			continue
		}
		if k := len(out); k > 0 && out[k-1].Off+out[k-1].Len == int64(e.Offset) {
			out[k-1].Len += int64(e.Length)
			continue
		}
		out = append(out, Range{Off: int64(e.Offset), Len: int64(e.Length)})
	}
	return out, end, nil
}
