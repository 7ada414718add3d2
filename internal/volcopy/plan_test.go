package volcopy

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/taskd/taskd/internal/volume"
)

// TestChoosePlan pins which I/O path each pair of endpoints takes, so that
// a change of policy shows here and not only in the benchmark.
func TestChoosePlan(t *testing.T) {
	file := func(dev uint64) endpoint { return endpoint{kind: epFile, dev: dev} }
	blockDev := endpoint{kind: epBlock}
	nbdExp := endpoint{kind: epNBD}
	buffered := volume.IO{WriteBehind: writeBehind, DropCache: true}
	direct := volume.IO{Direct: true}
	announced := buffered // a sparse source file: its reads announced, no kernel readahead
	announced.Prefetch = true
	for _, tc := range []struct {
		name             string
		in               planInput
		path             ioPath
		zero             bool
		srcIO, dstIO     volume.IO
		workers, request int
	}{
		{name: "sparse file onto a file of the same file system: read, detect zeros, page cache",
			in:   planInput{src: file(1), dst: file(1), mode: ModeFull, srcSparse: true},
			path: pathBuffered, zero: true, srcIO: announced, dstIO: buffered, workers: bufferedWorkers, request: bufferedRequest},
		{name: "sparse file onto another file system: the same",
			in:   planInput{src: file(1), dst: file(2), mode: ModeFull, srcSparse: true},
			path: pathBuffered, zero: true, srcIO: announced, dstIO: buffered, workers: bufferedWorkers, request: bufferedRequest},
		{name: "file without holes onto the same file system: copy_file_range, as allocated",
			in:   planInput{src: file(1), dst: file(1), mode: ModeFull},
			path: pathCopyRange, zero: false, srcIO: buffered, dstIO: buffered, workers: rangeWorkers, request: rangeRequest},
		{name: "file without holes onto another file system: read and write, as allocated",
			in:   planInput{src: file(1), dst: file(2), mode: ModeFull},
			path: pathBuffered, zero: false, srcIO: buffered, dstIO: buffered, workers: bufferedWorkers, request: bufferedRequest},
		{name: "zero detection asked for: no copy_file_range",
			in:   planInput{src: file(1), dst: file(1), mode: ModeFull, zero: ZeroAlways},
			path: pathBuffered, zero: true, srcIO: buffered, dstIO: buffered, workers: bufferedWorkers, request: bufferedRequest},
		{name: "zero detection refused on a sparse source: copy_file_range of the allocated runs",
			in:   planInput{src: file(1), dst: file(1), mode: ModeFull, srcSparse: true, zero: ZeroNever},
			path: pathCopyRange, zero: false, srcIO: buffered, dstIO: buffered, workers: rangeWorkers, request: rangeRequest},
		{name: "a base compare must read the data",
			in:   planInput{src: file(1), dst: file(1), mode: ModeBase},
			path: pathBuffered, zero: false, srcIO: buffered, dstIO: buffered, workers: bufferedWorkers, request: bufferedRequest},
		{name: "a manifest must hash the data, and detects zeros",
			in:   planInput{src: file(1), dst: file(1), mode: ModeFull, hashing: true},
			path: pathBuffered, zero: true, srcIO: buffered, dstIO: buffered, workers: bufferedWorkers, request: bufferedRequest},
		{name: "manifest compare",
			in:   planInput{src: file(1), dst: file(1), mode: ModeManifest, hashing: true, srcSparse: true},
			path: pathBuffered, zero: true, srcIO: announced, dstIO: buffered, workers: bufferedWorkers, request: bufferedRequest},
		{name: "block device source: direct I/O",
			in:   planInput{src: blockDev, dst: file(1), mode: ModeFull},
			path: pathDirect, zero: true, srcIO: direct, dstIO: direct, workers: directWorkers, request: directRequest},
		{name: "block device target: direct I/O",
			in:   planInput{src: file(1), dst: blockDev, mode: ModeFull, srcSparse: true},
			path: pathDirect, zero: true, srcIO: direct, dstIO: direct, workers: directWorkers, request: directRequest},
		{name: "block device with --direct-io off: page cache",
			in:   planInput{src: blockDev, dst: blockDev, mode: ModeFull, direct: DirectOff},
			path: pathBuffered, zero: true, srcIO: buffered, dstIO: buffered, workers: bufferedWorkers, request: bufferedRequest},
		{name: "files with --direct-io on",
			in:   planInput{src: file(1), dst: file(1), mode: ModeFull, srcSparse: true, direct: DirectOn},
			path: pathDirect, zero: true, srcIO: direct, dstIO: direct, workers: directWorkers, request: directRequest},
		{name: "NBD source onto a file: NBD queue depth, the file through the page cache",
			in:   planInput{src: nbdExp, dst: file(1), mode: ModeDirty},
			path: pathNBD, zero: true, dstIO: buffered, workers: nbdWorkers, request: nbdRequest},
		{name: "file onto NBD",
			in:   planInput{src: file(1), dst: nbdExp, mode: ModeFull},
			path: pathNBD, zero: false, srcIO: buffered, workers: nbdWorkers, request: nbdRequest},
		{name: "sparse file onto NBD: its reads announced",
			in:   planInput{src: file(1), dst: nbdExp, mode: ModeFull, srcSparse: true},
			path: pathNBD, zero: true, srcIO: announced, workers: nbdWorkers, request: nbdRequest},
		{name: "NBD onto a block device: the device direct",
			in:   planInput{src: nbdExp, dst: blockDev, mode: ModeFull},
			path: pathNBD, zero: true, dstIO: direct, workers: nbdWorkers, request: nbdRequest},
		{name: "NBD to NBD",
			in:   planInput{src: nbdExp, dst: nbdExp, mode: ModeFull},
			path: pathNBD, zero: true, workers: nbdWorkers, request: nbdRequest},
		{name: "unknown volumes (wrapped in tests): read and write",
			in:   planInput{mode: ModeFull},
			path: pathBuffered, zero: true, workers: bufferedWorkers, request: bufferedRequest},
		{name: "the caller's workers and request size win",
			in:   planInput{src: file(1), dst: file(1), mode: ModeFull, workers: 3, request: 64 << 10},
			path: pathCopyRange, zero: false, srcIO: buffered, dstIO: buffered, workers: 3, request: 64 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := choosePlan(tc.in)
			if p.path != tc.path || p.zeroDetect != tc.zero || p.srcIO != tc.srcIO || p.dstIO != tc.dstIO ||
				p.workers != tc.workers || p.request != tc.request {
				t.Fatalf("plan = %+v\nwant path %s, zero detection %v, source %+v, target %+v, %d workers × %d",
					p, tc.path, tc.zero, tc.srcIO, tc.dstIO, tc.workers, tc.request)
			}
			if p.why == "" {
				t.Fatal("a plan without a reason")
			}
			// Reads span short gaps, shorter on an NBD source, and none
			// on the kernel copy, whose requests carry no ranges to keep.
			want := int64(spanGapFile)
			switch {
			case p.path == pathCopyRange:
				want = -1
			case tc.in.src.kind == epNBD:
				want = spanGapNBD
			}
			if p.spanGap != want {
				t.Fatalf("path %s from a %v source spans gaps of %d bytes, want %d", p.path, tc.in.src.kind, p.spanGap, want)
			}
		})
	}
}

// TestPlanFromRealFiles: New describes real files the way the table
// above assumes (a hole makes a file sparse; one file system is one dev).
func TestPlanFromRealFiles(t *testing.T) {
	dir := t.TempDir()
	full := filepath.Join(dir, "full")
	if err := os.WriteFile(full, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	sparse := filepath.Join(dir, "sparse")
	f, err := os.Create(sparse)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{1}, 512<<10); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	ctx := context.Background()
	open := func(p string, write bool) volume.Volume {
		t.Helper()
		o := volume.Options{Write: write}
		if write {
			o.CreateSize = 1 << 20
		}
		v, err := volume.Open(ctx, "file://"+p, o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { v.Close() })
		return v
	}
	for _, tc := range []struct {
		src, dst string
		opts     Options
		path     ioPath
	}{
		{src: full, dst: filepath.Join(dir, "t1"), path: pathCopyRange},
		{src: sparse, dst: filepath.Join(dir, "t2"), path: pathBuffered},
		{src: full, dst: filepath.Join(dir, "t3"), opts: Options{ZeroDetect: ZeroAlways}, path: pathBuffered},
		{src: full, dst: filepath.Join(dir, "t4"), opts: Options{Manifest: true}, path: pathBuffered},
		{src: sparse, dst: "/dev/shm/taskd-plan-" + filepath.Base(dir), opts: Options{ZeroDetect: ZeroNever}, path: pathBuffered},
	} {
		dst := open(tc.dst, true)
		if filepath.Dir(tc.dst) == "/dev/shm" {
			t.Cleanup(func() { os.Remove(tc.dst) })
		}
		src := open(tc.src, false)
		c, err := New(src, dst, tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		if tc.path == pathBuffered && tc.opts.ZeroDetect == ZeroNever &&
			src.(volume.File).Info().Dev == dst.(volume.File).Info().Dev {
			tc.path = pathCopyRange // the temporary directory is on tmpfs too
		}
		if c.plan.path != tc.path {
			t.Errorf("%s onto %s (%+v): path %s, want %s (%s)", filepath.Base(tc.src), tc.dst, tc.opts, c.plan.path, tc.path, c.plan.why)
		}
	}
}

// TestQueueOf: the kernel copy's 8 MiB chunks go with its single default
// worker only; a caller's own worker count takes 1 MiB requests, so that
// --workers alone never needs more buffer memory than on the other paths
// (a refused copy_file_range falls back to buffers of the request size).
// CheckLimits sizes every path as choosePlan does.
func TestQueueOf(t *testing.T) {
	for _, tc := range []struct {
		path                 ioPath
		workers, request     int
		wantWorkers, wantReq int
	}{
		{pathCopyRange, 0, 0, 1, 8 << 20},
		{pathCopyRange, 64, 0, 64, 1 << 20},
		{pathCopyRange, 0, 4 << 20, 1, 4 << 20},
		{pathBuffered, 0, 0, bufferedWorkers, bufferedRequest},
		{pathNBD, 0, 0, nbdWorkers, nbdRequest},
		{pathNBD, 2, 64 << 10, 2, 64 << 10},
	} {
		w, r := queueOf(tc.path, tc.workers, tc.request)
		if w != tc.wantWorkers || r != tc.wantReq {
			t.Errorf("queueOf(%s, %d, %d) = %d × %d, want %d × %d", tc.path, tc.workers, tc.request, w, r, tc.wantWorkers, tc.wantReq)
		}
	}
	// 64 workers of the default request fit (64 MiB); with 8 MiB they
	// would not (512 MiB), and an explicit 8 MiB is refused.
	if err := (Spec{Workers: 64}).CheckLimits(); err != nil {
		t.Errorf("64 workers, default request: %v", err)
	}
	if err := (Spec{}).CheckLimits(); err != nil {
		t.Errorf("defaults: %v", err)
	}
	if err := (Spec{Workers: 64, RequestSize: 8 << 20}).CheckLimits(); err == nil {
		t.Error("64 workers × 8 MiB passed CheckLimits")
	}
}
