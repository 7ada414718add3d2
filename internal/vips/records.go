// Package vips keeps the cluster's virtual IPs in the coordination store
// and decides, fenced, which node holds each one.
//
//   - The Registry is the operator's side: set, list, delete and drain.
//   - The Assigner runs on the leader. It writes one holder assignment per
//     VIP, with the leader's fence, so a deposed leader cannot move a VIP.
//   - The Holder runs on every node. It holds the VIPs assigned to it, and
//     only after the previous holder has released them.
//
// Store layout under ROOT (keys.VIPs builds every key):
//
//	vips/config/SERVICE   the VIP (address, interface, preferred node)
//	vips/assign/SERVICE   the node and session that should hold it (leader, fenced)
//	vips/held/SERVICE     who holds it now; bound to the holder's session
//	vips/nodes/NODE       the node's VIP allowlist (NodePolicy), written by its holder
//
// At most one holder: a node adds the address only after it has created
// vips/held/SERVICE, which exists once; it deletes that key only after the
// address is gone from its interface. A holder that dies loses the key with
// its session, and its address expires with its kernel lifetime (about 2 s,
// see package vipaddr) before the store can expire the session.
package vips

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/quorum"
	"github.com/taskd/taskd/internal/vipaddr"
)

// ErrNotFound: no VIP is configured for the service.
var ErrNotFound = errors.New("no such vip")

// ErrInUse: the address is already used by a member or another VIP.
var ErrInUse = errors.New("address already in use")

// ErrNoTarget: a drain found no node to move the VIP to.
var ErrNoTarget = errors.New("no eligible node")

// ServiceVIP is one VIP as the operator set it.
type ServiceVIP struct {
	Service   string `json:"service"`
	Address   string `json:"address"` // IP/PREFIX
	Interface string `json:"interface"`
	// Preferred is the node a drain moved the VIP to. It holds the VIP
	// while it is a live, healthy member; when it is not, the preference is
	// dropped and the VIP goes back to the leader.
	Preferred string    `json:"preferred,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Spec is the VIP as package vipaddr holds it.
func (c ServiceVIP) Spec() (vipaddr.Spec, error) {
	p, err := vipaddr.ParsePrefix(c.Address)
	if err != nil {
		return vipaddr.Spec{}, err
	}
	s := vipaddr.Spec{Service: c.Service, Prefix: p, Interface: c.Interface}
	return s, s.Validate()
}

// Assignment names the node, and the session of that node, that should hold
// a VIP. Only the leader writes it, under its fence.
type Assignment struct {
	Node    string    `json:"node"`
	Session string    `json:"session"`
	Epoch   int64     `json:"epoch"`
	Since   time.Time `json:"since"`
	Reason  string    `json:"reason"`
}

// Held is the holder's own record, bound to its session.
type Held struct {
	Node    string    `json:"node"`
	Session string    `json:"session"`
	Since   time.Time `json:"since"`
	// Up is true while the address is on the interface; Error says why it
	// is not (another host answers for it, the interface is missing).
	Up    bool   `json:"up"`
	Error string `json:"error,omitempty"`
}

// NodePolicy is a node's VIP allowlist as its holder publishes it. The
// leader does not assign a VIP to a member whose policy refuses it, the
// registry shows the refusals, and a drain refuses such a target. A member
// without a record (not started yet, or an older taskd) allows every VIP;
// its holder still refuses at hold time what its policy does not allow.
type NodePolicy struct {
	Node      string         `json:"node"`
	Policy    vipaddr.Policy `json:"policy"`
	UpdatedAt time.Time      `json:"updated_at"`
}

// refusals maps each member that refuses spec to its reason; policies are
// the published NodePolicy records by node.
func refusals(spec vipaddr.Spec, members []quorum.Member, policies map[string]vipaddr.Policy) map[string]string {
	var out map[string]string
	for _, m := range members {
		p, ok := policies[m.Name]
		if !ok {
			continue
		}
		if err := p.Check(spec); err != nil {
			if out == nil {
				out = map[string]string{}
			}
			out[m.Name] = err.Error()
		}
	}
	return out
}

// policiesOf decodes the NodePolicy records of a vips/nodes listing; an
// unreadable record counts as absent.
func policiesOf(kvs map[string]coord.KV) map[string]vipaddr.Policy {
	out := make(map[string]vipaddr.Policy, len(kvs))
	for name, kv := range kvs {
		if p, err := decode[NodePolicy](kv.Key, kv.Value); err == nil {
			out[name] = p.Policy
		}
	}
	return out
}

func decode[T any](key string, b []byte) (T, error) {
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		return v, fmt.Errorf("decode %s: %w", key, err)
	}
	return v, nil
}

// encode marshals a record of strings, booleans, numbers and times, which
// always marshals.
func encode(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}
