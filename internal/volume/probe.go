package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/taskd/taskd/internal/nbd"
	"golang.org/x/sys/unix"
)

// Probe is what a look at an endpoint learnt without using it.
type Probe struct {
	// NBD: the endpoint is an NBD export; its size is not known (no
	// connection is made).
	NBD bool
	// Exists: a file endpoint names an existing regular file or block
	// device, of Size bytes. A missing one has an existing directory to
	// be created in.
	Exists bool
	Size   int64
	// Identity is as Volume.Identity, for existing files.
	Identity string
}

// ProbeEndpoint checks uri under opts as Open would, but creates nothing,
// writes nothing, and connects to no NBD server. It uses the same
// confinement as Open (openat2 beneath the roots, the same socket and host
// rules), so a path outside the roots or a symlink escaping them is refused
// here exactly as it would be when the copy runs.
//
//   - A file endpoint is opened read-only and must be a regular file or a
//     block device; its size is read. If it does not exist and missing is
//     true, the directory it would be created in must exist under the same
//     roots; with missing false, a missing file is an error.
//   - An NBD endpoint is checked against NBDSocketDirs and NBDAllowHosts
//     when confined. An endpoint that is only unreachable for now (a
//     socket not there yet, a name that does not resolve) passes: that is
//     retried when the copy runs (nbd.ErrUnreachable).
//
// Refusals wrap ErrInvalid, ErrOutsideRoots, ErrNotAllowed or
// os.ErrNotExist.
func ProbeEndpoint(ctx context.Context, uri string, opts Options, missing bool) (Probe, error) {
	opts.Write, opts.CreateSize = false, 0
	switch {
	case strings.HasPrefix(uri, "file://"):
		path := strings.TrimPrefix(uri, "file://")
		if !strings.HasPrefix(path, "/") {
			return Probe{}, fmt.Errorf("%w: %q: a file URI needs an absolute path (file:///path)", ErrInvalid, uri)
		}
		return probeFile(filepath.Clean(path), opts, missing)
	case strings.HasPrefix(uri, "nbd://"), strings.HasPrefix(uri, "nbd+unix://"):
		t, err := nbd.ParseURI(uri)
		if err != nil {
			return Probe{}, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		if opts.Confined {
			_, release, err := confineNBD(ctx, t, opts)
			if errors.Is(err, nbd.ErrUnreachable) {
				return Probe{NBD: true}, nil
			}
			if err != nil {
				return Probe{}, err
			}
			release()
		}
		return Probe{NBD: true}, nil
	default:
		return Probe{}, fmt.Errorf("%w: %q: want file:///PATH, nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH", ErrInvalid, uri)
	}
}

func probeFile(path string, opts Options, missing bool) (Probe, error) {
	v, err := openFile(path, opts)
	if err == nil {
		defer v.Close()
		return Probe{Exists: true, Size: v.Size(), Identity: v.Identity()}, nil
	}
	if !missing || !errors.Is(err, os.ErrNotExist) {
		return Probe{}, err
	}
	// The directory it would be created in, by the same confined open.
	dir, _, err := splitName(path)
	if err != nil {
		return Probe{}, err
	}
	f, _, err := openConfined(filepath.Clean(dir), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, opts)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
			return Probe{}, fmt.Errorf("%s does not exist and cannot be created: directory %s: %w", path, dir, err)
		}
		return Probe{}, err
	}
	f.Close()
	return Probe{}, nil
}
