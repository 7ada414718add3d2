package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/taskd/taskd/internal/harness"
)

// copyBins are the binaries the sets run: taskd-copy, the one-shot copy
// operators run (static, without the daemon), and taskd, whose `volume
// copy` is the same command after the daemon's start-up.
type copyBins struct{ copy, taskd string }

// makeSet lays out one set's images and tools. The first tool is the one
// every ratio line is about; rows marked ours are compared with every
// other tool of their set too.
func makeSet(name string, gen imageGen, dir string, img func(string) string, bin copyBins, granularity int) (*copySet, error) {
	ensure := func(kind string) (string, error) {
		p := img(kind)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		return p, gen.write(p, kind)
	}
	dst := filepath.Join(dir, "target-"+name)
	manifest := filepath.Join(dir, ".target-"+name+".taskd-manifest")
	checkpoint := filepath.Join(dir, "checkpoint-"+name)
	fresh := func() error { return removeFiles(dst, manifest, checkpoint) }
	local := func(src string) []*copyTool {
		return []*copyTool{
			{name: "taskd-copy", ours: true, argv: []string{bin.copy, src, dst, "--progress", "none"}, target: dst, reset: fresh},
			// With a checkpoint file, as a copy task always runs: a
			// flush and a checkpoint every half extent (128 MiB). The
			// row above keeps no checkpoint and flushes once, at its end.
			{name: "taskd-copy --checkpoint", ours: true, argv: []string{bin.copy, src, dst, "--progress", "none", "--checkpoint", checkpoint}, target: dst, reset: fresh},
			// The same command inside the daemon's binary: its start-up
			// (etcd, gRPC, Prometheus, the API) comes on top.
			{name: "taskd volume copy", ours: true, argv: []string{bin.taskd, "volume", "copy", src, dst, "--progress", "none"}, target: dst, reset: fresh},
			{name: "qemu-img convert -W -m 16", argv: []string{"qemu-img", "convert", "-W", "-m", "16", "-f", "raw", "-O", "raw", src, dst}, target: dst, reset: fresh},
			{name: "cp", argv: []string{"cp", src, dst}, target: dst, reset: fresh},
			{name: "dd conv=sparse bs=1M", argv: []string{"dd", "if=" + src, "of=" + dst, "bs=1M", "conv=sparse", "status=none"}, target: dst, reset: fresh},
		}
	}
	switch name {
	case imgSparse, imgHalf, imgRandom:
		src, err := ensure(name)
		if err != nil {
			return nil, err
		}
		incr, err := incrementalTools(gen, src, dst, bin.copy, fresh)
		if err != nil {
			return nil, err
		}
		return &copySet{name: name, source: src, size: gen.size, tools: append(local(src), incr...)}, nil
	case imgSmall:
		// One 4 KiB file: what a copy costs besides moving data
		// (start-up, opening, flushing), from a cold page cache.
		src := img(imgSmall)
		if _, err := os.Stat(src); err != nil {
			if err := (imageGen{seed: gen.seed, size: smallSize}).write(src, imgRandom); err != nil {
				return nil, err
			}
		}
		return &copySet{name: "file4k (one 4 KiB file of random data: start-up)", source: src, size: smallSize, tools: local(src)}, nil
	case "incremental":
		base, err := ensure(imgBase)
		if err != nil {
			return nil, err
		}
		src := img(imgIncr)
		if _, err := os.Stat(src); err != nil {
			if err := gen.writeIncremental(base, src, 10000); err != nil {
				return nil, err
			}
		}
		fromBase := func() error {
			if err := fresh(); err != nil {
				return err
			}
			return copyFileSparse(base, dst)
		}
		// The target holds the base and the manifest the copy of the
		// base left beside it (made untimed by taskd itself).
		fromBaseWithManifest := copyWithManifest(bin.copy, base, dst, fresh)
		return &copySet{name: "incremental (base + 10k random 4 KiB writes)", source: src, size: gen.size, tools: []*copyTool{
			{name: "taskd-copy --manifest", argv: []string{bin.copy, src, dst, "--manifest", "--progress", "none"}, target: dst, reset: fromBaseWithManifest},
			{name: "taskd-copy --base", argv: []string{bin.copy, src, dst, "--base", base, "--progress", "none"}, target: dst, reset: fromBase},
			{name: "rsync --inplace --no-whole-file", argv: []string{"rsync", "--inplace", "--no-whole-file", src, dst}, target: dst, reset: fromBase},
			{name: "taskd-copy full copy", argv: []string{bin.copy, src, dst, "--progress", "none"}, target: dst, reset: fresh, fullCopy: true},
		}}, nil
	case "dirty-bitmap":
		base, err := ensure(imgBase)
		if err != nil {
			return nil, err
		}
		disk, want, err := gen.writeBitmapImage(base, dir, 10000, granularity)
		if err != nil {
			return nil, err
		}
		fromBase := func() error {
			if err := fresh(); err != nil {
				return err
			}
			return copyFileSparse(base, dst)
		}
		serve := []nbdExport{{disk, []string{"-f", "qcow2", "--read-only", "--shared=4", "--bitmap=b0"}}}
		return &copySet{name: fmt.Sprintf("dirty bitmap (qcow2 base + 10k random 4 KiB writes, bitmap granularity %d, served by qemu-nbd)", granularity), source: want, size: gen.size, tools: []*copyTool{
			nbdTool("taskd-copy --dirty-bitmap b0", dir, dst, fromBase, serve, func(u []string) []string {
				return []string{bin.copy, u[0], dst, "--dirty-bitmap", "b0", "--progress", "none"}
			}),
			fullCopy(nbdTool("taskd-copy full copy", dir, dst, fresh, serve, func(u []string) []string {
				return []string{bin.copy, u[0], dst, "--progress", "none"}
			})),
			nbdTool("nbdcopy full copy", dir, dst, func() error {
				if err := fresh(); err != nil {
					return err
				}
				return os.WriteFile(dst, nil, 0o600)
			}, serve, func(u []string) []string {
				return []string{"nbdcopy", u[0], dst}
			}),
		}}, nil
	case "nbd":
		src, err := ensure(imgSparse)
		if err != nil {
			return nil, err
		}
		sparseTarget := func() error {
			if err := fresh(); err != nil {
				return err
			}
			if err := os.WriteFile(dst, nil, 0o600); err != nil {
				return err
			}
			return os.Truncate(dst, gen.size)
		}
		exports := []nbdExport{
			{src, []string{"-f", "raw", "--read-only", "--shared=4"}},
			{dst, []string{"-f", "raw", "--shared=4", "--discard=unmap"}},
		}
		return &copySet{name: "nbd (sparse25 through qemu-nbd -e 4)", source: src, size: gen.size, tools: []*copyTool{
			ours(nbdTool("taskd-copy", dir, dst, sparseTarget, exports, func(u []string) []string {
				return []string{bin.copy, u[0], u[1], "--progress", "none"}
			})),
			ours(nbdTool("taskd volume copy", dir, dst, sparseTarget, exports, func(u []string) []string {
				return []string{bin.taskd, "volume", "copy", u[0], u[1], "--progress", "none"}
			})),
			nbdTool("nbdcopy", dir, dst, sparseTarget, exports, func(u []string) []string {
				return []string{"nbdcopy", u[0], u[1]}
			}),
		}}, nil
	}
	return nil, fmt.Errorf("unknown set %q (sparse25, sparse25-halfzero, random100, file4k, incremental, dirty-bitmap, nbd)", name)
}

// nbdExport is an image a tool reads or writes through qemu-nbd.
type nbdExport struct {
	image string
	args  []string // qemu-nbd flags before the image
}

// nbdTool resets the target, then serves each export with qemu-nbd for one
// run; argv gets the exports' URIs in order. The servers' CPU and I/O count
// in the run.
func nbdTool(name, dir, dst string, reset func() error, exports []nbdExport, argv func(uris []string) []string) *copyTool {
	t := &copyTool{name: name, target: dst}
	var servers []*harness.NBDServer
	sockDir := filepath.Join(dir, "sock-"+strings.NewReplacer(" ", "-", "/", "-").Replace(name))
	t.stop = func() []*syscall.Rusage {
		var out []*syscall.Rusage
		for _, s := range servers {
			s.Stop()
			out = append(out, s.Rusage())
		}
		servers = nil
		return out
	}
	t.reset = func() error {
		if err := reset(); err != nil {
			return err
		}
		os.RemoveAll(sockDir)
		if err := os.MkdirAll(sockDir, 0o700); err != nil {
			return err
		}
		var uris []string
		for i, e := range exports {
			s, err := harness.StartQemuNBD(sockDir, fmt.Sprint("e", i), e.image, e.args...)
			if err != nil {
				t.stop()
				return err
			}
			servers = append(servers, s)
			uris = append(uris, s.URI())
		}
		t.argv = argv(uris)
		return nil
	}
	return t
}

// ours marks a tool as one of taskd's rows: compared with the set's other
// tools too, not only the first.
func ours(t *copyTool) *copyTool { t.ours = true; return t }

// fullCopy marks t as its set's full copy (copyTool.fullCopy).
func fullCopy(t *copyTool) *copyTool {
	t.fullCopy = true
	return t
}
