package volcopy

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"unsafe"

	"github.com/zeebo/xxh3"

	"github.com/taskd/taskd/internal/volume"
)

// A manifest is what the last copy wrote onto a regular file target: one
// XXH3-128 hash per block, kept beside the target (".NAME.taskd-manifest",
// through the target's directory fd, so under the same root). The next copy
// with --manifest reads only the source, hashes each block and writes the
// blocks whose hash differs.
//
// It is trusted only when it is exactly what this process wrote for exactly
// this target as it is now: owned by us and not writable by others (see
// volume.Sidecars), the header's checksum and the checksum over all hashes
// agree, block size and volume size match, and the target's device, inode,
// size and change time are those recorded after the copy's last flush. Any
// write to the target since (by anyone, including a copy cut off) changes
// its ctime, which no user can set back. A manifest that fails any check is
// not trusted: the copy compares with the target's content instead.
//
// File layout: a 128-byte header, then 16 bytes per block at 128 + 16*i.
// An all-zero entry is a block that reads as zeros (so a new manifest file
// is sparse: holes need no writes).
const (
	manifestSuffix  = "taskd-manifest"
	manifestMagic   = "TASKDMF1"
	manifestVersion = 1
	manifestHeader  = 128
	entrySize       = 16
)

type entry [entrySize]byte

// blockEntry is the manifest entry of a block: all zeros for a zero block,
// its XXH3-128 otherwise (never all zeros).
func blockEntry(b []byte, zero bool) entry {
	if zero {
		return entry{}
	}
	h := xxh3.Hash128(b)
	if h.Hi == 0 && h.Lo == 0 {
		h.Lo = 1
	}
	return h.Bytes()
}

// manifestHead is the header.
type manifestHead struct {
	blockSize uint32
	size      int64 // volume (source) size
	id        [16]byte
	target    volume.FileState // after the copy's last flush; zero while writing
	sum       [16]byte         // XXH3-128 of the entries
}

func (h manifestHead) blocks() int64 { return (h.size + int64(h.blockSize) - 1) / int64(h.blockSize) }

func (h manifestHead) fileSize() int64 { return manifestHeader + h.blocks()*entrySize }

func (h manifestHead) encode() []byte {
	b := make([]byte, manifestHeader)
	copy(b, manifestMagic)
	be := binary.BigEndian
	be.PutUint32(b[8:], manifestVersion)
	be.PutUint32(b[12:], h.blockSize)
	be.PutUint64(b[16:], uint64(h.size))
	copy(b[24:40], h.id[:])
	be.PutUint64(b[40:], h.target.Dev)
	be.PutUint64(b[48:], h.target.Ino)
	be.PutUint64(b[56:], uint64(h.target.Size))
	be.PutUint64(b[64:], uint64(h.target.CtimeSec))
	be.PutUint64(b[72:], uint64(h.target.CtimeNsec))
	copy(b[88:104], h.sum[:])
	be.PutUint64(b[104:], xxh3.Hash(b[:104]))
	return b
}

var errManifest = errors.New("manifest not usable")

func decodeHead(b []byte) (manifestHead, error) {
	var h manifestHead
	be := binary.BigEndian
	switch {
	case len(b) < manifestHeader || string(b[:8]) != manifestMagic:
		return h, fmt.Errorf("%w: not a manifest", errManifest)
	case be.Uint32(b[8:]) != manifestVersion:
		return h, fmt.Errorf("%w: version %d", errManifest, be.Uint32(b[8:]))
	case be.Uint64(b[104:]) != xxh3.Hash(b[:104]):
		return h, fmt.Errorf("%w: header checksum", errManifest)
	}
	h.blockSize = be.Uint32(b[12:])
	h.size = int64(be.Uint64(b[16:]))
	copy(h.id[:], b[24:40])
	h.target = volume.FileState{Dev: be.Uint64(b[40:]), Ino: be.Uint64(b[48:]), Size: int64(be.Uint64(b[56:])),
		CtimeSec: int64(be.Uint64(b[64:])), CtimeNsec: int64(be.Uint64(b[72:]))}
	copy(h.sum[:], b[88:104])
	if h.blockSize == 0 || h.size < 0 || h.size > 1<<62 {
		return h, fmt.Errorf("%w: block size %d, size %d", errManifest, h.blockSize, h.size)
	}
	return h, nil
}

// entriesSum hashes the entries of f as the header's sum covers them.
func entriesSum(f *os.File, h manifestHead) ([16]byte, error) {
	hs := xxh3.New()
	if _, err := io.Copy(hs, io.NewSectionReader(f, manifestHeader, h.blocks()*entrySize)); err != nil {
		return [16]byte{}, err
	}
	return hs.Sum128().Bytes(), nil
}

// manifestFile is an open manifest: the old one a copy compares with, or
// the new one it writes.
type manifestFile struct {
	f    *os.File
	head manifestHead
}

func (m *manifestFile) idString() string { return hex.EncodeToString(m.head.id[:]) }

// readEntries reads the entries of blocks [first, first+len(out)).
func (m *manifestFile) readEntries(first int64, out []entry) error {
	b := entryBytes(out)
	if _, err := m.f.ReadAt(b, manifestHeader+first*entrySize); err != nil {
		return fmt.Errorf("read manifest at block %d: %w", first, err)
	}
	return nil
}

// writeEntries writes the entries of blocks [first, first+len(in)).
func (m *manifestFile) writeEntries(first int64, in []entry) error {
	if _, err := m.f.WriteAt(entryBytes(in), manifestHeader+first*entrySize); err != nil {
		return fmt.Errorf("write manifest at block %d: %w", first, err)
	}
	return nil
}

// entryBytes is the memory of e as bytes (entries are byte arrays).
func entryBytes(e []entry) []byte {
	if len(e) == 0 {
		return nil
	}
	return unsafe.Slice(&e[0][0], len(e)*entrySize)
}

// nonZeroRuns calls fn with the runs of blocks in [first, first+n) whose
// entry is not zero (blocks the target holds data in). held, when not nil,
// holds those n entries; otherwise they are read a chunk at a time.
func (m *manifestFile) nonZeroRuns(held []entry, first, n int64, fn func(first, n int64) error) error {
	buf := held
	if buf == nil {
		buf = make([]entry, min(n, 4096))
	}
	runStart, inRun := int64(0), false
	for done := int64(0); done < n; {
		k := min(n-done, int64(len(buf)))
		if held == nil {
			if err := m.readEntries(first+done, buf[:k]); err != nil {
				return err
			}
		}
		for i := range k {
			nz := buf[i] != entry{}
			switch {
			case nz && !inRun:
				runStart, inRun = first+done+i, true
			case !nz && inRun:
				if err := fn(runStart, first+done+i-runStart); err != nil {
					return err
				}
				inRun = false
			}
		}
		done += k
	}
	if inRun {
		return fn(runStart, first+n-runStart)
	}
	return nil
}

// openOldManifest opens the target's manifest and checks everything but
// the target's state (the caller decides on that). Any failure is a reason
// not to trust it.
func openOldManifest(sc volume.Sidecars, blockSize int, size int64) (*manifestFile, error) {
	f, err := sc.OpenSidecar(manifestSuffix)
	if err != nil {
		return nil, err
	}
	m, err := checkManifest(f, blockSize, size)
	if err != nil {
		f.Close()
		return nil, err
	}
	return m, nil
}

func checkManifest(f *os.File, blockSize int, size int64) (*manifestFile, error) {
	b := make([]byte, manifestHeader)
	if _, err := f.ReadAt(b, 0); err != nil {
		return nil, fmt.Errorf("%w: header: %v", errManifest, err)
	}
	h, err := decodeHead(b)
	if err != nil {
		return nil, err
	}
	if int(h.blockSize) != blockSize || h.size != size {
		return nil, fmt.Errorf("%w: made for %d-byte blocks of a %d-byte volume, this copy has %d-byte blocks of %d bytes",
			errManifest, h.blockSize, h.size, blockSize, size)
	}
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() != h.fileSize() {
		return nil, fmt.Errorf("%w: %d bytes, want %d", errManifest, st.Size(), h.fileSize())
	}
	sum, err := entriesSum(f, h)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errManifest, err)
	}
	if sum != h.sum {
		return nil, fmt.Errorf("%w: entries checksum", errManifest)
	}
	return &manifestFile{f: f, head: h}, nil
}

// sameTarget says whether the target is, unchanged, the one the manifest
// was written for.
func sameTarget(rec, now volume.FileState) bool {
	return rec.Dev == now.Dev && rec.Ino == now.Ino && rec.Size == now.Size &&
		rec.CtimeSec == now.CtimeSec && rec.CtimeNsec == now.CtimeNsec
}

// createManifest starts a new manifest's temporary file: header without a
// target state, all entries zero (a sparse file).
func createManifest(sc volume.Sidecars, blockSize int, size int64) (*manifestFile, error) {
	h := manifestHead{blockSize: uint32(blockSize), size: size}
	if _, err := rand.Read(h.id[:]); err != nil {
		return nil, err
	}
	f, err := sc.CreateSidecar(manifestSuffix, false)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(h.fileSize()); err != nil {
		f.Close()
		return nil, fmt.Errorf("size new manifest: %w", err)
	}
	if _, err := f.WriteAt(h.encode(), 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("write new manifest: %w", err)
	}
	return &manifestFile{f: f, head: h}, nil
}

// commit records the target's state and the checksums, makes the file
// durable and renames it over the old manifest.
func (m *manifestFile) commit(sc volume.Sidecars, target volume.FileState) error {
	sum, err := entriesSum(m.f, m.head)
	if err != nil {
		return fmt.Errorf("checksum new manifest: %w", err)
	}
	m.head.sum, m.head.target = sum, target
	if _, err := m.f.WriteAt(m.head.encode(), 0); err != nil {
		return fmt.Errorf("write new manifest: %w", err)
	}
	if err := m.f.Sync(); err != nil {
		return fmt.Errorf("sync new manifest: %w", err)
	}
	return sc.CommitSidecar(manifestSuffix)
}
