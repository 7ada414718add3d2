package vipaddr

import (
	"fmt"
	"github.com/taskd/taskd/internal/keys"
	"net/netip"
	"slices"
	"strings"
)

// Policy is a node's allowlist for the VIPs it holds: the interfaces
// (--vip-allow-interface) and the networks (--vip-allow-cidr) a VIP may
// use. An empty list allows anything of its kind; the zero Policy allows
// every valid VIP. A holder refuses a VIP its policy does not allow (Hold),
// and publishes the policy so that the leader assigns the VIP elsewhere.
// Every node should carry the same lists: a VIP that only some nodes allow
// can only fail over among those.
type Policy struct {
	Interfaces []string       `json:"interfaces,omitempty"`
	CIDRs      []netip.Prefix `json:"cidrs,omitempty"`
}

// Validate checks the lists: valid interface names other than lo, and
// IPv4 networks given by their network address.
func (p Policy) Validate() error {
	for _, i := range p.Interfaces {
		if keys.ValidInterface(i) != nil || i == "lo" {
			return fmt.Errorf("%w: allowed interface %q is not a valid interface name other than lo", ErrInvalid, i)
		}
	}
	for _, c := range p.CIDRs {
		if !c.IsValid() || !c.Addr().Is4() {
			return fmt.Errorf("%w: allowed network %q is not an IPv4 CIDR", ErrInvalid, c)
		}
		if c.Masked() != c {
			return fmt.Errorf("%w: allowed network %s has host bits set (did you mean %s?)", ErrInvalid, c, c.Masked())
		}
	}
	return nil
}

// ParseCIDRs reads --vip-allow-cidr values.
func ParseCIDRs(ss []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(ss))
	for _, s := range ss {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%w: %q is not a CIDR such as 10.0.0.0/24", ErrInvalid, s)
		}
		out = append(out, p)
	}
	return out, nil
}

// Check reports whether the policy allows s: its interface is listed (or
// no interface is), and its address and whole prefix lie inside one listed
// network (or no network is). The error wraps ErrNotAllowed and says which
// list refused it.
func (p Policy) Check(s Spec) error {
	if len(p.Interfaces) > 0 && !slices.Contains(p.Interfaces, s.Interface) {
		return fmt.Errorf("%w: interface %s is not in --vip-allow-interface (%s)", ErrNotAllowed, s.Interface, strings.Join(p.Interfaces, ", "))
	}
	if len(p.CIDRs) == 0 {
		return nil
	}
	for _, c := range p.CIDRs {
		if c.Contains(s.Prefix.Addr()) && s.Prefix.Bits() >= c.Bits() {
			return nil
		}
	}
	nets := make([]string, len(p.CIDRs))
	for i, c := range p.CIDRs {
		nets[i] = c.String()
	}
	return fmt.Errorf("%w: %s is not inside --vip-allow-cidr (%s)", ErrNotAllowed, s.Prefix, strings.Join(nets, ", "))
}
