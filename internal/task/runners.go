package task

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/keys"
)

// RunnerInfo is a live runner, as it registers itself for one session.
type RunnerInfo struct {
	Node    string `json:"node"`
	Session string `json:"session"`
	// Capacity is the most tasks it runs at once; TypeCapacity limits
	// single types further.
	Capacity     int            `json:"capacity"`
	TypeCapacity map[string]int `json:"type_capacity,omitempty"`
	Types        []string       `json:"types"`
	Started      time.Time      `json:"started"`
}

// Marks are an operator's settings for a runner; they outlive its sessions.
type Marks struct {
	Cordoned bool      `json:"cordoned"`
	Draining bool      `json:"draining"`
	Updated  time.Time `json:"updated"`
}

// Runner is a runner as the dispatcher and `runner list` see it.
type Runner struct {
	Info    RunnerInfo `json:"info"`
	Marks   Marks      `json:"marks"`
	Live    bool       `json:"live"`
	Running int        `json:"running"`
	// RunningByType counts running tasks per type.
	RunningByType map[string]int `json:"running_by_type,omitempty"`
	// Starved: the runner's node is starved of CPU, by its member record
	// (the dispatcher sets it from the quorum's view).
	Starved bool `json:"starved,omitempty"`
}

// Accepts reports whether the runner may take r now, and if not, why.
func (rn *Runner) Accepts(r *Record) (bool, string) {
	switch {
	case !rn.Live:
		return false, "runner is not live"
	case rn.Marks.Cordoned || rn.Marks.Draining:
		return false, "runner is cordoned"
	case r.Node != "" && r.Node != rn.Info.Node:
		return false, "constraint node=" + r.Node
	case !slices.Contains(rn.Info.Types, r.Type):
		return false, "runner does not run type " + r.Type
	case rn.Running >= rn.Info.Capacity:
		return false, "runner is full"
	}
	if c, ok := rn.Info.TypeCapacity[r.Type]; ok && rn.RunningByType[r.Type] >= c {
		return false, "runner is full for type " + r.Type
	}
	return true, ""
}

// Register announces a runner for sess: its info key and its fencing key,
// both deleted by the store when sess ends. It returns the fencing
// condition every write of the runner carries: the session key exists,
// unmodified since this creation.
func (s *Store) Register(ctx context.Context, sess coord.Session, info RunnerInfo) (coord.Cond, error) {
	key, err := s.layout.RunnerKey(info.Node)
	if err != nil {
		return coord.Cond{}, err
	}
	skey, err := s.layout.SessionKey(sess.ID())
	if err != nil {
		return coord.Cond{}, err
	}
	b, err := json.Marshal(info)
	if err != nil {
		return coord.Cond{}, fmt.Errorf("encode runner info: %w", err)
	}
	// A runner key left by this node's previous session disappears when
	// that session expires, or when EndStaleRunner ends it; until then
	// the new one cannot be created.
	vers, err := s.kv.Txn(ctx, nil, []coord.Op{
		coord.CreateOp(skey, []byte(info.Node), sess),
		coord.CreateOp(key, b, sess),
	})
	if errors.Is(err, coord.ErrConflict) {
		// An earlier try whose answer was lost may have registered us.
		if kv, gerr := s.kv.Get(ctx, skey); gerr == nil {
			if cur, gerr := s.kv.Get(ctx, key); gerr == nil && bytes.Equal(cur.Value, b) {
				return coord.VersionIs(kv.Key, kv.Version), nil
			}
		}
	}
	if err != nil {
		return coord.Cond{}, fmt.Errorf("register runner %s: %w", info.Node, err)
	}
	return coord.VersionIs(skey, vers[0]), nil
}

// EndStaleRunner removes the runner key of node, and the fencing key of
// the session that wrote it, when that session is not sess: the records
// this node's previous session left. It returns that session's id ("" if
// there was nothing to remove, or the records changed meanwhile).
//
// Only the member that holds node's name may call it, on its own session
// (the quorum registered the name for this node id, and the runner runs
// as that member's duty): a previous session of this node either belongs
// to a process that is gone (the data directory's lock says so) or ended
// in this process, whose fence stopped its attempts before a new session
// began. The store would remove both keys when it expires that session;
// removed now, the session's writes fail from here on (their condition,
// the fencing key, is gone) and the leader gives its tasks back at once.
// On ZooKeeper, which cannot end another client's session, this is what
// spares a restarted node's tasks the wait for its old session to expire.
func (s *Store) EndStaleRunner(ctx context.Context, sess coord.Session, node string) (string, error) {
	key, err := s.layout.RunnerKey(node)
	if err != nil {
		return "", err
	}
	kv, err := s.kv.Get(ctx, key)
	if errors.Is(err, coord.ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read runner %s: %w", node, err)
	}
	old, err := DecodeRunner(s.layout.RunnersDir(), kv)
	if errors.Is(err, ErrInvalid) {
		return "", nil // written around taskd: not a session of ours to end
	}
	if err != nil {
		return "", err
	}
	if old.Session == sess.ID() {
		return "", nil
	}
	conds := []coord.Cond{coord.VersionIs(key, kv.Version)}
	ops := []coord.Op{coord.DeleteOp(key)}
	skey, err := s.layout.SessionKey(old.Session)
	if err != nil {
		return "", fmt.Errorf("runner %s names session %q: %w", node, old.Session, err)
	}
	switch skv, err := s.kv.Get(ctx, skey); {
	case errors.Is(err, coord.ErrNotFound):
	case err != nil:
		return "", fmt.Errorf("read session key of runner %s: %w", node, err)
	case string(skv.Value) != node:
		return "", fmt.Errorf("session key %s names runner %q, not %q", skey, skv.Value, node)
	default:
		conds = append(conds, coord.VersionIs(skey, skv.Version))
		ops = append(ops, coord.DeleteOp(skey))
	}
	if _, err := s.kv.Txn(ctx, conds, ops); errors.Is(err, coord.ErrConflict) || errors.Is(err, coord.ErrNotFound) {
		return "", nil
	} else if err != nil {
		return "", fmt.Errorf("end runner %s of session %s: %w", node, old.Session, err)
	}
	return old.Session, nil
}

// Runners lists every runner that is live or has marks, with its load.
func (s *Store) Runners(ctx context.Context) ([]Runner, error) {
	live, err := s.kv.List(ctx, s.layout.RunnersDir())
	if err != nil {
		return nil, fmt.Errorf("list runners: %w", err)
	}
	marks, err := s.kv.List(ctx, s.layout.RunnerConfigDir())
	if err != nil {
		return nil, fmt.Errorf("list runner marks: %w", err)
	}
	active, err := s.List(ctx, Filter{Status: "unfinished"})
	if err != nil {
		return nil, err
	}
	byNode := map[string]*Runner{}
	get := func(node string) *Runner {
		if r, ok := byNode[node]; ok {
			return r
		}
		r := &Runner{Info: RunnerInfo{Node: node}}
		byNode[node] = r
		return r
	}
	for _, kv := range live {
		info, err := DecodeRunner(s.layout.RunnersDir(), kv)
		if errors.Is(err, ErrInvalid) {
			continue // written around taskd: not a runner
		}
		if err != nil {
			return nil, err
		}
		rn := get(info.Node)
		rn.Info, rn.Live = info, true
	}
	for _, kv := range marks {
		node, err := keys.Child(s.layout.RunnerConfigDir(), kv.Key, keys.ValidName)
		if err != nil {
			continue // written around taskd: no runner's marks
		}
		var m Marks
		if err := json.Unmarshal(kv.Value, &m); err != nil {
			return nil, fmt.Errorf("runner marks %s: %w", kv.Key, err)
		}
		get(node).Marks = m
	}
	for _, r := range active {
		if r.State == Running {
			get(r.Runner).count(r)
		}
	}
	out := make([]Runner, 0, len(byNode))
	for _, r := range byNode {
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b Runner) int { return strings.Compare(a.Info.Node, b.Info.Node) })
	return out, nil
}

// DecodeRunner reads a live runner's record at kv.Key in dir (the runners
// directory). The key must name a valid node and the record the same node,
// with a valid session; otherwise the error wraps ErrInvalid.
func DecodeRunner(dir string, kv coord.KV) (RunnerInfo, error) {
	node, err := keys.Child(dir, kv.Key, keys.ValidName)
	if err != nil {
		return RunnerInfo{}, err
	}
	var info RunnerInfo
	if err := json.Unmarshal(kv.Value, &info); err != nil {
		return RunnerInfo{}, fmt.Errorf("runner record %s: %w", keys.Quote(kv.Key), err)
	}
	if info.Node != node {
		return RunnerInfo{}, fmt.Errorf("%w: runner record %s names node %s", ErrInvalid, keys.Quote(kv.Key), keys.Quote(info.Node))
	}
	if err := keys.ValidSession(info.Session); err != nil {
		return RunnerInfo{}, fmt.Errorf("runner record %s: %w", keys.Quote(kv.Key), err)
	}
	return info, nil
}

func (rn *Runner) count(r *Record) {
	rn.Running++
	if rn.RunningByType == nil {
		rn.RunningByType = map[string]int{}
	}
	rn.RunningByType[r.Type]++
}

// SetMarks changes a runner's marks. Without force the runner must be live,
// which catches typos.
func (s *Store) SetMarks(ctx context.Context, node string, force bool, f func(*Marks)) (Marks, error) {
	runner, err := s.layout.RunnerKey(node)
	if err != nil {
		return Marks{}, err
	}
	key, err := s.layout.RunnerConfigKey(node)
	if err != nil {
		return Marks{}, err
	}
	if !force {
		if _, err := s.kv.Get(ctx, runner); errors.Is(err, coord.ErrNotFound) {
			return Marks{}, fmt.Errorf("%w: no live runner named %s (use --force to mark it anyway)", ErrRunnerNotFound, node)
		} else if err != nil {
			return Marks{}, fmt.Errorf("read runner %s: %w", node, err)
		}
	}
	for range casRetries {
		var m Marks
		kv, err := s.kv.Get(ctx, key)
		switch {
		case errors.Is(err, coord.ErrNotFound):
		case err != nil:
			return Marks{}, fmt.Errorf("read runner marks: %w", err)
		default:
			if err := json.Unmarshal(kv.Value, &m); err != nil {
				return Marks{}, fmt.Errorf("runner marks %s: %w", key, err)
			}
		}
		f(&m)
		m.Updated = s.now().UTC()
		b, _ := json.Marshal(m)
		if kv.Version == 0 {
			_, err = s.kv.Create(ctx, key, b)
		} else {
			_, err = s.kv.Update(ctx, key, b, kv.Version)
		}
		if errors.Is(err, coord.ErrConflict) || errors.Is(err, coord.ErrExists) {
			continue
		}
		if err != nil {
			return Marks{}, fmt.Errorf("write runner marks: %w", err)
		}
		return m, nil
	}
	return Marks{}, fmt.Errorf("runner %s marks: %w", node, coord.ErrConflict)
}
