// Package volume opens the endpoints of a volume copy: regular files, block
// devices and NBD exports, each named by a URI. Every endpoint reports its
// allocation, so a copy reads only what holds data and keeps targets sparse.
package volume

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/taskd/taskd/internal/nbd"
)

// Extent is a run of a volume with one allocation state. Zero means the run
// reads as zeros without holding data (a hole, or a range the store knows is
// zero); anything else may hold data and must be read.
type Extent struct {
	Off, Len int64
	Zero     bool
}

// Range is a byte range.
type Range struct{ Off, Len int64 }

// Volume is an open endpoint. Offsets and lengths are in bytes; methods are
// safe for concurrent use on disjoint ranges.
type Volume interface {
	// Size is the volume size in bytes.
	Size() int64
	ReadAt(ctx context.Context, p []byte, off int64) error
	WriteAt(ctx context.Context, p []byte, off int64) error
	// Zero makes [off, off+n) read as zeros, deallocating where it can.
	Zero(ctx context.Context, off, n int64) error
	// Extents reports allocation from off. The answer starts at off, is
	// contiguous, and covers at least one byte and at most n.
	Extents(ctx context.Context, off, n int64) ([]Extent, error)
	// Flush makes every completed write durable.
	Flush(ctx context.Context) error
	// IsZero says whether the whole volume is known to read as zeros (a
	// target file this open created).
	IsZero() bool
	// MaxRequest is the largest single read or write the endpoint takes.
	MaxRequest() int
	// Identity names the underlying object, so that a copy can refuse to
	// copy a volume onto itself.
	Identity() string
	Close() error
}

// DirtyTracker is a volume that can list the ranges a dirty bitmap marks as
// changed.
type DirtyTracker interface {
	// Dirty reports the changed ranges in [off, off+n) and the offset up
	// to which the answer is complete (at least off+1).
	Dirty(ctx context.Context, bitmap string, off, n int64) ([]Range, int64, error)
}

// Remover is implemented by a volume whose open created it (a new target
// file). RemoveCreated deletes exactly what was created, and nothing if its
// name now holds something else (ErrReplaced).
type Remover interface {
	RemoveCreated() error
}

// RemoveCreated removes v if its open created it; otherwise it does nothing.
func RemoveCreated(v Volume) error {
	if r, ok := v.(Remover); ok {
		return r.RemoveCreated()
	}
	return nil
}

// ErrOutsideRoots is returned for a file path that lies outside the
// configured roots, or that reaches outside them through a symlink.
var ErrOutsideRoots = errors.New("path is outside the allowed roots")

// ErrInvalid marks a URI or option that cannot be used.
var ErrInvalid = errors.New("invalid volume")

// Options says how to open a volume.
type Options struct {
	// Confined says the endpoints come from a request (a task received
	// through the API), not from the operator's own shell: file endpoints
	// must then lie under Roots, nbd+unix sockets under NBDSocketDirs, and
	// nbd:// hosts must match NBDAllowHosts; with any of them empty, that
	// kind of endpoint is refused (ErrOutsideRoots, ErrNotAllowed).
	Confined bool
	// Roots confines file endpoints. Empty and not Confined means no
	// confinement (the local command, which acts with its user's rights).
	Roots []string
	// NBDSocketDirs are the directories nbd+unix sockets may lie in
	// (with Confined).
	NBDSocketDirs []string
	// NBDAllowHosts are the host names, addresses and CIDR prefixes
	// nbd:// endpoints may name (with Confined); see ParseAllowHosts.
	NBDAllowHosts []string
	// Write opens for writing.
	Write bool
	// CreateSize, when positive with Write, creates a missing target file
	// of this size. The new file reads as zeros.
	CreateSize int64
	// NBD tunes NBD endpoints.
	NBD nbd.Options
}

// Open opens the volume a URI names: file:///path (a regular file or a block
// device), nbd://host:port/export, or nbd+unix:///export?socket=PATH.
func Open(ctx context.Context, uri string, opts Options) (Volume, error) {
	switch {
	case strings.HasPrefix(uri, "file://"):
		path := strings.TrimPrefix(uri, "file://")
		if !strings.HasPrefix(path, "/") {
			return nil, fmt.Errorf("%w: %q: a file URI needs an absolute path (file:///path)", ErrInvalid, uri)
		}
		return openFile(path, opts)
	case strings.HasPrefix(uri, "nbd://"), strings.HasPrefix(uri, "nbd+unix://"):
		t, err := nbd.ParseURI(uri)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		return openNBD(ctx, t, opts)
	default:
		return nil, fmt.Errorf("%w: %q: want file:///PATH, nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH", ErrInvalid, uri)
	}
}
