package bench

import (
	"fmt"
	"io"
	"os"
)

// incrementalWrites is how many random 4 KiB blocks the incremental row's
// source differs in from the set's image.
const incrementalWrites = 10000

// incrRole is a tool's part in a set's incremental comparison.
type incrRole int

const (
	incrNone incrRole = iota
	incrManifest
	incrFull // a full copy of the incremental's source, for its ratio
)

// incrementalTools are a set's incremental rows. The source is the set's
// image changed by incrementalWrites random 4 KiB writes (made once,
// untimed). "taskd-copy --manifest" copies it onto a target that holds the
// set's image and the manifest taskd left beside it when it copied the
// image (untimed, in the reset): it reads only the source, compares each
// block's hash with the manifest and writes the blocks that differ. The
// other row is a full copy of the same source onto a new target, the
// reference of the ratio: the writes land in the image's holes too, so the
// changed image has more, smaller extents than the set's.
func incrementalTools(gen imageGen, image, dst, taskdCopy string, fresh func() error) ([]*copyTool, error) {
	changed := image + ".incr"
	if _, err := os.Stat(changed); err != nil {
		if err := gen.writeIncremental(image, changed, incrementalWrites); err != nil {
			return nil, err
		}
	}
	return []*copyTool{{
		name:        fmt.Sprintf("taskd-copy --manifest incremental (%dk 4 KiB writes)", incrementalWrites/1000),
		argv:        []string{taskdCopy, changed, dst, "--manifest", "--progress", "none"},
		target:      dst,
		incremental: incrManifest,
		source:      changed,
		reset:       copyWithManifest(taskdCopy, image, dst, fresh),
	}, {
		name:        "taskd-copy full copy of the changed image",
		argv:        []string{taskdCopy, changed, dst, "--progress", "none"},
		target:      dst,
		incremental: incrFull,
		source:      changed,
		reset:       fresh,
	}}, nil
}

// copyWithManifest is a reset: a fresh target that holds from and the
// manifest taskd-copy left beside it when it copied from (untimed).
func copyWithManifest(taskdCopy, from, dst string, fresh func() error) func() error {
	return func() error {
		if err := fresh(); err != nil {
			return err
		}
		out, err := runQuiet(taskdCopy, "--manifest", from, dst, "--progress", "none")
		if err != nil {
			return fmt.Errorf("taskd-copy --manifest %s: %v: %s", from, err, out)
		}
		return nil
	}
}

// printIncremental compares the incremental row with the full copy of
// the same source and with the set's full copy (its first tool),
// repetition by repetition.
func printIncremental(out io.Writer, s *copySet, results map[string]*copyResult) {
	var incr, full *copyTool
	for _, t := range s.tools {
		switch t.incremental {
		case incrManifest:
			incr = t
		case incrFull:
			full = t
		}
	}
	if incr == nil || full == nil {
		return
	}
	r := results[incr.name]
	for _, ref := range []*copyTool{full, s.tools[0]} {
		f := results[ref.name]
		lo, hi := pairedRange(r.walls, f.walls)
		fmt.Fprintf(out, "ratio %s / %s = %.2f (per repetition %.2f-%.2f); written %s of %s\n", incr.name, ref.name,
			median(r.walls).Seconds()/median(f.walls).Seconds(), lo, hi, humanSize(median(r.writeB)), humanSize(median(f.writeB)))
	}
}
