package volcopy

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/taskd/taskd/internal/nbd"
	"github.com/taskd/taskd/internal/volume"
)

// Spec describes a copy by URIs, as the CLI and the task type take it.
type Spec struct {
	Source       string `json:"source"`
	Target       string `json:"target"`
	Base         string `json:"base,omitempty"`
	DirtyBitmap  string `json:"dirty_bitmap,omitempty"`
	TargetIsZero bool   `json:"target_is_zero,omitempty"`
	Verify       bool   `json:"verify,omitempty"`
	Manifest     bool   `json:"manifest,omitempty"`
	ZeroDetect   string `json:"zero_detect,omitempty"`
	Rate         int64  `json:"rate,omitempty"`
	Workers      int    `json:"workers,omitempty"`
	RequestSize  int    `json:"request_size,omitempty"`
	ExtentSize   int64  `json:"extent_size,omitempty"`
}

// Job is a prepared copy with its open volumes.
type Job struct {
	*Copier
	vols []volume.Volume
}

// Close closes every volume.
func (j *Job) Close() error {
	var errs []error
	for _, v := range j.vols {
		errs = append(errs, v.Close())
	}
	return errors.Join(errs...)
}

// Prepare opens the volumes of spec and checks the copy, in an order that
// writes nothing until every check has passed: source, base, then target (a
// missing target file is created last, with the source's size). env carries
// what the caller decides: roots, NBD tuning, callbacks, a checkpoint to
// resume from. New does the checks that need no I/O beyond opening (same
// volume, exclusive modes, sizes). An error wraps ErrInvalid when the input
// is at fault.
func Prepare(ctx context.Context, spec Spec, env volume.Options, opts Options) (*Job, error) {
	if spec.Source == "" || spec.Target == "" {
		return nil, fmt.Errorf("%w: source and target are required", ErrInvalid)
	}
	if err := spec.CheckLimits(); err != nil {
		return nil, err
	}
	j := &Job{}
	fail := func(err error) (*Job, error) {
		j.Close()
		return nil, err
	}
	ro := env
	ro.Write, ro.CreateSize = false, 0
	if spec.DirtyBitmap != "" {
		ro.NBD.MetaContexts = append(ro.NBD.MetaContexts, "qemu:dirty-bitmap:"+spec.DirtyBitmap)
	}
	src, err := volume.Open(ctx, spec.Source, ro)
	if err != nil {
		return fail(inputError("source", err))
	}
	j.vols = append(j.vols, src)
	if spec.Base != "" {
		ro.NBD.MetaContexts = nil
		base, err := volume.Open(ctx, spec.Base, ro)
		if err != nil {
			return fail(inputError("base", err))
		}
		j.vols = append(j.vols, base)
		opts.Base = base
	}
	// Open the target without creating it first, so that the checks below
	// run before anything exists on disk.
	rw := env
	rw.Write, rw.CreateSize = true, 0
	dst, err := volume.Open(ctx, spec.Target, rw)
	created := false
	if errors.Is(err, os.ErrNotExist) {
		rw.CreateSize = src.Size()
		dst, err = volume.Open(ctx, spec.Target, rw)
		created = err == nil
	}
	if err != nil {
		return fail(inputError("target", err))
	}
	j.vols = append(j.vols, dst)
	opts.DirtyBitmap = spec.DirtyBitmap
	opts.TargetIsZero = opts.TargetIsZero || spec.TargetIsZero
	opts.Verify = opts.Verify || spec.Verify
	opts.Manifest = opts.Manifest || spec.Manifest
	if spec.ZeroDetect != "" {
		opts.ZeroDetect, _ = ParseZeroDetect(spec.ZeroDetect) // checked by CheckLimits
	}
	opts.Rate = max(opts.Rate, spec.Rate)
	if spec.Workers != 0 {
		opts.Workers = spec.Workers
	}
	if spec.RequestSize != 0 {
		opts.RequestSize = spec.RequestSize
	}
	if spec.ExtentSize != 0 {
		opts.ExtentSize = spec.ExtentSize
	}
	c, err := New(src, dst, opts)
	if err != nil {
		// Bad input leaves nothing behind: the target file this
		// Prepare created goes again (only that file: see
		// volume.RemoveCreated).
		if created {
			err = errors.Join(err, volume.RemoveCreated(dst))
		}
		return fail(err)
	}
	j.Copier = c
	return j, nil
}

// inputError marks a failure to open an endpoint as bad input, except when
// the endpoint is only unreachable for now (an NBD server refusing
// connections, restarting, or not up yet): that is worth retrying.
func inputError(role string, err error) error {
	if errors.Is(err, ErrInvalid) {
		return err
	}
	if errors.Is(err, nbd.ErrUnreachable) {
		return fmt.Errorf("%s: %w", role, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrInvalid, role, err)
}
