package bench

import (
	"fmt"
	"io"
	"os"
)

// incrementalWrites is how many random 4 KiB blocks the incremental row's
// source differs in from the set's image.
const incrementalWrites = 10000

// incrementalTool is a set's incremental row: the target holds the set's
// image and the manifest taskd left beside it when it copied the image
// (untimed, in the reset); the timed run copies the image changed by
// incrementalWrites random 4 KiB writes with --manifest, which reads only
// the source, compares each block's hash with the manifest and writes the
// blocks that differ.
func incrementalTool(gen imageGen, image, dst, taskd string, fresh func() error) (*copyTool, error) {
	changed := image + ".incr"
	if _, err := os.Stat(changed); err != nil {
		if err := gen.writeIncremental(image, changed, incrementalWrites); err != nil {
			return nil, err
		}
	}
	return &copyTool{
		name:        fmt.Sprintf("taskd --manifest incremental (%dk 4 KiB writes)", incrementalWrites/1000),
		argv:        []string{taskd, "volume", "copy", changed, dst, "--manifest", "--progress", "none"},
		target:      dst,
		incremental: true,
		source:      changed,
		reset:       copyWithManifest(taskd, image, dst, fresh),
	}, nil
}

// copyWithManifest is a reset: a fresh target that holds from and the
// manifest taskd left beside it when it copied from (untimed).
func copyWithManifest(taskd, from, dst string, fresh func() error) func() error {
	return func() error {
		if err := fresh(); err != nil {
			return err
		}
		out, err := runQuiet(taskd, "volume", "copy", "--manifest", from, dst, "--progress", "none")
		if err != nil {
			return fmt.Errorf("taskd volume copy --manifest %s: %v: %s", from, err, out)
		}
		return nil
	}
}

// printIncremental compares the incremental row with the set's full copy
// (its first tool), repetition by repetition.
func printIncremental(out io.Writer, s *copySet, results map[string]*copyResult) {
	first := results[s.tools[0].name]
	for _, t := range s.tools {
		if !t.incremental {
			continue
		}
		r := results[t.name]
		lo, hi := pairedRange(r.walls, first.walls)
		fmt.Fprintf(out, "ratio %s / %s (full copy) = %.2f (per repetition %.2f-%.2f); written %s of %s\n", t.name, s.tools[0].name,
			median(r.walls).Seconds()/median(first.walls).Seconds(), lo, hi, humanSize(median(r.writeB)), humanSize(median(first.writeB)))
	}
}
