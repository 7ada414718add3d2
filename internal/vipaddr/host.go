package vipaddr

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// checkLink refuses a loopback interface, whatever its name: an address
// there answers nobody on the network, and on lo it would shadow a local
// address range.
func checkLink(s Spec, link netlink.Link) error {
	if link.Attrs().Flags&net.FlagLoopback != 0 {
		return fmt.Errorf("%w: interface %s is a loopback interface: a VIP there answers nobody on the network", ErrInvalid, s.Interface)
	}
	return nil
}

// hostAddress looks for the VIP's address on every interface of the host.
// An address carrying the VIP's label on the VIP's interface is the
// holder's own (left by an earlier hold, or the one it renews); present
// says whether it has the VIP's prefix length too. Any other copy of the
// address belongs to somebody else, and the error wraps ErrForeign: the
// holder neither adds the VIP next to it nor touches it.
func hostAddress(s Spec, link netlink.Link) (present bool, err error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return false, fmt.Errorf("list the host's addresses: %w", err)
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || ip.Unmap() != s.Prefix.Addr() {
			continue
		}
		bits, _ := a.Mask.Size()
		if a.LinkIndex == link.Attrs().Index && a.Label == s.Label() {
			present = present || bits == s.Prefix.Bits()
			continue
		}
		where := fmt.Sprintf("interface index %d", a.LinkIndex)
		if l, err := netlink.LinkByIndex(a.LinkIndex); err == nil {
			where = l.Attrs().Name
		}
		return false, fmt.Errorf("%w: %s/%d is on %s with label %q, not %q: remove it or choose another address", ErrForeign, ip.Unmap(), bits, where, a.Label, s.Label())
	}
	return present, nil
}

// addOwned adds the VIP's address. When the holder's own copy is there
// already it is renewed in place; otherwise the add is exclusive, so that
// an address somebody configured on the same interface in the meantime
// makes it fail rather than be taken over.
func addOwned(link netlink.Link, addr *netlink.Addr, present bool) error {
	if present {
		return netlink.AddrReplace(link, addr)
	}
	err := netlink.AddrAdd(link, addr)
	if errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("%w: %s appeared on %s while the vip was being added", ErrForeign, addr.IPNet, link.Attrs().Name)
	}
	return err
}

// gone reports whether a delete found nothing to delete: the kernel
// answers EADDRNOTAVAIL when no address matches (address, prefix length
// and label), for example after the lifetime removed it.
func gone(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.EADDRNOTAVAIL)
}
