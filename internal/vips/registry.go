package vips

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/quorum"
	"github.com/taskd/taskd/internal/vipaddr"
)

// Registry is the operator's side of the VIPs: set, list, delete, drain.
type Registry struct {
	store coord.Store
	l     keys.VIPs
	view  func() quorum.View
	// localAddrs lists the addresses on the answering node's interfaces
	// with their labels; nil skips that check.
	localAddrs func() (map[netip.Addr]string, error)
}

// NewRegistry returns the registry under root. view is the answering node's
// picture of the cluster: members are checked against it.
func NewRegistry(store coord.Store, root keys.Root, view func() quorum.View, localAddrs func() (map[netip.Addr]string, error)) *Registry {
	return &Registry{store: store, l: root.VIPs(), view: view, localAddrs: localAddrs}
}

// Set creates or changes the VIP of c.Service. It validates the address
// (vipaddr.Spec.Validate: no reserved range, no prefix shorter than
// vipaddr.MinPrefixBits), the interface name and the label, and refuses an
// address that a member advertises, that is on the answering node's
// interfaces without the VIP's label, or that another VIP uses, and a VIP
// that every live member's allowlist refuses. A drain preference of an
// existing VIP is kept.
func (r *Registry) Set(ctx context.Context, c ServiceVIP) (ServiceVIP, error) {
	spec, err := c.Spec()
	if err != nil {
		return ServiceVIP{}, err
	}
	if err := r.someoneAllows(ctx, spec); err != nil {
		return ServiceVIP{}, err
	}
	key, err := r.l.ConfigKey(c.Service)
	if err != nil {
		return ServiceVIP{}, err
	}
	c.Address = spec.Prefix.String()
	addr := spec.Prefix.Addr()
	for _, m := range r.view().Members {
		if host, _, err := net.SplitHostPort(m.Address); err == nil {
			if a, err := netip.ParseAddr(host); err == nil && a == addr {
				return ServiceVIP{}, fmt.Errorf("%w: member %s advertises %s", ErrInUse, m.Name, addr)
			}
		}
	}
	kvs, err := r.store.List(ctx, r.l.ConfigDir())
	if err != nil {
		return ServiceVIP{}, fmt.Errorf("list vips: %w", err)
	}
	var old *coord.KV
	for _, kv := range kvs {
		o, err := decode[ServiceVIP](kv.Key, kv.Value)
		if err != nil {
			return ServiceVIP{}, err
		}
		if o.Service == c.Service {
			old = &kv
			c.Preferred = o.Preferred
			continue
		}
		if p, err := vipaddr.ParsePrefix(o.Address); err == nil && p.Addr() == addr {
			return ServiceVIP{}, fmt.Errorf("%w: vip %s already uses %s", ErrInUse, o.Service, addr)
		}
	}
	if r.localAddrs != nil {
		local, err := r.localAddrs()
		if err != nil {
			return ServiceVIP{}, fmt.Errorf("list this node's addresses: %w", err)
		}
		if label, ok := local[addr]; ok && label != spec.Label() {
			return ServiceVIP{}, fmt.Errorf("%w: %s is on an interface of node %s (label %q)", ErrInUse, addr, r.view().Self, label)
		}
	}
	c.UpdatedAt = time.Now().UTC()
	if old == nil {
		if _, err := r.store.Create(ctx, key, encode(c)); err != nil {
			return ServiceVIP{}, fmt.Errorf("create vip %s: %w", c.Service, err)
		}
		return c, nil
	}
	if _, err := r.store.Update(ctx, old.Key, encode(c), old.Version); err != nil {
		return ServiceVIP{}, fmt.Errorf("update vip %s: %w", c.Service, err)
	}
	return c, nil
}

// policies reads the members' published allowlists.
func (r *Registry) policies(ctx context.Context) (map[string]vipaddr.Policy, error) {
	kvs, err := r.store.List(ctx, r.l.NodesDir())
	if err != nil {
		return nil, fmt.Errorf("list the nodes' vip allowlists: %w", err)
	}
	byName := make(map[string]coord.KV, len(kvs))
	for _, kv := range kvs {
		if name, err := keys.Child(r.l.NodesDir(), kv.Key, keys.ValidName); err == nil {
			byName[name] = kv
		}
	}
	return policiesOf(byName), nil
}

// someoneAllows refuses a VIP that every live member refuses: nobody
// would hold it.
func (r *Registry) someoneAllows(ctx context.Context, spec vipaddr.Spec) error {
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
func (r *Registry) Seed(ctx context.Context, spec vipaddr.Spec) error {
	c := ServiceVIP{Service: spec.Service, Address: spec.Prefix.String(), Interface: spec.Interface, UpdatedAt: time.Now().UTC()}
	key, err := r.l.ConfigKey(c.Service)
	if err != nil {
		return err
	}
	_, err = r.store.Create(ctx, key, encode(c))
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

// get reads the VIP's configuration; an invalid service name is refused
// before anything is read, so no other key can be named.
func (r *Registry) get(ctx context.Context, service string) (coord.KV, error) {
	key, err := r.l.ConfigKey(service)
	if err != nil {
		return coord.KV{}, err
	}
	kv, err := r.store.Get(ctx, key)
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
	if to != "" {
		if err := keys.ValidName(to); err != nil {
			return "", err
		}
	}
	held, err := r.l.HeldKey(service)
	if err != nil {
		return "", err
	}
	kv, err := r.get(ctx, service)
	if err != nil {
		return "", err
	}
	c, err := decode[ServiceVIP](kv.Key, kv.Value)
	if err != nil {
		return "", err
	}
	if c.Service != service {
		return "", fmt.Errorf("%w: the record of vip %s names service %s", keys.ErrInvalid, service, keys.Quote(c.Service))
	}
	current := ""
	if h, err := r.store.Get(ctx, held); err == nil {
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
	VIP      ServiceVIP
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
	dirs := [...]string{r.l.ConfigDir(), r.l.AssignDir(), r.l.HeldDir(), r.l.NodesDir()}
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
		if name, err := keys.Child(r.l.NodesDir(), kv.Key, keys.ValidName); err == nil {
			nodes[name] = kv
		}
	}
	pols := policiesOf(nodes)
	byService := map[string]*Status{}
	var out []*Status
	for _, kv := range lists[0] {
		c, err := decode[ServiceVIP](kv.Key, kv.Value)
		if err != nil {
			return nil, err
		}
		if svc := service(dirs[0], kv.Key); svc == "" || c.Service != svc {
			continue // written around taskd: not a VIP
		}
		s := &Status{VIP: c}
		if spec, err := c.Spec(); err == nil {
			s.Refused = refusals(spec, members, pols)
		}
		byService[c.Service] = s
		out = append(out, s)
	}
	for _, kv := range lists[1] {
		if s := byService[service(dirs[1], kv.Key)]; s != nil {
			if a, err := decode[Assignment](kv.Key, kv.Value); err == nil {
				s.Assigned = &a
			}
		}
	}
	for _, kv := range lists[2] {
		if s := byService[service(dirs[2], kv.Key)]; s != nil {
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
	slices.SortFunc(res, func(a, b Status) int { return cmp.Compare(a.VIP.Service, b.VIP.Service) })
	return res, nil
}

// WaitHeld returns when node holds the VIP with its address up, or with
// ctx's error. It follows the store's watch; it does not poll.
func (r *Registry) WaitHeld(ctx context.Context, service, node string) error {
	if err := keys.ValidService(service); err != nil {
		return err
	}
	m := watchDir(ctx, r.store, r.l.HeldDir())
	defer m.close()
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

// service is the VIP service a key in dir names, "" for a key that names
// none.
func service(dir, key string) string {
	if svc, err := keys.Child(dir, key, keys.ValidService); err == nil {
		return svc
	}
	return ""
}
