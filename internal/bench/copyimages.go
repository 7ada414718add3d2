package bench

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Benchmark images, generated from a fixed seed so every run copies the
// same bytes.
const (
	benchBlock = 64 << 10 // unit of the half-zero image
	imgSparse  = "sparse25"
	imgHalf    = "sparse25-halfzero"
	imgRandom  = "random100"
	imgBase    = "incr-base"
	imgIncr    = "incr-src"
	imgSmall   = "file4k" // one small file: start-up, not throughput
	smallSize  = 4 << 10
)

type imageGen struct {
	seed uint64
	size int64
}

// runs lays out the 25% image: allocated runs of 1-4 MiB (in 64 KiB
// steps) between gaps of 3-12 MiB, so a quarter of the image holds data.
func (g imageGen) runs() [][2]int64 {
	rng := rand.New(rand.NewPCG(g.seed, 1))
	var out [][2]int64
	for off := int64(0); off < g.size; {
		gap := int64(3<<20 + rng.IntN(9<<20/benchBlock+1)*benchBlock)
		run := int64(1<<20 + rng.IntN(3<<20/benchBlock+1)*benchBlock)
		off += gap
		if off >= g.size {
			break
		}
		run = min(run, g.size-off)
		out = append(out, [2]int64{off, run})
		off += run
	}
	return out
}

func (g imageGen) write(path, kind string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(g.size); err != nil {
		return err
	}
	data := rand.NewChaCha8([32]byte{byte(g.seed), 2})
	zeroes := rand.New(rand.NewPCG(g.seed, 3))
	buf := make([]byte, 4<<20)
	writeRange := func(off, n int64, halfZero bool) error {
		for n > 0 {
			m := min(n, int64(len(buf)))
			b := buf[:m]
			_, _ = data.Read(b)
			if halfZero {
				for i := 0; i < len(b); i += benchBlock {
					if zeroes.IntN(2) == 0 {
						clear(b[i:min(i+benchBlock, len(b))])
					}
				}
			}
			if _, err := f.WriteAt(b, off); err != nil {
				return err
			}
			off, n = off+m, n-m
		}
		return nil
	}
	switch kind {
	case imgRandom:
		err = writeRange(0, g.size, false)
	case imgSparse, imgHalf, imgBase:
		for _, r := range g.runs() {
			if err = writeRange(r[0], r[1], kind == imgHalf); err != nil {
				break
			}
		}
	default:
		err = fmt.Errorf("unknown image %q", kind)
	}
	if err != nil {
		return err
	}
	return f.Sync()
}

// writeIncremental copies base to path and applies 10,000 random 4 KiB
// writes at 4 KiB-aligned offsets.
func (g imageGen) writeIncremental(base, path string, writes int) error {
	if err := copyFileSparse(base, path); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	rng := rand.New(rand.NewPCG(g.seed, 4))
	data := rand.NewChaCha8([32]byte{byte(g.seed), 5})
	buf := make([]byte, 4096)
	for range writes {
		off := rng.Int64N(g.size/4096) * 4096
		_, _ = data.Read(buf)
		if _, err := f.WriteAt(buf, off); err != nil {
			return err
		}
	}
	return f.Sync()
}

// copyFileSparse copies a file keeping its holes (untimed set-up work).
func copyFileSparse(from, to string) error {
	out, err := runQuiet("cp", "--sparse=always", from, to)
	if err != nil {
		return fmt.Errorf("cp %s %s: %v: %s", from, to, err, out)
	}
	return nil
}

// writeBitmapImage converts base to a qcow2 image with an enabled dirty
// bitmap b0 of the given granularity, then applies random 4 KiB writes through qemu-io so that the
// bitmap records them. It returns the qcow2 path and a raw export of the
// result to compare targets with.
func (g imageGen) writeBitmapImage(base, dir string, writes, granularity int) (disk, want string, err error) {
	disk = filepath.Join(dir, fmt.Sprintf("bitmap-disk-g%d.qcow2", granularity))
	want = filepath.Join(dir, fmt.Sprintf("bitmap-want-g%d.raw", granularity))
	if _, err := os.Stat(want); err == nil {
		return disk, want, nil
	}
	os.Remove(disk)
	if out, err := runQuiet("qemu-img", "convert", "-f", "raw", "-O", "qcow2", base, disk); err != nil {
		return "", "", fmt.Errorf("qemu-img convert: %v: %s", err, out)
	}
	if out, err := runQuiet("qemu-img", "bitmap", "--add", "-g", fmt.Sprint(granularity), disk, "b0"); err != nil {
		return "", "", fmt.Errorf("qemu-img bitmap: %v: %s", err, out)
	}
	rng := rand.New(rand.NewPCG(g.seed, 6))
	var script strings.Builder
	for i := range writes {
		off := rng.Int64N(g.size/4096) * 4096
		fmt.Fprintf(&script, "write -P %d %d 4096\n", 1+i%255, off)
	}
	cmd := exec.Command("qemu-io", "-f", "qcow2", disk)
	cmd.Stdin = strings.NewReader(script.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("qemu-io: %v: %s", err, out)
	}
	if out, err := runQuiet("qemu-img", "convert", "-f", "qcow2", "-O", "raw", disk, want); err != nil {
		return "", "", fmt.Errorf("qemu-img convert: %v: %s", err, out)
	}
	return disk, want, nil
}
