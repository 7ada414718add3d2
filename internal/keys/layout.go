package keys

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"
)

// Root is a validated store root: every key of a cluster lies under it.
//
// Layout under ROOT (default /taskd):
//
//	members/NAME             a member, bound to its session (quorum)
//	known/NAME               a node that has joined, persistent, with last-seen time
//	election/leader          the leader record (quorum)
//	election/epoch           the epoch counter, the leaders' fencing token
//	election/specified       who may lead
//	config/priority/NAME     an operator's priority for a node
//	config/runners/NAME      a runner's cordon and drain marks
//	config/type-limits/TYPE  an operator's cluster-wide limit of running tasks of TYPE
//	tasks/active/ID          unfinished task records
//	tasks/done/XY/ID         finished task records, sharded by ID[:2]
//	tasks/index/HOUR/TIME_ID one key per finished task, by creation time (index.go)
//	tasks/index-ready        every finished task has its index entry
//	tasks/idem/SHA256        an idempotency key in use: the task it made
//	tasks/logs/ID            a task's bounded output log (its runner, fenced)
//	assigned/NAME/ID         one key per task running on NAME
//	runners/NAME             a live runner (bound to its session)
//	sessions/SESSION         a runner session's fencing key
//	vips/config/SERVICE      a VIP as the operator set it
//	vips/assign/SERVICE      who should hold it (leader, fenced)
//	vips/held/SERVICE        who holds it (bound to the holder's session)
//	events/NAME/NNN          a node's ring of recent events
//	tokens/ID                an API token (hashed)
//	schedules/defs/NAME      a schedule as an operator set it
//	schedules/state/UID      what the leader fired for it (leader, fenced)
//	schedules/triggers/NAME@ID  a pending trigger request
type Root struct{ dir string }

// NewRoot validates dir (see ValidRoot).
func NewRoot(dir string) (Root, error) {
	if err := ValidRoot(dir); err != nil {
		return Root{}, err
	}
	return Root{dir: dir}, nil
}

// String is the root directory.
func (r Root) String() string { return r.dir }

// child builds DIR/SEG after valid accepted seg. Every builder ends here.
func child(dir, seg string, valid func(string) error) (string, error) {
	if err := valid(seg); err != nil {
		return "", err
	}
	return dir + "/" + seg, nil
}

// Child returns the one segment of key below dir, checked by valid: the
// inverse of a builder, for keys read from the store (a watch or a list).
// A key that is not DIR/SEGMENT with a valid segment is an error.
func Child(dir, key string, valid func(string) error) (string, error) {
	seg, ok := cutPrefix(key, dir+"/")
	if !ok {
		return "", refuse("key", key, "it is not in "+dir)
	}
	if !segment(seg) {
		return "", refuse("key", key, "it is not one segment below "+dir)
	}
	if err := valid(seg); err != nil {
		return "", err
	}
	return seg, nil
}

// Tasks is the task center's part of the layout.
type Tasks struct{ root string }

// Tasks returns the task center's layout.
func (r Root) Tasks() Tasks { return Tasks{root: r.dir} }

// ActiveDir holds the unfinished records.
func (t Tasks) ActiveDir() string { return t.root + "/tasks/active" }

// ActiveKey is the key of unfinished task id.
func (t Tasks) ActiveKey(id string) (string, error) { return child(t.ActiveDir(), id, ValidTaskID) }

// DoneDir holds the shards of finished records.
func (t Tasks) DoneDir() string { return t.root + "/tasks/done" }

// DoneShardDir is the directory of one shard of DoneDir.
func (t Tasks) DoneShardDir(shard string) (string, error) {
	return child(t.DoneDir(), shard, ValidShard)
}

// DoneKey is the key of finished task id, in the shard of its first two
// hex digits.
func (t Tasks) DoneKey(id string) (string, error) {
	if err := ValidTaskID(id); err != nil {
		return "", err
	}
	dir, err := t.DoneShardDir(id[:2])
	if err != nil {
		return "", err
	}
	return child(dir, id, ValidTaskID)
}

// TypeLimitsDir holds the operators' cluster-wide limits per task type.
func (t Tasks) TypeLimitsDir() string { return t.root + "/config/type-limits" }

// TypeLimitKey is the limit of task type typ.
func (t Tasks) TypeLimitKey(typ string) (string, error) {
	return child(t.TypeLimitsDir(), typ, ValidTaskType)
}

// LogsDir holds one bounded output log per task that wrote one.
func (t Tasks) LogsDir() string { return t.root + "/tasks/logs" }

// LogKey is the output log of task id.
func (t Tasks) LogKey(id string) (string, error) { return child(t.LogsDir(), id, ValidTaskID) }

// IdemDir holds one record per idempotency key in use: the task it made.
func (t Tasks) IdemDir() string { return t.root + "/tasks/idem" }

// IdemKey is the record of idempotency key k, named by its SHA-256.
func (t Tasks) IdemKey(k string) (string, error) {
	if err := ValidIdempotencyKey(k); err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(k))
	return child(t.IdemDir(), hex.EncodeToString(sum[:]), ValidDigest)
}

// AssignDir holds one key per task running on node.
func (t Tasks) AssignDir(node string) (string, error) {
	return child(t.root+"/assigned", node, ValidName)
}

// AssignKey is the assignment key of task id on node.
func (t Tasks) AssignKey(node, id string) (string, error) {
	dir, err := t.AssignDir(node)
	if err != nil {
		return "", err
	}
	return child(dir, id, ValidTaskID)
}

// RunnersDir holds the live runners.
func (t Tasks) RunnersDir() string { return t.root + "/runners" }

// RunnerKey is the key of node's live runner.
func (t Tasks) RunnerKey(node string) (string, error) { return child(t.RunnersDir(), node, ValidName) }

// SessionsDir holds the runner sessions' fencing keys.
func (t Tasks) SessionsDir() string { return t.root + "/sessions" }

// SessionKey is the fencing key of a runner session.
func (t Tasks) SessionKey(session string) (string, error) {
	return child(t.SessionsDir(), session, ValidSession)
}

// RunnerConfigDir holds the runners' cordon and drain marks.
func (t Tasks) RunnerConfigDir() string { return t.root + "/config/runners" }

// RunnerConfigKey is the key of node's marks.
func (t Tasks) RunnerConfigKey(node string) (string, error) {
	return child(t.RunnerConfigDir(), node, ValidName)
}

// Quorum is membership's and the election's part of the layout.
type Quorum struct{ root string }

// Quorum returns the membership and election layout.
func (r Root) Quorum() Quorum { return Quorum{root: r.dir} }

// MembersDir holds the member records.
func (q Quorum) MembersDir() string { return q.root + "/members" }

// MemberKey is the record of member name.
func (q Quorum) MemberKey(name string) (string, error) { return child(q.MembersDir(), name, ValidName) }

// KnownDir holds one persistent record per node that has joined: unlike
// MembersDir it outlives the node's session, so a dead member stays
// visible (as down) until an operator forgets it.
func (q Quorum) KnownDir() string { return q.root + "/known" }

// KnownKey is the known-member record of node name.
func (q Quorum) KnownKey(name string) (string, error) { return child(q.KnownDir(), name, ValidName) }

// SilenceDir holds one record per embedded etcd member, bound to its
// session: the peers its raft transport has not been connected to for a
// session timeout (internal/peerwatch).
func (q Quorum) SilenceDir() string { return q.root + "/silence" }

// SilenceKey is the silence record of node name.
func (q Quorum) SilenceKey(name string) (string, error) {
	return child(q.SilenceDir(), name, ValidName)
}

// ElectionDir holds the leader, epoch and specified-members records.
func (q Quorum) ElectionDir() string { return q.root + "/election" }

// LeaderKey is the leader record.
func (q Quorum) LeaderKey() string { return q.ElectionDir() + "/leader" }

// EpochKey is the epoch counter.
func (q Quorum) EpochKey() string { return q.ElectionDir() + "/epoch" }

// SpecifiedKey restricts who may lead.
func (q Quorum) SpecifiedKey() string { return q.ElectionDir() + "/specified" }

// PriorityDir holds operators' priorities.
func (q Quorum) PriorityDir() string { return q.root + "/config/priority" }

// PriorityKey is the stored priority of node name.
func (q Quorum) PriorityKey(name string) (string, error) {
	return child(q.PriorityDir(), name, ValidName)
}

// VIPs is the virtual IPs' part of the layout.
type VIPs struct{ root string }

// VIPs returns the VIP layout.
func (r Root) VIPs() VIPs { return VIPs{root: r.dir} }

// ConfigDir holds the VIPs as operators set them.
func (v VIPs) ConfigDir() string { return v.root + "/vips/config" }

// AssignDir holds the leader's assignments.
func (v VIPs) AssignDir() string { return v.root + "/vips/assign" }

// HeldDir holds the holders' records.
func (v VIPs) HeldDir() string { return v.root + "/vips/held" }

// ConfigKey is the configuration of VIP service.
func (v VIPs) ConfigKey(service string) (string, error) {
	return child(v.ConfigDir(), service, ValidService)
}

// AssignKey is the assignment of VIP service.
func (v VIPs) AssignKey(service string) (string, error) {
	return child(v.AssignDir(), service, ValidService)
}

// HeldKey is the holder record of VIP service.
func (v VIPs) HeldKey(service string) (string, error) {
	return child(v.HeldDir(), service, ValidService)
}

// NodesDir holds each node's published VIP allowlist.
func (v VIPs) NodesDir() string { return v.root + "/vips/nodes" }

// NodeKey is the VIP allowlist record of a node.
func (v VIPs) NodeKey(node string) (string, error) {
	return child(v.NodesDir(), node, ValidName)
}

// Events is the event rings' part of the layout.
type Events struct{ root string }

// Events returns the event rings' layout.
func (r Root) Events() Events { return Events{root: r.dir} }

// Dir holds one ring per node.
func (e Events) Dir() string { return e.root + "/events" }

// RingDir is node's ring.
func (e Events) RingDir(node string) (string, error) { return child(e.Dir(), node, ValidName) }

// SlotKey is slot n (0..MaxSlot) of node's ring, named with three digits.
func (e Events) SlotKey(node string, n int) (string, error) {
	dir, err := e.RingDir(node)
	if err != nil {
		return "", err
	}
	if err := ValidSlot(n); err != nil {
		return "", err
	}
	s := strconv.Itoa(n)
	for len(s) < 3 {
		s = "0" + s
	}
	return dir + "/" + s, nil
}

// Tokens is the API tokens' part of the layout.
type Tokens struct{ root string }

// Tokens returns the API tokens' layout.
func (r Root) Tokens() Tokens { return Tokens{root: r.dir} }

// Dir holds the token records.
func (t Tokens) Dir() string { return t.root + "/tokens" }

// TokenKey is the record of token id.
func (t Tokens) TokenKey(id string) (string, error) { return child(t.Dir(), id, ValidTokenID) }

// Schedules is the recurring schedules' part of the layout.
type Schedules struct{ root string }

// Schedules returns the schedules' layout.
func (r Root) Schedules() Schedules { return Schedules{root: r.dir} }

// DefsDir holds the schedule definitions.
func (s Schedules) DefsDir() string { return s.root + "/schedules/defs" }

// StateDir holds the leader's per-schedule state.
func (s Schedules) StateDir() string { return s.root + "/schedules/state" }

// TriggersDir holds pending trigger requests.
func (s Schedules) TriggersDir() string { return s.root + "/schedules/triggers" }

// DefKey is the definition of schedule name.
func (s Schedules) DefKey(name string) (string, error) {
	return child(s.DefsDir(), name, ValidSchedule)
}

// StateKey is the state of the schedule with uid.
func (s Schedules) StateKey(uid string) (string, error) {
	return child(s.StateDir(), uid, ValidUID)
}

// TriggerKey is trigger request id of schedule name: NAME@ID.
func (s Schedules) TriggerKey(name, id string) (string, error) {
	if err := ValidSchedule(name); err != nil {
		return "", err
	}
	return child(s.TriggersDir(), name+"@"+id, validTrigger)
}

// ParseTrigger reads NAME and ID back from a trigger key.
func (s Schedules) ParseTrigger(key string) (name, id string, err error) {
	seg, err := Child(s.TriggersDir(), key, validTrigger)
	if err != nil {
		return "", "", err
	}
	name, id, _ = strings.Cut(seg, "@")
	return name, id, nil
}

// validTrigger checks a NAME@ID trigger segment.
func validTrigger(seg string) error {
	name, id, ok := strings.Cut(seg, "@")
	if !ok {
		return refuse("trigger", seg, "want NAME@ID")
	}
	if err := ValidSchedule(name); err != nil {
		return err
	}
	return ValidUID(id)
}
