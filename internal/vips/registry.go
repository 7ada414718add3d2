package vips

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/quorum"
	"github.com/taskd/taskd/internal/vip"
)

// Registry is the operator's side of the VIPs: set, list, delete, drain.
type Registry struct {
	store coord.Store
	l     layout
	view  func() quorum.View
	// localAddrs lists the addresses on the answering node's interfaces
	// with their labels; nil skips that check.
	localAddrs func() (map[netip.Addr]string, error)
}

// NewRegistry returns the registry under root. view is the answering node's
// picture of the cluster: members are checked against it.
func NewRegistry(store coord.Store, root string, view func() quorum.View, localAddrs func() (map[netip.Addr]string, error)) *Registry {
	return &Registry{store: store, l: layout{root: root}, view: view, localAddrs: localAddrs}
}

// Set creates or changes the VIP of c.Service. It validates the address
// (vip.Spec.Validate: no reserved range, no prefix shorter than
// vip.MinPrefixBits), the interface name and the label, and refuses an
// address that a member advertises, that is on the answering node's
// interfaces without the VIP's label, or that another VIP uses, and a VIP
// that every live member's allowlist refuses. A drain preference of an
// existing VIP is kept.
func (r *Registry) Set(ctx context.Context, c Config) (Config, error) {
	spec, err := c.Spec()
	if err != nil {
		return Config{}, err
	}
	if err := r.someoneAllows(ctx, spec); err != nil {
		return Config{}, err
	}
	c.Address = spec.Prefix.String()
	addr := spec.Prefix.Addr()
	for _, m := range r.view().Members {
		if host, _, err := net.SplitHostPort(m.Address); err == nil {
			if a, err := netip.ParseAddr(host); err == nil && a == addr {
				return Config{}, fmt.Errorf("%w: member %s advertises %s", ErrInUse, m.Name, addr)
			}
		}
	}
	kvs, err := r.store.List(ctx, r.l.configDir())
	if err != nil {
		return Config{}, fmt.Errorf("list vips: %w", err)
	}
	var old *coord.KV
	for _, kv := range kvs {
		o, err := decode[Config](kv.Key, kv.Value)
		if err != nil {
			return Config{}, err
		}
		if o.Service == c.Service {
			old = &kv
			c.Preferred = o.Preferred
			continue
		}
		if p, err := vip.ParsePrefix(o.Address); err == nil && p.Addr() == addr {
			return Config{}, fmt.Errorf("%w: vip %s already uses %s", ErrInUse, o.Service, addr)
		}
	}
	if r.localAddrs != nil {
		local, err := r.localAddrs()
		if err != nil {
			return Config{}, fmt.Errorf("list this node's addresses: %w", err)
		}
		if label, ok := local[addr]; ok && label != spec.Label() {
			return Config{}, fmt.Errorf("%w: %s is on an interface of node %s (label %q)", ErrInUse, addr, r.view().Self, label)
		}
	}
	c.UpdatedAt = time.Now().UTC()
	if old == nil {
		if _, err := r.store.Create(ctx, r.l.configKey(c.Service), encode(c)); err != nil {
			return Config{}, fmt.Errorf("create vip %s: %w", c.Service, err)
		}
		return c, nil
	}
	if _, err := r.store.Update(ctx, old.Key, encode(c), old.Version); err != nil {
		return Config{}, fmt.Errorf("update vip %s: %w", c.Service, err)
	}
	return c, nil
}

// policies reads the members' published allowlists.
func (r *Registry) policies(ctx context.Context) (map[string]vip.Policy, error) {
	kvs, err := r.store.List(ctx, r.l.nodesDir())
	if err != nil {
		return nil, fmt.Errorf("list the nodes' vip allowlists: %w", err)
	}
	byName := make(map[string]coord.KV, len(kvs))
	for _, kv := range kvs {
		byName[path.Base(kv.Key)] = kv
	}
	return policiesOf(byName), nil
}

// someoneAllows refuses a VIP that every live member refuses: nobody
// would hold it.
func (r *Registry) someoneAllows(ctx context.Context, spec vip.Spec) error {
	members := r.view().Members
	if len(members) == 0 {
		return nil
	}
	pols, err := r.policies(ctx)
	if err != nil {
		return err
	}
	no := refusals(spec, members, pols)
	if len(no) < len(members) {
		return nil
	}
	why := make([]string, 0, len(no))
	for _, n := range slices.Sorted(maps.Keys(no)) {
		why = append(why, n+": "+no[n])
	}
	return fmt.Errorf("%w: every live member refuses %s on %s (%s); change --vip-allow-interface/--vip-allow-cidr or the vip",
		ErrNoTarget, spec.Prefix, spec.Interface, strings.Join(why, "; "))
}

// Seed creates the VIP if the service has none (taskd's --vip flag); an
// existing VIP is left as the operator set it.
func (r *Registry) Seed(ctx context.Context, spec vip.Spec) error {
	c := Config{Service: spec.Service, Address: spec.Prefix.String(), Interface: spec.Interface, UpdatedAt: time.Now().UTC()}
	_, err := r.store.Create(ctx, r.l.configKey(c.Service), encode(c))
	if err != nil && !errors.Is(err, coord.ErrExists) {
		return fmt.Errorf("seed vip %s: %w", c.Service, err)
	}
	return nil
}

// Delete removes the VIP; its holder releases the address.
func (r *Registry) Delete(ctx context.Context, service string) error {
	kv, err := r.get(ctx, service)
	if err != nil {
		return err
	}
	if err := r.store.Delete(ctx, kv.Key, kv.Version); err != nil {
		return fmt.Errorf("delete vip %s: %w", service, err)
	}
	return nil
}

func (r *Registry) get(ctx context.Context, service string) (coord.KV, error) {
	kv, err := r.store.Get(ctx, r.l.configKey(service))
	if errors.Is(err, coord.ErrNotFound) {
		return coord.KV{}, fmt.Errorf("%w: %q (taskctl vip list shows the configured ones)", ErrNotFound, service)
	}
	if err != nil {
		return coord.KV{}, fmt.Errorf("read vip %s: %w", service, err)
	}
	return kv, nil
}

// Drain moves the VIP to node to, or, when to is empty, to another live,
// healthy member (the leader first, then by priority). It records the
// target as the VIP's preferred node and returns it; the leader then
// reassigns the VIP.
func (r *Registry) Drain(ctx context.Context, service, to string) (string, error) {
	kv, err := r.get(ctx, service)
	if err != nil {
		return "", err
	}
	c, err := decode[Config](kv.Key, kv.Value)
	if err != nil {
		return "", err
	}
	current := ""
	if h, err := r.store.Get(ctx, r.l.heldKey(service)); err == nil {
		if held, err := decode[Held](h.Key, h.Value); err == nil {
			current = held.Node
		}
	}
	v := r.view()
	if spec, err := c.Spec(); err == nil {
		pols, err := r.policies(ctx)
		if err != nil {
			return "", err
		}
		if why, ok := refusals(spec, v.Members, pols)[to]; ok {
			return "", fmt.Errorf("drain vip %s: %w: %s refuses it: %s", service, ErrNoTarget, to, why)
		}
		v.Members, _ = allowing(spec, v.Members, pols)
	}
	target, err := drainTarget(v, current, to)
	if err != nil {
		return "", fmt.Errorf("drain vip %s: %w", service, err)
	}
	c.Preferred, c.UpdatedAt = target, time.Now().UTC()
	if _, err := r.store.Update(ctx, kv.Key, encode(c), kv.Version); err != nil {
		return "", fmt.Errorf("drain vip %s: %w", service, err)
	}
	return target, nil
}

// drainTarget picks where a drain sends a VIP held by current.
func drainTarget(v quorum.View, current, to string) (string, error) {
	if to != "" {
		i := slices.IndexFunc(v.Members, func(m quorum.Member) bool { return m.Name == to })
		switch {
		case i < 0:
			return "", fmt.Errorf("%w: %q is not a live member", ErrNoTarget, to)
		case v.Members[i].Health != "ok":
			return "", fmt.Errorf("%w: %s is unhealthy (%s)", ErrNoTarget, to, v.Members[i].HealthReason)
		case to == current:
			return "", fmt.Errorf("%w: %s already holds it", ErrNoTarget, to)
		}
		return to, nil
	}
	var cands []quorum.Member
	for _, m := range v.Members {
		if m.Name != current && m.Health == "ok" {
			cands = append(cands, m)
		}
	}
	if len(cands) == 0 {
		return "", fmt.Errorf("%w: no live, healthy member other than %q", ErrNoTarget, current)
	}
	slices.SortFunc(cands, func(a, b quorum.Member) int {
		if (a.Name == v.Leader) != (b.Name == v.Leader) {
			if a.Name == v.Leader {
				return -1
			}
			return 1
		}
		if c := cmp.Compare(b.CurrentPriority, a.CurrentPriority); c != 0 {
			return c
		}
		return cmp.Compare(a.Name, b.Name)
	})
	return cands[0].Name, nil
}

// Status is one VIP with its assignment and its holder.
type Status struct {
	Config   Config
	Assigned *Assignment // nil until the leader assigned it
	Held     *Held       // nil while nobody holds it
	// HolderHealth is the holder's health as the answering node sees it.
	HolderHealth string
	// Refused maps the live members whose allowlist refuses the VIP to
	// their reason; the leader does not assign it to them.
	Refused map[string]string
}

// List returns every VIP, sorted by service.
func (r *Registry) List(ctx context.Context) ([]Status, error) {
	dirs := [...]string{r.l.configDir(), r.l.assignDir(), r.l.heldDir(), r.l.nodesDir()}
	var lists [len(dirs)][]coord.KV
	for i, d := range dirs {
		kvs, err := r.store.List(ctx, d)
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", d, err)
		}
		lists[i] = kvs
	}
	members := r.view().Members
	health := map[string]string{}
	for _, m := range members {
		health[m.Name] = m.Health
	}
	nodes := map[string]coord.KV{}
	for _, kv := range lists[3] {
		nodes[path.Base(kv.Key)] = kv
	}
	pols := policiesOf(nodes)
	byService := map[string]*Status{}
	var out []*Status
	for _, kv := range lists[0] {
		c, err := decode[Config](kv.Key, kv.Value)
		if err != nil {
			return nil, err
		}
		s := &Status{Config: c}
		if spec, err := c.Spec(); err == nil {
			s.Refused = refusals(spec, members, pols)
		}
		byService[c.Service] = s
		out = append(out, s)
	}
	for _, kv := range lists[1] {
		if s := byService[path.Base(kv.Key)]; s != nil {
			if a, err := decode[Assignment](kv.Key, kv.Value); err == nil {
				s.Assigned = &a
			}
		}
	}
	for _, kv := range lists[2] {
		if s := byService[path.Base(kv.Key)]; s != nil {
			if h, err := decode[Held](kv.Key, kv.Value); err == nil {
				s.Held = &h
				s.HolderHealth = health[h.Node]
				if s.HolderHealth == "" {
					s.HolderHealth = "unknown"
				}
			}
		}
	}
	res := make([]Status, len(out))
	for i, s := range out {
		res[i] = *s
	}
	slices.SortFunc(res, func(a, b Status) int { return cmp.Compare(a.Config.Service, b.Config.Service) })
	return res, nil
}

// WaitHeld returns when node holds the VIP with its address up, or with
// ctx's error. It follows the store's watch; it does not poll.
func (r *Registry) WaitHeld(ctx context.Context, service, node string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m := watchDir(ctx, r.store, r.l.heldDir())
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s to hold vip %s: %w", node, service, ctx.Err())
		case ev, ok := <-m.ch:
			if !m.apply(ev, ok) {
				return fmt.Errorf("waiting for %s to hold vip %s: %w", node, service, ctx.Err())
			}
		}
		if !m.synced {
			continue
		}
		if kv, ok := m.keys[service]; ok {
			if h, err := decode[Held](kv.Key, kv.Value); err == nil && h.Node == node && h.Up {
				return nil
			}
		}
	}
}
