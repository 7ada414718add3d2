package volume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// IO says how a file volume moves data. The copy engine sets it once,
// before its first read or write, from what the endpoints are (see
// volcopy's plan).
type IO struct {
	// Direct bypasses the page cache (O_DIRECT) for aligned reads and for
	// aligned writes of at least 256 KiB. A file system that refuses
	// O_DIRECT keeps the page cache; SetIO reports which is in effect.
	Direct bool
	// WriteBehind, for writes through the page cache: each write of at
	// least 256 KiB starts its writeback at once, and every write waits
	// until the data this many bytes before it is on the disk. The dirty
	// data a copy leaves to its flush stays below this bound, so the final
	// flush does not stall on a whole extent. 0 leaves writeback to the
	// kernel.
	WriteBehind int64
	// DropCache drops what a buffered read read, and what write-behind
	// found written, from the page cache: a copy does not push a node's
	// working set out of the cache, as direct I/O would not.
	DropCache bool
	// Prefetch, for a regular file read through the page cache: the
	// reader announces each range before it reads it (File.Prefetch), and
	// the kernel's own readahead is off. On a sparse file that readahead
	// reads the holes around the data too (up to read_ahead_kb, 8 MiB on
	// this VM's disk), zero-filling page after page of them.
	Prefetch bool
}

// File is a regular file or a block device of this node.
type File interface {
	Volume
	// Info says what the file is.
	Info() FileInfo
	// SetIO sets how data moves; call it before any I/O. It returns
	// the setting in effect (Direct false where O_DIRECT is refused).
	SetIO(IO) IO
	// CopyRange copies n bytes at off to the same offset of dst inside
	// the kernel (copy_file_range(2)): nothing passes through the
	// caller's memory, and the data is not looked at. It returns an error
	// wrapping ErrNoCopyRange, having copied nothing, when the kernel
	// cannot copy between the two files (other file systems, no support).
	CopyRange(ctx context.Context, dst File, off, n int64) error
	// State is the file's identity and change time now.
	State() (FileState, error)
	// Prefetch starts reading [off, off+n) into the page cache without
	// waiting, when IO.Prefetch is set (a hint: it fails silently).
	Prefetch(off, n int64)
	// HasHole says whether a regular file has a hole before its end (one
	// SEEK_HOLE, not a walk of its extents). A block device, an empty
	// file, or a file system without SEEK_HOLE has none.
	HasHole() (bool, error)
}

// FileInfo is what a file volume is.
type FileInfo struct {
	// Block is true for a block device, false for a regular file.
	Block bool
	// Dev is the file system (st_dev) of a regular file; copy_file_range
	// works within one.
	Dev uint64
}

// FileState identifies a file and its content version: any write, hole
// punch or truncation changes Ctime (which no user can set back).
type FileState struct {
	Dev, Ino       uint64
	Size           int64
	CtimeSec       int64
	CtimeNsec      int64
	Uid            uint32
	Regular, Block bool
}

// ErrNoCopyRange is wrapped by CopyRange when the kernel cannot copy
// between the two files; the caller moves the data itself.
var ErrNoCopyRange = errors.New("copy_file_range not possible between these files")

func (v *fileVolume) Info() FileInfo { return FileInfo{Block: v.block, Dev: v.dev} }

func (v *fileVolume) SetIO(set IO) IO {
	if set.Direct && v.direct == nil {
		// Reopen the inode already opened (and confined), not the path.
		d, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", v.f.Fd()), v.flags&^unix.O_CREAT|unix.O_DIRECT, 0)
		if err == nil {
			v.direct = d
		}
	}
	if !set.Direct && v.direct != nil {
		v.direct.Close()
		v.direct = nil
	}
	set.Direct = v.direct != nil
	if set.WriteBehind < 0 {
		set.WriteBehind = 0
	}
	set.Prefetch = set.Prefetch && !v.block && !set.Direct
	if set.Prefetch != v.io.Prefetch {
		adv := unix.FADV_RANDOM // no readahead of the kernel's own
		if !set.Prefetch {
			adv = v.readAdvice()
		}
		v.advise(adv)
	}
	v.io = set
	return set
}

// Prefetch: see File.
func (v *fileVolume) Prefetch(off, n int64) {
	if v.io.Prefetch && n > 0 {
		_ = unix.Fadvise(int(v.f.Fd()), off, n, unix.FADV_WILLNEED)
	}
}

func (v *fileVolume) State() (FileState, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(v.f.Fd()), &st); err != nil {
		return FileState{}, fmt.Errorf("stat %s: %w", v.f.Name(), err)
	}
	return FileState{Dev: st.Dev, Ino: st.Ino, Size: st.Size, CtimeSec: st.Ctim.Sec, CtimeNsec: st.Ctim.Nsec,
		Uid: st.Uid, Regular: st.Mode&unix.S_IFMT == unix.S_IFREG, Block: st.Mode&unix.S_IFMT == unix.S_IFBLK}, nil
}

// minWriteBehind is the smallest write whose writeback starts at once;
// smaller ones stay in the cache, where writeback can merge them.
const minWriteBehind = 256 << 10

// wroteBuffered runs write-behind after a write of [off, off+n) through
// the page cache. Failures only lose the overlap; Flush still makes the
// data durable.
func (v *fileVolume) wroteBuffered(off, n int64) {
	fd := int(v.f.Fd())
	if n >= minWriteBehind {
		_ = unix.SyncFileRange(fd, off, n, unix.SYNC_FILE_RANGE_WRITE)
	}
	w := v.io.WriteBehind
	if w <= 0 || off < w || n < minWriteBehind {
		// A small write (scattered blocks of an incremental copy) has
		// nothing of its own this far behind worth a wait: its
		// writeback is left to the cache and the final flush.
		return
	}
	// The range this far behind: wait until it is written (starting
	// whatever is still dirty there), so at most about w bytes are ever
	// waiting for the final flush.
	_ = unix.SyncFileRange(fd, off-w, n, unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER)
	if v.io.DropCache {
		_ = unix.Fadvise(fd, off-w, n, unix.FADV_DONTNEED)
	}
}

func (v *fileVolume) CopyRange(ctx context.Context, dst File, off, n int64) error {
	d, ok := dst.(*fileVolume)
	if !ok {
		return fmt.Errorf("%w: %s is not a local file", ErrNoCopyRange, dst.Identity())
	}
	if off+n > d.size {
		return fmt.Errorf("copy to %s at %d: past the end (%d bytes)", d.f.Name(), off, d.size)
	}
	first := true
	for n > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		in, out := off, off
		m, err := unix.CopyFileRange(int(v.f.Fd()), &in, int(d.f.Fd()), &out, int(min(n, 1<<30)), 0)
		if err != nil {
			if first && (errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS)) {
				return fmt.Errorf("%w: %s to %s: %w", ErrNoCopyRange, v.f.Name(), d.f.Name(), err)
			}
			return fmt.Errorf("copy %s to %s at %d: %w", v.f.Name(), d.f.Name(), off, err)
		}
		if m == 0 {
			return fmt.Errorf("copy %s to %s at %d: %w", v.f.Name(), d.f.Name(), off, io.ErrUnexpectedEOF)
		}
		first = false
		d.wroteBuffered(off, int64(m))
		if v.io.DropCache {
			_ = unix.Fadvise(int(v.f.Fd()), off, int64(m), unix.FADV_DONTNEED)
		}
		off, n = off+int64(m), n-int64(m)
	}
	return nil
}
