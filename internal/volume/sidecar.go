package volume

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Sidecars are small files kept beside a regular file opened for writing,
// in its own directory and so under the same root: ".NAME.SUFFIX" (the copy
// keeps its block manifest there). Every operation goes through the
// directory fd the file was opened in, never follows a symlink, and a
// sidecar is replaced only by renaming a complete temporary file
// (".NAME.SUFFIX.tmp") over it.
type Sidecars interface {
	// OpenSidecar opens the sidecar for reading. A missing one is
	// os.ErrNotExist; one this process could not have written (not a
	// regular file, another owner, writable by group or others, more than
	// one link) is ErrUntrusted.
	OpenSidecar(suffix string) (*os.File, error)
	// CreateSidecar makes a new, empty temporary file for the sidecar
	// (removing a stale one first), or with resume reopens the existing
	// one under the same checks as OpenSidecar.
	CreateSidecar(suffix string, resume bool) (*os.File, error)
	// CommitSidecar renames the temporary file over the sidecar and makes
	// the rename durable.
	CommitSidecar(suffix string) error
	// RemoveSidecar removes the sidecar and its temporary file.
	RemoveSidecar(suffix string) error
}

// ErrNoSidecar is returned by SidecarsOf for a volume that keeps no
// sidecars: not a regular file opened for writing, or one whose name is a
// symlink or no longer holds it.
var ErrNoSidecar = errors.New("volume keeps no sidecar files")

// ErrUntrusted is returned for a sidecar this process could not have
// written; a caller treats it like a missing one.
var ErrUntrusted = errors.New("sidecar file not trusted")

// SidecarsOf returns the sidecars of v.
func SidecarsOf(v Volume) (Sidecars, error) {
	f, ok := v.(*fileVolume)
	if !ok || f.entry == nil {
		return nil, fmt.Errorf("%w: %s", ErrNoSidecar, v.Identity())
	}
	return f, nil
}

func (v *fileVolume) sidecarName(suffix string, tmp bool) (string, error) {
	for _, c := range suffix {
		if !(c >= 'a' && c <= 'z' || c == '-') {
			return "", fmt.Errorf("%w: sidecar suffix %q", ErrInvalid, suffix)
		}
	}
	name := "." + v.entry.name + "." + suffix
	if tmp {
		name += ".tmp"
	}
	if len(name) > 255 {
		return "", fmt.Errorf("%w: %s: name too long for a sidecar", ErrNoSidecar, v.entry.path)
	}
	return name, nil
}

// openSidecarFile opens name in the file's directory without following
// any symlink, and checks it is ours alone.
func (v *fileVolume) openSidecarFile(name string, flags int) (*os.File, error) {
	fd, err := unix.Openat2(v.entry.dir, name, &unix.OpenHow{
		Flags:   uint64(flags | unix.O_NOFOLLOW | unix.O_CLOEXEC),
		Resolve: resolveBeneath | unix.RESOLVE_NO_SYMLINKS,
	})
	if errors.Is(err, unix.ENOENT) {
		return nil, &os.PathError{Op: "open", Path: name, Err: os.ErrNotExist}
	}
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) {
		return nil, fmt.Errorf("%w: %s beside %s is a symlink", ErrUntrusted, name, v.entry.path)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s beside %s: %w", name, v.entry.path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("stat %s beside %s: %w", name, v.entry.path, err)
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		err = fmt.Errorf("%w: %s beside %s is not a regular file", ErrUntrusted, name, v.entry.path)
	case st.Uid != uint32(os.Geteuid()):
		err = fmt.Errorf("%w: %s beside %s belongs to uid %d", ErrUntrusted, name, v.entry.path, st.Uid)
	case st.Mode&0o022 != 0:
		err = fmt.Errorf("%w: %s beside %s is writable by others (mode %o)", ErrUntrusted, name, v.entry.path, st.Mode&0o777)
	case st.Nlink != 1:
		err = fmt.Errorf("%w: %s beside %s has %d links", ErrUntrusted, name, v.entry.path, st.Nlink)
	}
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), v.entry.path+" "+name), nil
}

func (v *fileVolume) OpenSidecar(suffix string) (*os.File, error) {
	name, err := v.sidecarName(suffix, false)
	if err != nil {
		return nil, err
	}
	return v.openSidecarFile(name, unix.O_RDONLY)
}

func (v *fileVolume) CreateSidecar(suffix string, resume bool) (*os.File, error) {
	name, err := v.sidecarName(suffix, true)
	if err != nil {
		return nil, err
	}
	if resume {
		return v.openSidecarFile(name, unix.O_RDWR)
	}
	// A stale temporary file (or anything else by that name) goes first:
	// unlinkat removes the entry itself, never what a symlink points to.
	if err := unix.Unlinkat(v.entry.dir, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return nil, fmt.Errorf("remove stale %s beside %s: %w", name, v.entry.path, err)
	}
	fd, err := unix.Openat2(v.entry.dir, name, &unix.OpenHow{
		Flags:   uint64(unix.O_RDWR | unix.O_CREAT | unix.O_EXCL | unix.O_NOFOLLOW | unix.O_CLOEXEC),
		Mode:    0o600,
		Resolve: resolveBeneath | unix.RESOLVE_NO_SYMLINKS,
	})
	if err != nil {
		return nil, fmt.Errorf("create %s beside %s: %w", name, v.entry.path, err)
	}
	return os.NewFile(uintptr(fd), v.entry.path+" "+name), nil
}

func (v *fileVolume) CommitSidecar(suffix string) error {
	tmp, err := v.sidecarName(suffix, true)
	if err != nil {
		return err
	}
	name, _ := v.sidecarName(suffix, false)
	if err := unix.Renameat(v.entry.dir, tmp, v.entry.dir, name); err != nil {
		return fmt.Errorf("rename %s over %s beside %s: %w", tmp, name, v.entry.path, err)
	}
	// The O_PATH directory fd cannot be synced; a real one of the same
	// directory can.
	d, err := unix.Openat(v.entry.dir, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open directory of %s: %w", v.entry.path, err)
	}
	defer unix.Close(d)
	if err := unix.Fsync(d); err != nil {
		return fmt.Errorf("sync directory of %s: %w", v.entry.path, err)
	}
	return nil
}

func (v *fileVolume) RemoveSidecar(suffix string) error {
	var errs []error
	for _, tmp := range []bool{false, true} {
		name, err := v.sidecarName(suffix, tmp)
		if err != nil {
			return err
		}
		if err := unix.Unlinkat(v.entry.dir, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("remove %s beside %s: %w", name, v.entry.path, err))
		}
	}
	return errors.Join(errs...)
}
