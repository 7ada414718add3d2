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
package vip

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/taskd/taskd/internal/keys"
)

// ErrInvalid marks a VIP specification that cannot be used.
var ErrInvalid = errors.New("invalid vip")

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

// Validate checks what can be checked without the network: an IPv4
// address that is neither the network nor the broadcast address of its
// prefix, a valid interface name, and a label that fits the kernel's 15
// characters.
func (s Spec) Validate() error {
	if err := keys.ValidService(s.Service); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := keys.ValidInterface(s.Interface); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if l := s.Label(); len(l) > maxLabel {
		return fmt.Errorf("%w: label %q is %d characters; the kernel allows %d (shorten the service name)", ErrInvalid, l, len(l), maxLabel)
	}
	a := s.Prefix.Addr()
	if !s.Prefix.IsValid() || !a.Is4() {
		return fmt.Errorf("%w: %q is not an IPv4 address", ErrInvalid, s.Prefix)
	}
	if a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() || a.IsLinkLocalUnicast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return fmt.Errorf("%w: %s cannot be a service address", ErrInvalid, a)
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
