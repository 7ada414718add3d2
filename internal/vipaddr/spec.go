// Package vip holds a virtual IP address on a node: it probes that no other
// host uses the address, adds it with a label that marks it as taskd's,
// announces it with gratuitous ARP, watches for another host claiming it,
// and removes it when the hold ends. Which node holds a VIP is decided
// elsewhere (the leader, through fenced assignments); this package only does
// what a holder does on its own interface.
//
// Announcement schedule (Config): at once a gratuitous ARP request and a
// gratuitous ARP reply; then Burst more pairs BurstInterval apart (default 4
// pairs, 250 ms apart: about one second), so that switches and hosts that
// missed the first learn the new MAC quickly; then a pair every Refresh
// (default 20 s), well under common ARP cache (60 s and more) and switch MAC
// aging (300 s) timeouts.
package vipaddr

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/taskd/taskd/internal/keys"
)

// ErrInvalid marks a VIP specification that cannot be used.
var ErrInvalid = errors.New("invalid vip")

// ErrNotAllowed is returned for a VIP outside this node's allowlist of
// interfaces and networks (Policy).
var ErrNotAllowed = errors.New("vip not allowed on this node")

// ErrForeign is returned when the VIP's address is already on this host
// without the VIP's label: somebody else configured it, and a holder never
// takes over (or later removes) an address that is not its own.
var ErrForeign = errors.New("address already on this host and not taskd's")

// ErrLapsed is returned by a holder that did not run for a whole address
// lifetime (it was stopped or starved): the address may be gone and held
// elsewhere, so it is not renewed or announced again.
var ErrLapsed = errors.New("vip hold lapsed")

// ErrConflict is returned when another host answers for the address: before
// it was added (the probe), or repeatedly while it was held.
var ErrConflict = errors.New("address in use by another host")

// Spec is one VIP.
type Spec struct {
	Service   string       // e.g. "iscsi"
	Prefix    netip.Prefix // the address and its prefix length (/32 by default)
	Interface string       // e.g. "eth0"
}

// maxLabel is the kernel's limit on an address label (IFNAMSIZ - 1).
const maxLabel = 15

// Label is the address label that marks the VIP as taskd's: "IF:svc".
func (s Spec) Label() string { return s.Interface + ":" + s.Service }

// MinPrefixBits is the shortest prefix a VIP may carry. A VIP is added
// with IFA_F_NOPREFIXROUTE, so its prefix installs no route; what is left
// of it is the subnet it names (the kernel still derives a broadcast
// address, and a local broadcast route, from it) and the network and
// broadcast addresses refused below. One access LAN wider than a /16
// (65 534 hosts in one broadcast domain) does not exist in practice, so a
// shorter prefix is a typo (/1 for /31) or an attempt to claim a large
// part of the address space (130.0.0.1/1 once routed 128.0.0.0/1).
const MinPrefixBits = 16

// reserved are the IPv4 ranges that are never a service address.
var reserved = []struct {
	net netip.Prefix
	why string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), `"this network" (0.0.0.0/8, RFC 1122): not a host address`},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback (127.0.0.0/8): never reachable from another host"},
	// Link-local addresses are self-assigned (RFC 3927), never routed and
	// include 169.254.169.254, the metadata service of clouds and
	// hypervisors: a VIP there answers for it on the whole LAN.
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local (169.254.0.0/16): self-assigned, not routed, and home to metadata services"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast (224.0.0.0/4): not a unicast address"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved (240.0.0.0/4, including the broadcast address 255.255.255.255)"},
}

// Validate checks what can be checked without the network: a unicast IPv4
// address outside the reserved ranges (0/8, 127/8, 169.254/16, 224/4,
// 240/4), a prefix of at least MinPrefixBits whose network and broadcast
// addresses it is not, a valid interface name other than lo, and a label
// that fits the kernel's 15 characters.
func (s Spec) Validate() error {
	if err := keys.ValidService(s.Service); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := keys.ValidInterface(s.Interface); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if s.Interface == "lo" {
		return fmt.Errorf("%w: interface lo is the loopback interface: a VIP there answers nobody on the network (use the access-network interface, e.g. eth0)", ErrInvalid)
	}
	if l := s.Label(); len(l) > maxLabel {
		return fmt.Errorf("%w: label %q is %d characters; the kernel allows %d (shorten the service name)", ErrInvalid, l, len(l), maxLabel)
	}
	a := s.Prefix.Addr()
	if !s.Prefix.IsValid() || !a.Is4() {
		return fmt.Errorf("%w: %q is not an IPv4 address", ErrInvalid, s.Prefix)
	}
	for _, r := range reserved {
		if r.net.Contains(a) {
			return fmt.Errorf("%w: %s cannot be a service address: %s", ErrInvalid, a, r.why)
		}
	}
	if bits := s.Prefix.Bits(); bits < MinPrefixBits {
		return fmt.Errorf("%w: prefix /%d of %s is shorter than /%d: a VIP is one address on one LAN (a bare address is a /32)", ErrInvalid, bits, a, MinPrefixBits)
	}
	if bits := s.Prefix.Bits(); bits < 31 {
		if a == s.Prefix.Masked().Addr() {
			return fmt.Errorf("%w: %s is the network address of %s", ErrInvalid, a, s.Prefix.Masked())
		}
		if a == broadcast(s.Prefix) {
			return fmt.Errorf("%w: %s is the broadcast address of %s", ErrInvalid, a, s.Prefix.Masked())
		}
	}
	return nil
}

func broadcast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// ParsePrefix reads "IP" or "IP/PREFIX"; a bare IP is a /32.
func ParsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%w: %q is neither IP nor IP/PREFIX", ErrInvalid, s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// ParseSpec reads "SERVICE=IP[/PREFIX]@INTERFACE", the form of taskd's
// --vip flag, and validates it.
func ParseSpec(s string) (Spec, error) {
	svc, rest, ok1 := strings.Cut(s, "=")
	addr, iface, ok2 := strings.Cut(rest, "@")
	if !ok1 || !ok2 {
		return Spec{}, fmt.Errorf("%w: %q: want SERVICE=IP[/PREFIX]@INTERFACE, e.g. iscsi=10.0.0.50@eth0", ErrInvalid, s)
	}
	prefix, err := ParsePrefix(addr)
	if err != nil {
		return Spec{}, err
	}
	spec := Spec{Service: svc, Prefix: prefix, Interface: iface}
	return spec, spec.Validate()
}
