package volcopy

import (
	"context"
	"fmt"
	"strings"

	"github.com/taskd/taskd/internal/volume"
)

// CheckSpec checks what can be known of spec from its text alone, on any
// node: both endpoints given and different, file:// paths absolute, a dirty
// bitmap only with an NBD source and without a base, buffer limits.
func CheckSpec(spec Spec) error {
	if spec.Source == "" || spec.Target == "" {
		return fmt.Errorf("%w: source and target are required", ErrInvalid)
	}
	if spec.Source == spec.Target {
		return fmt.Errorf("%w: source and target are the same", ErrInvalid)
	}
	for _, u := range []string{spec.Source, spec.Target, spec.Base} {
		if p, ok := strings.CutPrefix(u, "file://"); ok && !strings.HasPrefix(p, "/") {
			return fmt.Errorf("%w: %q: a file URI needs an absolute path (file:///path)", ErrInvalid, u)
		}
	}
	if spec.DirtyBitmap != "" {
		if spec.Base != "" {
			return fmt.Errorf("%w: --base and --dirty-bitmap exclude each other", ErrInvalid)
		}
		if !strings.HasPrefix(spec.Source, "nbd://") && !strings.HasPrefix(spec.Source, "nbd+unix://") {
			return fmt.Errorf("%w: --dirty-bitmap needs an NBD source that exports the bitmap; %s is not an nbd:// or nbd+unix:// URI", ErrInvalid, spec.Source)
		}
	}
	return spec.CheckLimits()
}

// Check is a dry run of Prepare on the node that will run the copy: it
// refuses what Prepare would refuse as bad input, while writing, creating
// and connecting to nothing. It checks CheckSpec, then every endpoint with
// volume.ProbeEndpoint under env (the same confinement the copy uses: the
// roots, symlinks escaping them, NBD socket dirs and allowed hosts); that
// the source and base exist; that a missing target file has a directory to
// be created in; and, where both sizes are known without connecting (file
// and block device endpoints), that the target is not smaller than the
// source, the base has the source's size, and source and target are not
// the same file. NBD export sizes, read-only exports and bitmaps are only
// known once connected: the copy checks them when it starts. An error
// wraps ErrInvalid.
func Check(ctx context.Context, spec Spec, env volume.Options) error {
	if err := CheckSpec(spec); err != nil {
		return err
	}
	src, err := volume.ProbeEndpoint(ctx, spec.Source, env, false)
	if err != nil {
		return inputError("source", err)
	}
	if spec.Base != "" {
		base, err := volume.ProbeEndpoint(ctx, spec.Base, env, false)
		if err != nil {
			return inputError("base", err)
		}
		if base.Exists && src.Exists && base.Size != src.Size {
			return fmt.Errorf("%w: base (%d bytes) and source (%d bytes) differ in size", ErrInvalid, base.Size, src.Size)
		}
	}
	dst, err := volume.ProbeEndpoint(ctx, spec.Target, env, true)
	if err != nil {
		return inputError("target", err)
	}
	if dst.Exists && src.Exists {
		if dst.Identity == src.Identity {
			return fmt.Errorf("%w: source and destination are the same volume (%s)", ErrInvalid, src.Identity)
		}
		if dst.Size < src.Size {
			return fmt.Errorf("%w: destination (%d bytes) is smaller than the source (%d bytes)", ErrInvalid, dst.Size, src.Size)
		}
	}
	return nil
}
