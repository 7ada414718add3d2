// Package volcopy copies a volume onto another: only allocated data is read,
// all-zero blocks become holes, and work is done in extents that end with a
// flush and a checkpoint, so that a copy cut off anywhere resumes by
// re-copying at most one extent.
//
// Four modes: a full copy; an incremental copy against a base that the
// target already holds (blocks equal to the base are not written); an
// incremental copy through an NBD dirty bitmap (only changed extents are
// read); and an incremental copy against the block manifest the last copy
// left beside the target (only the source is read; blocks whose hash
// changed are written).
//
// How data moves (copy_file_range, the page cache with write-behind, direct
// I/O, NBD) is chosen from what the endpoints are: see choosePlan.
package volcopy

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"strings"
	"time"

	"github.com/taskd/taskd/internal/volume"
)

// Mode is the kind of copy.
type Mode string

const (
	ModeFull  Mode = "full"
	ModeBase  Mode = "base"
	ModeDirty Mode = "dirty-bitmap"
	// ModeManifest compares the source with the target's block manifest
	// (or, where that cannot be trusted, with the target itself).
	ModeManifest Mode = "manifest"
)

// ErrInvalid marks options or volumes a copy cannot run with. Nothing has
// been written when it is returned.
var ErrInvalid = errors.New("invalid copy")

// ErrVerify is returned when --verify finds a target extent that differs
// from its source.
var ErrVerify = errors.New("verify failed")

// Options tunes a copy. The zero value of a field means its default.
type Options struct {
	// Base is the volume the target already holds (ModeBase).
	Base volume.Volume
	// DirtyBitmap names the source's dirty bitmap (ModeDirty).
	DirtyBitmap string
	// TargetIsZero promises the target reads as zeros, so holes need no
	// zeroing. A target file the copy created is known to be zero.
	TargetIsZero bool
	// Workers is the number of requests in flight (default: the plan's,
	// see choosePlan).
	Workers int
	// RequestSize is the size of one read (default: the plan's).
	RequestSize int
	// ExtentSize bounds the work a crash can cost (default 256 MiB): the
	// copy checkpoints every half extent and writes at most one extent
	// past its last checkpoint.
	ExtentSize int64
	// BlockSize is the granularity of zero detection and base comparison
	// (default 4 KiB).
	BlockSize int
	// Verify hashes each extent of source and target after it is flushed.
	Verify bool
	// Manifest keeps a hash of every block of a regular file target
	// beside it (".NAME.taskd-manifest"). A copy onto a target whose
	// manifest is valid reads only the source and writes the blocks whose
	// hash changed; a missing, corrupt or mismatched manifest makes it
	// compare with the target's content instead. Excludes Base and
	// DirtyBitmap.
	Manifest bool
	// ZeroDetect says which data is scanned for zero blocks (default
	// ZeroAuto).
	ZeroDetect ZeroDetect
	// DirectIO overrides the plan's choice of direct I/O for file
	// endpoints (default DirectAuto).
	DirectIO DirectIO
	// Rate limits the bytes read per second; 0 is unlimited. SetRate
	// changes it while the copy runs.
	Rate int64
	// Resume is a checkpoint from an earlier run of the same copy.
	Resume []byte
	// OnCheckpoint receives a checkpoint after each extent is durable. An
	// error stops the copy.
	OnCheckpoint func(checkpoint []byte) error
	// Memory, when set, is the node's pool of copy buffer memory: the
	// copy takes BufferMemory from it before it allocates, and waits
	// (honouring its context) while other copies hold it.
	Memory *MemoryPool
	// MayWrite, when set, is asked before every write or zeroing of the
	// target; an error stops the copy with that error. The copy task uses
	// it to stop writing the moment its attempt is no longer active.
	MayWrite func() error
	// OnProgress is called every ProgressInterval and once at the end.
	OnProgress       func(Progress)
	ProgressInterval time.Duration
	Logger           *slog.Logger
}

const (
	defaultExtent    = 256 << 20
	defaultBlock     = 4 << 10
	defaultProgressT = time.Second

	maxWorkers     = 1024
	maxRequestSize = 64 << 20 // the largest request any endpoint takes
)

// Progress is a snapshot of a running copy.
type Progress struct {
	// Logical bytes: offsets walked, whatever they held.
	LogicalDone, LogicalTotal int64
	// Allocated bytes: data the copy has to read (allocated, dirty, or
	// allocated in source or base).
	AllocatedDone, AllocatedTotal int64
	BytesRead, BytesWritten       int64
	BytesZeroed                   int64
	// Rate is allocated bytes per second over the last interval.
	Rate float64
	// ETA is the time left at Rate; 0 when unknown (no rate measured, a
	// stalled copy, or more than a century).
	ETA time.Duration
	// Checkpoint units (half extents) done of the total, and the target
	// flushes this run made (a unit that changed nothing needs none).
	ExtentsDone, ExtentsTotal int64
	Flushes                   int64
	// ExtentsVerified: units this run hashed on source and target and
	// found equal (Verify). A resumed run does not count units done before
	// its checkpoint.
	ExtentsVerified int64
}

// checkpoint is the opaque state between runs. Only this package reads it.
type checkpoint struct {
	Version int    `json:"v"`
	Mode    Mode   `json:"mode"`
	Size    int64  `json:"size"`
	Extent  int64  `json:"extent"`
	Bitmap  string `json:"bitmap,omitempty"`
	// Manifest is the id of the manifest this run writes (its temporary
	// file carries it); Against the id of the manifest it compares with
	// ("" when it compares with the target itself). A resumed run trusts
	// neither (see openManifests); they mark the checkpoint of a manifest
	// copy, which is not resumed without --manifest.
	Manifest  string `json:"manifest,omitempty"`
	Against   string `json:"against,omitempty"`
	Next      int64  `json:"next"`
	Read      int64  `json:"read"`
	Written   int64  `json:"written"`
	Zeroed    int64  `json:"zeroed"`
	AllocDone int64  `json:"alloc_done"`
}

func (c checkpoint) encode() []byte {
	b, _ := json.Marshal(c)
	return b
}

func decodeCheckpoint(b []byte) (checkpoint, error) {
	var c checkpoint
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("%w: checkpoint is not readable: %v", ErrInvalid, err)
	}
	if c.Version != 1 {
		return c, fmt.Errorf("%w: checkpoint version %d is not supported", ErrInvalid, c.Version)
	}
	return c, nil
}

// CheckpointInfo is what a checkpoint says about the copy it belongs to.
type CheckpointInfo struct {
	Mode Mode
	// Next is the offset the copy resumes at; everything before it is
	// durable on the target.
	Next int64
	Size int64
	// Counters up to Next.
	BytesRead, BytesWritten, BytesZeroed int64
}

// DescribeCheckpoint reads a checkpoint for display.
func DescribeCheckpoint(b []byte) (CheckpointInfo, error) {
	c, err := decodeCheckpoint(b)
	if err != nil {
		return CheckpointInfo{}, err
	}
	return CheckpointInfo{Mode: c.Mode, Next: c.Next, Size: c.Size,
		BytesRead: c.Read, BytesWritten: c.Written, BytesZeroed: c.Zeroed}, nil
}

// ParseBytes reads a byte count: a decimal number with an optional unit,
// K, M, G or T (powers of 1024, optionally followed by i and B: "100M",
// "1.5GiB", "64KiB") or B, in any case. Anything else is an error: an
// unknown suffix ("10Q"), a sign, an exponent ("1e3"), an empty string, a
// count above 2^62 bytes, or a fraction that rounds to 0 bytes ("0.1", which
// as a rate would silently mean unlimited). Fractions of a byte are
// dropped.
func ParseBytes(s string) (int64, error) {
	in := s
	s = strings.TrimSpace(s)
	digits := len(s) - len(strings.TrimLeft(s, "0123456789."))
	num, unit := s[:digits], strings.ToUpper(strings.TrimSpace(s[digits:]))
	whole, frac, dot := strings.Cut(num, ".")
	if whole == "" || strings.Contains(frac, ".") || dot && frac == "" {
		return 0, fmt.Errorf("%q is not a byte count: use a number with K, M, G or T (powers of 1024), e.g. 100M", in)
	}
	mult, ok := byteUnits[unit]
	if !ok {
		return 0, fmt.Errorf("%q: unknown unit %q: use K, M, G or T (powers of 1024), e.g. 100M", in, strings.TrimSpace(s[digits:]))
	}
	// Exact arithmetic: whole*mult + frac*mult/10^len(frac), rounded down.
	v, ok := new(big.Rat).SetString(num)
	if !ok {
		return 0, fmt.Errorf("%q is not a byte count: use a number with K, M, G or T (powers of 1024), e.g. 100M", in)
	}
	v.Mul(v, new(big.Rat).SetInt64(mult))
	n := new(big.Int).Quo(v.Num(), v.Denom())
	if n.Cmp(big.NewInt(maxBytes)) > 0 {
		return 0, fmt.Errorf("%q is too large: at most %d bytes (4 EiB)", in, int64(maxBytes))
	}
	if n.Sign() == 0 && v.Sign() != 0 {
		return 0, fmt.Errorf("%q is less than one byte", in)
	}
	return n.Int64(), nil
}

// maxBytes bounds ParseBytes: far above any volume or rate, and far from
// overflowing the arithmetic done on counts.
const maxBytes = 1 << 62

var byteUnits = func() map[string]int64 {
	m := map[string]int64{"": 1, "B": 1}
	for i, u := range []string{"K", "M", "G", "T"} {
		mult := int64(1) << (10 * (i + 1))
		for _, suffix := range []string{"", "B", "I", "IB"} {
			m[u+suffix] = mult
		}
	}
	return m
}()
