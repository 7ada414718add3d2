package volcopy

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/taskd/taskd/internal/volume"
)

// manifestRun is the manifest side of one copy run: the old manifest it
// compares with (if it can be trusted) and the new one it writes.
type manifestRun struct {
	sc   volume.Sidecars
	bs   int64
	old  *manifestFile // nil: compare with the target's content
	next *manifestFile // nil: this run leaves no manifest
	log  *slog.Logger
}

// openManifests decides what the run compares with and starts the new
// manifest. Only a failure to tell what the target is stops the copy; a
// manifest that cannot be read, trusted or written only costs speed (the
// copy compares with the target) or the next run's speed (no manifest is
// left).
//
// A resumed run trusts no manifest and leaves none. Nothing tells what
// happened to the target between the cut-off run and this one: its ctime
// moved with the cut-off run's own writes, so a foreign write since would
// go unseen, both where this run still copies (the old manifest would skip
// it) and where the cut-off run had copied (the new manifest would vouch
// for it). So the resumed run compares with the target, and the next copy
// compares once more and leaves a manifest again.
func (c *Copier) openManifests() error {
	sc, err := volume.SidecarsOf(c.dst)
	if err != nil {
		return fmt.Errorf("%w: --manifest: %w", ErrInvalid, err)
	}
	target, ok := c.dst.(volume.File)
	if !ok {
		return fmt.Errorf("%w: --manifest needs a regular file target", ErrInvalid)
	}
	m := &manifestRun{sc: sc, bs: int64(c.opts.BlockSize), log: c.log}
	c.manifest = m
	size := c.src.Size()
	if c.opts.Resume != nil {
		c.log.Info("resumed manifest copy: comparing with the target; the next copy with --manifest compares once more and leaves a manifest")
		return nil
	}
	if c.mode == ModeManifest {
		old, err := openOldManifest(sc, c.opts.BlockSize, size)
		if err == nil {
			st, serr := target.State()
			switch {
			case serr != nil:
				err = serr
			case !sameTarget(old.head.target, st):
				err = fmt.Errorf("%w: the target changed since the manifest was written", errManifest)
			}
			if err != nil {
				old.f.Close()
			}
		}
		switch {
		case err == nil:
			m.old = old
		case errors.Is(err, os.ErrNotExist):
			c.log.Info("no manifest beside the target: comparing with the target")
		default:
			c.log.Warn("manifest not trusted: comparing with the target", "reason", err)
		}
	}
	m.next, err = createManifest(sc, c.opts.BlockSize, size)
	if err != nil {
		m.next = nil
		c.log.Warn("this copy leaves no manifest (the next one compares with the target)", "reason", err)
	}
	c.resumed.Manifest, c.resumed.Against = "", ""
	if m.next != nil {
		c.resumed.Manifest = m.next.idString()
	}
	if m.old != nil {
		c.resumed.Against = m.old.idString()
	}
	return nil
}

// trusted says whether unit e may be compared with the old manifest.
func (m *manifestRun) trusted(*extentWork) bool {
	return m != nil && m.old != nil
}

// sync makes the new manifest's entries durable before a checkpoint
// claims them.
func (m *manifestRun) sync() error {
	if m == nil || m.next == nil {
		return nil
	}
	if err := m.next.f.Sync(); err != nil {
		return fmt.Errorf("sync new manifest: %w", err)
	}
	return nil
}

// record writes the entries of the blocks of [off, off+len(cur)*bs).
func (m *manifestRun) record(off int64, cur []entry) error {
	if m == nil || m.next == nil {
		return nil
	}
	return m.next.writeEntries(off/m.bs, cur)
}

// finish commits the new manifest after a successful copy. A manifest
// that cannot be committed is removed along with the old one: the next
// copy then compares with the target instead of trusting a stale one.
func (m *manifestRun) finish(dst volume.Volume) {
	err := fmt.Errorf("%w: none was written", errManifest)
	if m.next != nil {
		var st volume.FileState
		if st, err = settledState(dst.(volume.File)); err == nil {
			err = m.next.commit(m.sc, st)
		}
		if err == nil {
			return
		}
	}
	m.log.Warn("no manifest left beside the target (the next copy compares with the target)", "reason", err)
	if rerr := m.sc.RemoveSidecar(manifestSuffix); rerr != nil {
		m.log.Warn("could not remove the old manifest", "reason", rerr)
	}
}

// settledState is the target's state once the clock that stamps ctime has
// moved past the recorded ctime. A file system that stamps ctime from the
// coarse clock (one tick is up to 10 ms) does not change ctime for a write
// in the same tick as the last one: recorded earlier, a write right after
// the copy could leave the manifest looking current. Any write after this
// returns gets a later ctime.
func settledState(f volume.File) (volume.FileState, error) {
	deadline := time.Now().Add(settleLimit)
	for {
		st, err := f.State()
		if err != nil {
			return st, err
		}
		var now unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_REALTIME_COARSE, &now); err != nil {
			return st, fmt.Errorf("read the clock: %w", err)
		}
		if now.Sec > st.CtimeSec || now.Sec == st.CtimeSec && now.Nsec > st.CtimeNsec {
			return st, nil
		}
		if time.Now().After(deadline) {
			return st, fmt.Errorf("%w: the target's change time %d.%09d stays ahead of the clock", errManifest, st.CtimeSec, st.CtimeNsec)
		}
		time.Sleep(time.Millisecond) // the next tick of the coarse clock
	}
}

// settleLimit bounds settledState: many ticks of any kernel's clock.
const settleLimit = 200 * time.Millisecond

func (m *manifestRun) close() {
	if m.old != nil {
		m.old.f.Close()
	}
	if m.next != nil {
		m.next.f.Close()
	}
}

// unitEntries are the manifest entries of one extent's blocks, held in
// memory while the extent is copied: the old manifest's, read in one call
// when the walk of the extent starts, and the new ones the workers compute,
// written in one call once the extent is done. Per range, the manifest
// files cost a read and a write system call each: about 15k of them for
// 10k scattered changes in 1 GiB. Workers fill disjoint blocks of cur.
type unitEntries struct {
	first int64   // block of old[0] and cur[0]
	old   []entry // nil: the old manifest is not compared with
	cur   []entry // nil: this run leaves no manifest
}

// maxUnitEntries bounds one unit's entries held in memory, per manifest:
// 1 MiB, so a copy holds at most 6 MiB of them (old and new, lag+1 = 3
// units in flight), outside its buffer memory. The default unit (half a
// 256 MiB extent, 4 KiB blocks) needs 512 KiB. A larger unit goes to the
// files range by range, as before. A variable for the tests of that path.
var maxUnitEntries int64 = (1 << 20) / entrySize

// openUnit prepares e's entries: nil when the copy keeps no manifest or
// the extent has too many blocks.
func (m *manifestRun) openUnit(e *extentWork, size int64) error {
	if m == nil || (m.old == nil && m.next == nil) {
		return nil
	}
	first, last := e.off/m.bs, min((e.end+m.bs-1)/m.bs, (size+m.bs-1)/m.bs)
	if last-first > maxUnitEntries || last <= first {
		return nil
	}
	u := &unitEntries{first: first}
	if m.next != nil {
		u.cur = make([]entry, last-first)
	}
	if m.old != nil {
		u.old = make([]entry, last-first)
		if err := m.old.readEntries(first, u.old); err != nil {
			return err
		}
	}
	e.entries = u
	return nil
}

// oldOf and curOf return the n old or new entries of blocks from first,
// or nil when u does not hold all of them.
func (u *unitEntries) oldOf(first, n int64) []entry {
	if u == nil {
		return nil
	}
	return u.held(u.old, first, n)
}

func (u *unitEntries) curOf(first, n int64) []entry {
	if u == nil {
		return nil
	}
	return u.held(u.cur, first, n)
}

// holdsCur says whether u holds new entries: every range of its unit must
// then record into them (closeUnit writes them all, zeros included).
func (u *unitEntries) holdsCur() bool { return u != nil && u.cur != nil }

func (u *unitEntries) held(list []entry, first, n int64) []entry {
	if list == nil || first < u.first || first+n > u.first+int64(len(list)) {
		return nil
	}
	return list[first-u.first : first-u.first+n]
}

// closeUnit writes the new entries e held, skipping chunks that are all
// zero (the new manifest starts as a sparse file of zeros), and lets them
// go. The flusher calls it once every worker is done with e.
func (m *manifestRun) closeUnit(e *extentWork) error {
	u := e.entries
	e.entries = nil
	if m == nil || m.next == nil || u == nil || u.cur == nil {
		return nil
	}
	const chunk = 4096 // entries: 64 KiB a write
	for i := 0; i < len(u.cur); i += chunk {
		c := u.cur[i:min(i+chunk, len(u.cur))]
		if !slices.ContainsFunc(c, func(x entry) bool { return x != entry{} }) {
			continue
		}
		if err := m.next.writeEntries(u.first+int64(i), c); err != nil {
			return err
		}
	}
	return nil
}
