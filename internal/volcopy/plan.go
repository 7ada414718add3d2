package volcopy

import (
	"fmt"
	"strings"

	"github.com/taskd/taskd/internal/volume"
)

// DirectIO says whether file endpoints bypass the page cache.
type DirectIO string

const (
	// DirectAuto lets the plan decide from what the endpoints are.
	DirectAuto DirectIO = "auto"
	DirectOn   DirectIO = "on"
	DirectOff  DirectIO = "off"
)

// ZeroDetect says which data the copy scans for all-zero blocks (which it
// then turns into holes instead of writing them).
type ZeroDetect string

const (
	// ZeroAuto scans unless the source is a regular file without holes:
	// a fully allocated file is copied as allocated, as cp does, which
	// lets the kernel copy it (copy_file_range) without the data passing
	// through the copy.
	ZeroAuto ZeroDetect = "auto"
	// ZeroAlways scans every block read.
	ZeroAlways ZeroDetect = "always"
	// ZeroNever copies allocated data as it is (holes stay holes).
	ZeroNever ZeroDetect = "never"
)

// ParseDirectIO reads --direct-io: auto, on/true, off/false.
func ParseDirectIO(s string) (DirectIO, error) {
	switch strings.ToLower(s) {
	case "", "auto":
		return DirectAuto, nil
	case "on", "true", "1", "yes":
		return DirectOn, nil
	case "off", "false", "0", "no":
		return DirectOff, nil
	}
	return "", fmt.Errorf("%w: direct I/O %q: want auto, on or off", ErrInvalid, s)
}

// ParseZeroDetect reads --zero-detect: auto, always, never.
func ParseZeroDetect(s string) (ZeroDetect, error) {
	switch ZeroDetect(strings.ToLower(s)) {
	case "", ZeroAuto:
		return ZeroAuto, nil
	case ZeroAlways:
		return ZeroAlways, nil
	case ZeroNever:
		return ZeroNever, nil
	}
	return "", fmt.Errorf("%w: zero detection %q: want auto, always or never", ErrInvalid, s)
}

// ioPath is how a copy moves allocated data.
type ioPath string

const (
	// pathCopyRange: copy_file_range(2), inside the kernel.
	pathCopyRange ioPath = "copy_file_range"
	// pathBuffered: read and write through the page cache, with
	// write-behind and the cache dropped behind the copy.
	pathBuffered ioPath = "buffered"
	// pathDirect: O_DIRECT reads and large writes.
	pathDirect ioPath = "direct"
	// pathNBD: an endpoint is an NBD export; many requests in flight.
	pathNBD ioPath = "nbd"
)

type endpointKind int

const (
	epOther endpointKind = iota // a volume the plan knows nothing of (tests)
	epFile                      // a regular file
	epBlock                     // a block device
	epNBD                       // an NBD export
)

func (k endpointKind) String() string {
	return [...]string{"volume", "file", "block device", "nbd"}[k]
}

// endpoint is what the plan needs to know of a volume.
type endpoint struct {
	kind endpointKind
	dev  uint64 // file system of a regular file
}

func describe(v volume.Volume) endpoint {
	if v == nil {
		return endpoint{}
	}
	if f, ok := v.(volume.File); ok {
		info := f.Info()
		if info.Block {
			return endpoint{kind: epBlock}
		}
		return endpoint{kind: epFile, dev: info.Dev}
	}
	if isNBD(v) {
		return endpoint{kind: epNBD}
	}
	return endpoint{}
}

// sparseFile says whether a regular file has a hole (SEEK_HOLE before its
// end); an NBD export or a device counts as sparse (zero detection on).
func sparseFile(v volume.Volume, ep endpoint) bool {
	if ep.kind != epFile {
		return true
	}
	f, ok := v.(volume.File)
	if !ok {
		return true
	}
	// Local and non-blocking: one SEEK_HOLE (a walk of every extent
	// costs thousands of seeks on a fragmented file).
	hole, err := f.HasHole()
	return err != nil || hole
}

// planInput is everything the choice of I/O path depends on.
type planInput struct {
	src, dst  endpoint
	mode      Mode
	srcSparse bool // the source has holes
	hashing   bool // the copy keeps a block manifest: it must see the data
	zero      ZeroDetect
	direct    DirectIO
	// Workers and request size the caller set (0: the plan's).
	workers, request int
}

// plan is how a copy runs.
type plan struct {
	path       ioPath
	zeroDetect bool
	workers    int
	request    int
	srcIO      volume.IO // for file endpoints (source and base)
	dstIO      volume.IO
	// spanGap is the longest gap between two data ranges that one read
	// spans (see spanner); negative on the kernel copy, which reads
	// nothing of ours.
	spanGap int64
	why     string
}

// Defaults of each path (docs/volume-copy.md#how-a-copy-moves-data says why, and
// docs/benchmarks/2026-11-27-copy-engine-checkpoints.txt holds the latest measurement).
const (
	// The page cache path: few large requests. The kernel's readahead
	// and writeback, not a deep queue of ours, keep the disk busy.
	bufferedWorkers = 4
	bufferedRequest = 1 << 20
	// O_DIRECT: the queue depth is ours to keep up.
	directWorkers = 4
	directRequest = 1 << 20
	// copy_file_range: one caller in large chunks (no buffer of ours
	// holds them). The kernel copies at memory speed and write-behind
	// waits for the disk, so a second caller adds no bandwidth; it only
	// contends for the target's inode lock (ext4 takes it for every
	// buffered write), which perf showed spinning.
	rangeWorkers = 1
	rangeRequest = 8 << 20
	// NBD: many requests in flight over several connections. Requests
	// of 512 KiB instead of 1 MiB: the NBD copies took 3-23 % less wall
	// time and less CPU in one alternating series (docs/benchmarks/
	// 2026-11-27-copy-nbd-request.txt); nbdcopy uses 256 KiB.
	nbdWorkers = 32
	nbdRequest = 512 << 10
	// writeBehind bounds the dirty data a flush may find.
	writeBehind = 32 << 20
	// One request per small extent costs more than reading a gap of up
	// to this many bytes to join two of them: a file's hole is read as a
	// copy of zeros in memory, an NBD source's gap crosses the wire
	// (measured on 10k scattered 4 KiB blocks: docs/volume-copy.md#small-extents).
	spanGapFile = 128 << 10
	spanGapNBD  = 32 << 10
)

// queueOf is the queue a path runs with: its defaults, overridden by the
// workers and request size the caller set (0: unset). The kernel copy's
// large chunks are for its single default caller: with a worker count of
// the caller's own, it takes the 1 MiB requests of the other paths, so that
// --workers alone never needs more buffer memory (a refused copy_file_range
// falls back to buffers of the request size).
func queueOf(path ioPath, workers, request int) (int, int) {
	w, r := bufferedWorkers, bufferedRequest
	switch path {
	case pathDirect:
		w, r = directWorkers, directRequest
	case pathCopyRange:
		w, r = rangeWorkers, rangeRequest
		if workers > 0 {
			r = bufferedRequest
		}
	case pathNBD:
		w, r = nbdWorkers, nbdRequest
	}
	if workers > 0 {
		w = workers
	}
	if request > 0 {
		r = request
	}
	return w, r
}

// choosePlan picks the I/O path. It is pure: the tests of plan_test.go pin
// which path each kind of endpoint pair takes.
func choosePlan(in planInput) plan {
	p := plan{zeroDetect: true}
	var why []string
	switch in.zero {
	case ZeroNever:
		p.zeroDetect = false
		why = append(why, "zero detection off (--zero-detect never)")
	case ZeroAlways:
		why = append(why, "zero detection on (--zero-detect always)")
	default:
		if in.src.kind == epFile && !in.srcSparse {
			p.zeroDetect = false
			why = append(why, "source file has no holes: copied as allocated")
		} else {
			why = append(why, "zero detection on")
		}
	}
	if in.hashing && !p.zeroDetect {
		// The manifest needs every block's content anyway; a zero block
		// costs nothing more to detect once it is read.
		p.zeroDetect = true
		why = append(why, "zero detection on (manifest reads the data)")
	}
	local := func(k endpointKind) bool { return k == epFile || k == epBlock }
	switch {
	case in.src.kind == epNBD || in.dst.kind == epNBD:
		p.path, p.workers, p.request = pathNBD, nbdWorkers, nbdRequest
		why = append(why, "an endpoint is NBD")
	case !p.zeroDetect && in.mode == ModeFull && !in.hashing &&
		in.src.kind == epFile && in.dst.kind == epFile && in.src.dev == in.dst.dev:
		p.path, p.workers, p.request = pathCopyRange, rangeWorkers, rangeRequest
		why = append(why, "both files on one file system")
	case in.direct == DirectOn || in.direct != DirectOff && (in.src.kind == epBlock || in.dst.kind == epBlock):
		p.path, p.workers, p.request = pathDirect, directWorkers, directRequest
		if in.direct == DirectOn {
			why = append(why, "--direct-io on")
		} else {
			why = append(why, "a block device: direct I/O keeps it out of the page cache")
		}
	default:
		p.path, p.workers, p.request = pathBuffered, bufferedWorkers, bufferedRequest
		why = append(why, "files: page cache with readahead and write-behind")
	}
	if in.direct == DirectOff && p.path == pathDirect {
		p.path = pathBuffered
	}
	// How file endpoints move data on each path. A file endpoint of an
	// NBD copy follows the local rule for its own kind.
	fileIO := func(k endpointKind) volume.IO {
		direct := in.direct == DirectOn || in.direct != DirectOff && k == epBlock
		if p.path == pathDirect {
			direct = true
		}
		if direct {
			return volume.IO{Direct: true}
		}
		return volume.IO{WriteBehind: writeBehind, DropCache: true}
	}
	if local(in.src.kind) {
		p.srcIO = fileIO(in.src.kind)
		// A sparse source file read through the page cache: the copy
		// announces the ranges it reads (the walk's data, and the small
		// holes a span crosses) instead of the kernel's readahead,
		// which zero-fills the holes around them too.
		p.srcIO.Prefetch = in.src.kind == epFile && in.srcSparse && !p.srcIO.Direct && p.path != pathCopyRange
		if p.srcIO.Prefetch {
			why = append(why, "sparse source: reads announced, no kernel readahead into its holes")
		}
	}
	if local(in.dst.kind) {
		p.dstIO = fileIO(in.dst.kind)
	}
	p.workers, p.request = queueOf(p.path, in.workers, in.request)
	switch {
	case p.path == pathCopyRange:
		p.spanGap = -1
	case in.src.kind == epNBD:
		p.spanGap = spanGapNBD
	default:
		p.spanGap = spanGapFile
	}
	p.why = strings.Join(why, "; ")
	return p
}
