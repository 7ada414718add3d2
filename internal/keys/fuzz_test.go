package keys_test

import (
	"errors"
	"fmt"
	"path"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/taskd/taskd/internal/keys"
)

// One fuzz target per key builder. The property, for any input: the
// builder returns an error wrapping ErrInvalid and no key, or a key that is
// exactly its directory, "/" and the input as one safe segment, which the
// segment's validator accepts and Child reads back. `go test` runs every
// target on its seed corpus; `make fuzz` runs each under the fuzzer.

const id = "0f8fad5b-d9cb-469f-a165-70867728950e"

// seeds are inputs every target starts from: valid values of each kind,
// the hostile list, and near-misses.
var seeds = append([]string{
	"n1", "iscsi", id, "0f", "lease-1a2b", "zk-10000abcd", "0123abcd", "local-n1", "sleep",
	"0F8FAD5B-D9CB-469F-A165-70867728950E", id + "/..", "../" + id, id[:35], "n1/../n2", " n1", "n1 ",
}, hostile...)

func testRoot(t testing.TB) keys.Root {
	r, err := keys.NewRoot("/taskd")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// safe is the fuzz oracle, written apart from the package: one non-empty
// segment, not "." or "..", no slash, no control character, valid UTF-8,
// at most MaxSegment bytes.
func safe(s string) bool {
	if s == "" || s == "." || s == ".." || len(s) > keys.MaxSegment || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r == '/' || r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

// checkKey holds one builder's result to the property: key is dir/seg.
func checkKey(t *testing.T, dir, seg, key string, err error, valid func(string) error) {
	t.Helper()
	if err != nil {
		if !errors.Is(err, keys.ErrInvalid) || key != "" {
			t.Fatalf("input %q: error %v (key %q): want an error wrapping ErrInvalid and no key", seg, err, key)
		}
		return
	}
	if key != dir+"/"+seg {
		t.Fatalf("input %q: key %q is not %s/<input>", seg, key, dir)
	}
	if !safe(seg) {
		t.Fatalf("input %q: accepted an unsafe segment into %q", seg, key)
	}
	if path.Clean(key) != key || path.Dir(key) != dir {
		t.Fatalf("input %q: key %q leaves %s once cleaned", seg, key, dir)
	}
	if err := valid(seg); err != nil {
		t.Fatalf("input %q: built a key the validator refuses: %v", seg, err)
	}
	if back, err := keys.Child(dir, key, valid); err != nil || back != seg {
		t.Fatalf("input %q: Child(%s, %s) = %q, %v", seg, dir, key, back, err)
	}
}

// fuzzBuilder runs the property over a one-segment builder.
func fuzzBuilder(f *testing.F, dir string, build func(string) (string, error), valid func(string) error) {
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		key, err := build(s)
		checkKey(t, dir, s, key, err, valid)
	})
}

func FuzzActiveKey(f *testing.F) {
	tk := testRoot(f).Tasks()
	fuzzBuilder(f, tk.ActiveDir(), tk.ActiveKey, keys.ValidTaskID)
}

func FuzzDoneShardDir(f *testing.F) {
	tk := testRoot(f).Tasks()
	fuzzBuilder(f, tk.DoneDir(), tk.DoneShardDir, keys.ValidShard)
}

func FuzzDoneKey(f *testing.F) {
	tk := testRoot(f).Tasks()
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		key, err := tk.DoneKey(s)
		dir := tk.DoneDir() + "/" + s[:min(2, len(s))]
		checkKey(t, dir, s, key, err, keys.ValidTaskID)
		if err == nil && path.Dir(dir) != tk.DoneDir() {
			t.Fatalf("input %q: shard of %q is not one segment", s, key)
		}
	})
}

func FuzzAssignDir(f *testing.F) {
	tk := testRoot(f).Tasks()
	fuzzBuilder(f, "/taskd/assigned", tk.AssignDir, keys.ValidName)
}

func FuzzAssignKey(f *testing.F) {
	tk := testRoot(f).Tasks()
	for _, s := range seeds {
		f.Add("n1", s)
		f.Add(s, id)
	}
	f.Fuzz(func(t *testing.T, node, task string) {
		key, err := tk.AssignKey(node, task)
		if err != nil {
			checkKey(t, "", task, key, err, keys.ValidTaskID)
			return
		}
		dir, derr := tk.AssignDir(node)
		checkKey(t, "/taskd/assigned", node, dir, derr, keys.ValidName)
		checkKey(t, dir, task, key, nil, keys.ValidTaskID)
	})
}

func FuzzRunnerKey(f *testing.F) {
	tk := testRoot(f).Tasks()
	fuzzBuilder(f, tk.RunnersDir(), tk.RunnerKey, keys.ValidName)
}

func FuzzSessionKey(f *testing.F) {
	tk := testRoot(f).Tasks()
	fuzzBuilder(f, tk.SessionsDir(), tk.SessionKey, keys.ValidSession)
}

func FuzzRunnerConfigKey(f *testing.F) {
	tk := testRoot(f).Tasks()
	fuzzBuilder(f, tk.RunnerConfigDir(), tk.RunnerConfigKey, keys.ValidName)
}

func FuzzMemberKey(f *testing.F) {
	q := testRoot(f).Quorum()
	fuzzBuilder(f, q.MembersDir(), q.MemberKey, keys.ValidName)
}

func FuzzKnownKey(f *testing.F) {
	q := testRoot(f).Quorum()
	fuzzBuilder(f, q.KnownDir(), q.KnownKey, keys.ValidName)
}

func FuzzSilenceKey(f *testing.F) {
	q := testRoot(f).Quorum()
	fuzzBuilder(f, q.SilenceDir(), q.SilenceKey, keys.ValidName)
}

func FuzzPriorityKey(f *testing.F) {
	q := testRoot(f).Quorum()
	fuzzBuilder(f, q.PriorityDir(), q.PriorityKey, keys.ValidName)
}

func FuzzVIPConfigKey(f *testing.F) {
	v := testRoot(f).VIPs()
	fuzzBuilder(f, v.ConfigDir(), v.ConfigKey, keys.ValidService)
}

func FuzzVIPAssignKey(f *testing.F) {
	v := testRoot(f).VIPs()
	fuzzBuilder(f, v.AssignDir(), v.AssignKey, keys.ValidService)
}

func FuzzVIPHeldKey(f *testing.F) {
	v := testRoot(f).VIPs()
	fuzzBuilder(f, v.HeldDir(), v.HeldKey, keys.ValidService)
}

func FuzzVIPNodeKey(f *testing.F) {
	v := testRoot(f).VIPs()
	fuzzBuilder(f, v.NodesDir(), v.NodeKey, keys.ValidName)
}

func FuzzEventRingDir(f *testing.F) {
	e := testRoot(f).Events()
	fuzzBuilder(f, e.Dir(), e.RingDir, keys.ValidName)
}

func FuzzEventSlotKey(f *testing.F) {
	e := testRoot(f).Events()
	for _, s := range seeds {
		f.Add(s, 7)
	}
	for _, n := range []int{-1, 0, 499, 999, 1000, -1000, 1 << 40} {
		f.Add("n1", n)
	}
	f.Fuzz(func(t *testing.T, node string, n int) {
		key, err := e.SlotKey(node, n)
		if err != nil {
			checkKey(t, "", node, key, err, keys.ValidName)
			return
		}
		dir, derr := e.RingDir(node)
		checkKey(t, e.Dir(), node, dir, derr, keys.ValidName)
		checkKey(t, dir, fmt.Sprintf("%03d", n), key, nil, func(s string) error {
			if len(s) != 3 || strings.Trim(s, "0123456789") != "" {
				return fmt.Errorf("%w: slot %q", keys.ErrInvalid, s)
			}
			return nil
		})
	})
}

func FuzzTokenKey(f *testing.F) {
	tok := testRoot(f).Tokens()
	fuzzBuilder(f, tok.Dir(), tok.TokenKey, keys.ValidTokenID)
}

// FuzzNewRoot: a root is an error, or an absolute clean path of safe
// segments that no builder can leave.
func FuzzNewRoot(f *testing.F) {
	for _, s := range seeds {
		f.Add(s)
		f.Add("/" + s)
		f.Add("/taskd/" + s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := keys.NewRoot(s)
		if err != nil {
			if !errors.Is(err, keys.ErrInvalid) {
				t.Fatalf("root %q: error %v does not wrap ErrInvalid", s, err)
			}
			return
		}
		if r.String() != s || path.Clean(s) != s || !path.IsAbs(s) || s == "/" {
			t.Fatalf("root %q accepted but not an absolute clean path", s)
		}
		for _, seg := range strings.Split(s[1:], "/") {
			if !safe(seg) || strings.HasPrefix(seg, ".") {
				t.Fatalf("root %q accepted with segment %q", s, seg)
			}
		}
		if k, err := r.Tasks().ActiveKey(id); err != nil || path.Clean(k) != k || !strings.HasPrefix(k, s+"/") {
			t.Fatalf("root %q: active key %q, %v", s, k, err)
		}
	})
}

// FuzzChild: Child returns a segment only for a key that is exactly
// DIR/SEGMENT with a valid, safe segment.
func FuzzChild(f *testing.F) {
	for _, s := range seeds {
		f.Add("/taskd/members/" + s)
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		const dir = "/taskd/members"
		seg, err := keys.Child(dir, key, keys.ValidName)
		if err != nil {
			if !errors.Is(err, keys.ErrInvalid) {
				t.Fatalf("key %q: error %v does not wrap ErrInvalid", key, err)
			}
			return
		}
		if key != dir+"/"+seg || !safe(seg) || keys.ValidName(seg) != nil {
			t.Fatalf("key %q: Child gave %q", key, seg)
		}
	})
}

func FuzzScheduleDefKey(f *testing.F) {
	s := testRoot(f).Schedules()
	fuzzBuilder(f, s.DefsDir(), s.DefKey, keys.ValidSchedule)
}

func FuzzScheduleStateKey(f *testing.F) {
	s := testRoot(f).Schedules()
	fuzzBuilder(f, s.StateDir(), s.StateKey, keys.ValidUID)
}
