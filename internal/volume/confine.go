package volume

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrNotAllowed is returned for an NBD endpoint this node's configuration
// does not allow a task to use (a socket outside every --nbd-socket-dir, a
// host outside --nbd-allow-host).
var ErrNotAllowed = errors.New("endpoint not allowed on this node")

// beneath returns path relative to root when path lies lexically under root
// (or is root: "."). Both must be absolute; path is cleaned.
func beneath(root, path string) (string, bool) {
	rel, err := filepath.Rel(filepath.Clean(root), filepath.Clean(path))
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") || filepath.IsAbs(rel) {
		return "", false
	}
	return rel, true
}

// resolveBeneath is the resolution every confined open uses: nothing may
// leave the directory fd it starts from, by "..", an absolute symlink or a
// magic link of /proc.
const resolveBeneath = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS

// escapeError reports an openat2 refusal to leave its root.
func escapeError(err error) bool { return errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ELOOP) }

// dirEntry is the directory entry of a file opened for writing: the
// directory's fd and the file's name and inode. A copy that fails before it
// wrote anything removes a file its open created, relative to the directory
// fd it was created in and only while the name still holds the same inode:
// so neither a directory swapped for a symlink nor a file put in its place
// is ever removed instead. Sidecar files (the copy's block manifest) live in
// the same directory fd, so they stay under the same root as the file.
type dirEntry struct {
	dir      int // O_PATH fd of the directory holding the file
	name     string
	dev, ino uint64
	path     string // for messages
	created  bool   // this open created the file
}

// ErrReplaced is returned when a created file's name no longer holds the
// file that was created; it is left alone.
var ErrReplaced = errors.New("file was replaced after it was created")

func (e *dirEntry) remove() error {
	var st unix.Stat_t
	if err := unix.Fstatat(e.dir, e.name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("remove new target %s: %w", e.path, err)
	}
	if st.Dev != e.dev || st.Ino != e.ino {
		return fmt.Errorf("remove new target %s: %w; left alone", e.path, ErrReplaced)
	}
	if err := unix.Unlinkat(e.dir, e.name, 0); err != nil {
		return fmt.Errorf("remove new target %s: %w", e.path, err)
	}
	return nil
}

func (e *dirEntry) close() { unix.Close(e.dir) }

// sync makes the entry durable: fsync of the directory holding it (opened
// for reading through the O_PATH fd, which itself cannot be synced).
func (e *dirEntry) sync() error {
	fd, err := unix.Openat(e.dir, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open the directory of %s to flush it: %w", e.path, err)
	}
	defer unix.Close(fd)
	if err := unix.Fsync(fd); err != nil {
		return fmt.Errorf("flush the directory of %s: %w", e.path, err)
	}
	return nil
}

// createIn creates name in the directory dir (an O_PATH fd it takes over)
// with O_EXCL, never through a symlink, and records the new entry.
func createIn(dir int, name string, flags int, path string) (*os.File, *dirEntry, error) {
	how := unix.OpenHow{
		Flags:   uint64(flags | unix.O_CREAT | unix.O_EXCL | unix.O_NOFOLLOW | unix.O_CLOEXEC),
		Mode:    0o600,
		Resolve: resolveBeneath | unix.RESOLVE_NO_SYMLINKS,
	}
	fd, err := unix.Openat2(dir, name, &how)
	if err != nil {
		unix.Close(dir)
		return nil, nil, &os.PathError{Op: "create", Path: path, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		unix.Close(dir)
		return nil, nil, fmt.Errorf("stat new target %s: %w", path, err)
	}
	e := &dirEntry{dir: dir, name: name, dev: st.Dev, ino: st.Ino, path: path, created: true}
	return os.NewFile(uintptr(fd), path), e, nil
}

// splitName splits a cleaned relative or absolute path into its directory
// and a final name that can be created ("." and ".." cannot).
func splitName(path string) (dir, name string, err error) {
	dir, name = filepath.Split(path)
	if name == "" || name == "." || name == ".." {
		return "", "", fmt.Errorf("%w: %s: not a file name", ErrInvalid, path)
	}
	if dir == "" {
		dir = "."
	}
	return dir, name, nil
}

// openConfined opens path, creating it when asked. With roots, the path must
// lie under one of them and is opened with openat2(RESOLVE_BENEATH) relative
// to that root, so neither ".." nor a symlink can lead outside it, also not
// through a rename racing the open. A new file is created relative to its
// directory's fd, which the returned entry keeps for a later removal. A file
// opened for writing comes with its directory entry too (for sidecars), or
// with none when its name is a symlink or no longer holds it.
func openConfined(path string, flags int, opts Options) (*os.File, *dirEntry, error) {
	create := opts.Write && opts.CreateSize > 0
	if len(opts.Roots) == 0 {
		if opts.Confined {
			return nil, nil, fmt.Errorf("%w: %s: this node has no --volume-root, so file:// endpoints of tasks are refused", ErrOutsideRoots, path)
		}
		return openUnconfined(path, flags, create)
	}
	for _, root := range opts.Roots {
		rel, ok := beneath(root, path)
		if !ok {
			continue
		}
		rootFD, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, nil, fmt.Errorf("open root %s: %w", root, err)
		}
		defer unix.Close(rootFD)
		fd, err := unix.Openat2(rootFD, rel, &unix.OpenHow{Flags: uint64(flags), Resolve: resolveBeneath})
		if errors.Is(err, unix.ENOENT) && create {
			return createBeneath(rootFD, root, rel, flags, path)
		}
		if escapeError(err) {
			return nil, nil, fmt.Errorf("%w: %s resolves outside root %s (symlink or ..)", ErrOutsideRoots, path, root)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("open %s: %w", path, err)
		}
		f := os.NewFile(uintptr(fd), path)
		if !opts.Write {
			return f, nil, nil
		}
		return f, entryOf(fd, path, func(dirRel string) (int, error) {
			return unix.Openat2(rootFD, dirRel, &unix.OpenHow{
				Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
				Resolve: resolveBeneath,
			})
		}, rel), nil
	}
	return nil, nil, fmt.Errorf("%w: %s (roots: %s)", ErrOutsideRoots, path, strings.Join(opts.Roots, ", "))
}

// createBeneath resolves the new file's directory beneath the root, then
// creates the file in that directory's fd.
func createBeneath(rootFD int, root, rel string, flags int, path string) (*os.File, *dirEntry, error) {
	dirRel, name, err := splitName(rel)
	if err != nil {
		return nil, nil, err
	}
	dir, err := unix.Openat2(rootFD, dirRel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: resolveBeneath,
	})
	if escapeError(err) {
		return nil, nil, fmt.Errorf("%w: %s resolves outside root %s (symlink or ..)", ErrOutsideRoots, path, root)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("open directory of %s: %w", path, err)
	}
	return createIn(dir, name, flags, path)
}

// openUnconfined is the local command's open: the user's own rights, any
// path. A new file is still created relative to its directory's fd, so its
// removal after a failed check hits only that file.
func openUnconfined(path string, flags int, create bool) (*os.File, *dirEntry, error) {
	f, err := os.OpenFile(path, flags, 0)
	if err == nil || !create || !errors.Is(err, os.ErrNotExist) {
		if err != nil {
			return nil, nil, err // *PathError names the path
		}
		if flags&unix.O_ACCMODE == unix.O_RDONLY {
			return f, nil, nil
		}
		return f, entryOf(int(f.Fd()), path, func(dirPath string) (int, error) {
			return unix.Open(dirPath, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		}, path), nil
	}
	dirPath, name, err := splitName(path)
	if err != nil {
		return nil, nil, err
	}
	dir, err := unix.Open(dirPath, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, &os.PathError{Op: "open directory", Path: dirPath, Err: err}
	}
	return createIn(dir, name, flags, path)
}

// entryOf finds the directory entry of an open file: the directory of
// name (opened by openDir, confined like the file) must hold, under the
// final name and without following a symlink, the inode fd refers to. When
// it does not (the name is a symlink, or was swapped since the open), the
// file has no entry and gets no sidecars; nothing else changes.
func entryOf(fd int, path string, openDir func(string) (int, error), name string) *dirEntry {
	dirName, base, err := splitName(name)
	if err != nil {
		return nil
	}
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil
	}
	dir, err := openDir(dirName)
	if err != nil {
		return nil
	}
	var at unix.Stat_t
	if unix.Fstatat(dir, base, &at, unix.AT_SYMLINK_NOFOLLOW) != nil || at.Dev != st.Dev || at.Ino != st.Ino {
		unix.Close(dir)
		return nil
	}
	return &dirEntry{dir: dir, name: base, dev: st.Dev, ino: st.Ino, path: path}
}
