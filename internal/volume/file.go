package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// fileVolume is a regular file or a block device.
type fileVolume struct {
	f      *os.File
	flags  int      // open flags, to reopen the inode with O_DIRECT
	advice int      // the readahead advice last given for the whole file (POSIX_FADV_*)
	direct *os.File // the same file with O_DIRECT, for aligned I/O; nil if unsupported or off
	io     IO
	size   int64
	block  bool
	zero   bool
	dev    uint64 // st_dev of a regular file (its file system)
	id     string
	entry  *dirEntry // its directory entry (opened for writing); nil if none
	// entrySynced: the directory entry of a created file is durable.
	entrySynced atomic.Bool
}

func openFile(path string, opts Options) (Volume, error) {
	path = filepath.Clean(path)
	flags := unix.O_RDONLY
	if opts.Write {
		flags = unix.O_RDWR
	}
	flags |= unix.O_CLOEXEC
	// O_NONBLOCK only for the open: opening a FIFO (refused below) must
	// not wait for a writer. A file or device goes back to blocking mode.
	f, entry, err := openConfined(path, flags|unix.O_NONBLOCK, opts)
	if err != nil {
		return nil, err
	}
	created := entry != nil && entry.created
	v, err := newFileVolume(f, flags, created, opts)
	if err == nil {
		if err = unix.SetNonblock(int(f.Fd()), false); err != nil {
			err = fmt.Errorf("open %s: %w", path, err)
			v = nil
		}
	}
	if err != nil {
		f.Close()
		if entry != nil {
			if created {
				err = errors.Join(err, entry.remove())
			}
			entry.close()
		}
		return nil, err
	}
	v.entry = entry
	return v, nil
}

func newFileVolume(f *os.File, flags int, created bool, opts Options) (*fileVolume, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	v := &fileVolume{f: f, flags: flags, id: fmt.Sprintf("file:%d:%d", st.Dev, st.Ino)}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		v.size = st.Size
		v.dev = st.Dev
	case unix.S_IFBLK:
		v.block = true
		v.id = fmt.Sprintf("blk:%d", st.Rdev)
		n, err := f.Seek(0, 2)
		if err != nil {
			return nil, fmt.Errorf("size of block device %s: %w", f.Name(), err)
		}
		v.size = n
	default:
		return nil, fmt.Errorf("%w: %s is neither a regular file nor a block device", ErrInvalid, f.Name())
	}
	if created {
		if err := f.Truncate(opts.CreateSize); err != nil {
			return nil, fmt.Errorf("size new target %s: %w", f.Name(), err)
		}
		v.size = opts.CreateSize
		v.zero = true
	}
	v.advise(v.readAdvice())
	return v, nil
}

// readAdvice is the readahead a file gets unless IO.Prefetch is set: a
// source is read in order (twice the readahead), a target as it comes.
func (v *fileVolume) readAdvice() int {
	if v.flags&(unix.O_WRONLY|unix.O_RDWR) == 0 {
		return unix.FADV_SEQUENTIAL
	}
	return unix.FADV_NORMAL
}

// advise sets the whole file's readahead advice (a hint: it fails
// silently) and remembers it for the tests.
func (v *fileVolume) advise(adv int) {
	_ = unix.Fadvise(int(v.f.Fd()), 0, 0, adv)
	v.advice = adv
}

func (v *fileVolume) Size() int64      { return v.size }
func (v *fileVolume) IsZero() bool     { return v.zero }
func (v *fileVolume) MaxRequest() int  { return 64 << 20 }
func (v *fileVolume) Identity() string { return v.id }
func (v *fileVolume) Close() error {
	if v.direct != nil {
		v.direct.Close()
	}
	if v.entry != nil {
		v.entry.close()
	}
	return v.f.Close()
}

// RemoveCreated implements Remover.
func (v *fileVolume) RemoveCreated() error {
	if v.entry == nil || !v.entry.created {
		return nil
	}
	return v.entry.remove()
}

// minDirectWrite is the smallest write that bypasses the page cache.
const minDirectWrite = 256 << 10

// directOK says whether an I/O may bypass the page cache: O_DIRECT needs
// the buffer, offset and length aligned (4 KiB covers every logical block
// size in use).
func (v *fileVolume) directOK(p []byte, off int64) bool {
	return v.direct != nil && len(p) > 0 && off%DirectAlign == 0 && len(p)%DirectAlign == 0 &&
		uintptr(unsafePointer(&p[0]))%DirectAlign == 0
}

func (v *fileVolume) ReadAt(_ context.Context, p []byte, off int64) error {
	f := v.f
	if v.directOK(p, off) {
		f = v.direct
	}
	if _, err := f.ReadAt(p, off); err != nil {
		return fmt.Errorf("read %s at %d: %w", v.f.Name(), off, err)
	}
	if f == v.f && v.io.DropCache {
		_ = unix.Fadvise(int(v.f.Fd()), off, int64(len(p)), unix.FADV_DONTNEED)
	}
	return nil
}

func (v *fileVolume) WriteAt(_ context.Context, p []byte, off int64) error {
	if off+int64(len(p)) > v.size {
		return fmt.Errorf("write %s at %d: past the end (%d bytes)", v.f.Name(), off, v.size)
	}
	// Small direct writes each wait for the disk; through the page cache
	// with early writeback they batch. So only large writes go direct.
	if len(p) >= minDirectWrite && v.directOK(p, off) {
		if _, err := v.direct.WriteAt(p, off); err != nil {
			return fmt.Errorf("write %s at %d: %w", v.f.Name(), off, err)
		}
		return nil
	}
	if _, err := v.f.WriteAt(p, off); err != nil {
		return fmt.Errorf("write %s at %d: %w", v.f.Name(), off, err)
	}
	v.wroteBuffered(off, int64(len(p)))
	return nil
}

// Zero punches a hole; where the file system or device cannot, it asks for
// zeroed blocks, and as a last resort writes zeros.
func (v *fileVolume) Zero(ctx context.Context, off, n int64) error {
	fd := int(v.f.Fd())
	err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if err == nil {
		return nil
	}
	if err2 := unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, n); err2 == nil {
		return nil
	}
	if v.block {
		r := [2]uint64{uint64(off), uint64(n)}
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKZEROOUT, uintptr(unsafePointer(&r))); e == 0 {
			return nil
		}
	}
	return writeZeros(ctx, v, off, n)
}

// zeroBuffer is the source of writeZeros: shared and never written, so
// zeroing by writing costs no buffer per call.
var zeroBuffer = sync.OnceValue(func() []byte { return AlignedBuffer(1 << 20) })

func writeZeros(ctx context.Context, v Volume, off, n int64) error {
	buf := zeroBuffer()
	for n > 0 {
		m := min(n, int64(len(buf)))
		if err := v.WriteAt(ctx, buf[:m], off); err != nil {
			return err
		}
		off, n = off+m, n-m
	}
	return nil
}

// Flush makes the file's data durable with fdatasync: what it does not
// write (timestamps) is not needed to read the data back, and the size and
// block allocation it does write. The first flush of a file this open
// created also makes its directory entry durable: a checkpoint that
// outlived a target whose name did not would resume onto a new, empty file
// and skip the data before the checkpoint.
func (v *fileVolume) Flush(context.Context) error {
	if err := unix.Fdatasync(int(v.f.Fd())); err != nil {
		return fmt.Errorf("flush %s: %w", v.f.Name(), err)
	}
	if v.entry != nil && v.entry.created && !v.entrySynced.Load() {
		if err := v.entry.sync(); err != nil {
			return err
		}
		v.entrySynced.Store(true)
	}
	return nil
}

// HasHole: see File.
func (v *fileVolume) HasHole() (bool, error) {
	if v.block || v.size == 0 {
		return false, nil
	}
	hole, err := unix.Seek(int(v.f.Fd()), 0, unix.SEEK_HOLE)
	switch {
	case errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EOPNOTSUPP):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("seek hole in %s: %w", v.f.Name(), err)
	}
	return hole < v.size, nil
}

// Extents walks SEEK_DATA/SEEK_HOLE. A block device, or a file system
// without them, reads as one data extent.
func (v *fileVolume) Extents(_ context.Context, off, n int64) ([]Extent, error) {
	end := min(off+n, v.size)
	if off >= end {
		return nil, fmt.Errorf("extents of %s at %d: past the end", v.f.Name(), off)
	}
	if v.block {
		return []Extent{{Off: off, Len: end - off}}, nil
	}
	fd := int(v.f.Fd())
	var out []Extent
	// atData: SEEK_DATA has just said that data starts at pos, so the
	// next call is SEEK_HOLE (two seeks per data extent and hole, not
	// three: a fragmented file has thousands of them).
	atData := false
	changing := 0 // SEEK_HOLE found no data where SEEK_DATA had just found it, in a row
	for pos := off; pos < end && len(out) < 1024; {
		if !atData {
			data, err := unix.Seek(fd, pos, unix.SEEK_DATA)
			if errors.Is(err, syscall.ENXIO) {
				data = end
			} else if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EOPNOTSUPP) {
				return []Extent{{Off: off, Len: end - off}}, nil
			} else if err != nil {
				return nil, fmt.Errorf("seek data in %s: %w", v.f.Name(), err)
			}
			if data > pos {
				h := min(data, end)
				out = append(out, Extent{Off: pos, Len: h - pos, Zero: true})
				pos, atData = h, true
				continue
			}
		}
		atData = false
		hole, err := unix.Seek(fd, pos, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("seek hole in %s: %w", v.f.Name(), err)
		}
		h := min(hole, end)
		if h == pos {
			// Changed since SEEK_DATA: look again, a bounded number of
			// times (a file system that keeps answering so is broken).
			if changing++; changing > 16 {
				return nil, fmt.Errorf("allocation of %s at %d keeps changing", v.f.Name(), pos)
			}
			continue
		}
		out = append(out, Extent{Off: pos, Len: h - pos})
		pos, changing = h, 0
	}
	return out, nil
}
