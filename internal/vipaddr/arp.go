package vipaddr

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const (
	arpRequest = 1
	arpReply   = 2
	arpLen     = 28
)

// arpPacket is an Ethernet/IPv4 ARP message.
type arpPacket struct {
	Op                   uint16
	SenderMAC, TargetMAC net.HardwareAddr
	SenderIP, TargetIP   netip.Addr
}

func (p arpPacket) marshal() []byte {
	b := make([]byte, arpLen)
	binary.BigEndian.PutUint16(b[0:2], 1)      // Ethernet
	binary.BigEndian.PutUint16(b[2:4], 0x0800) // IPv4
	b[4], b[5] = 6, 4
	binary.BigEndian.PutUint16(b[6:8], p.Op)
	copy(b[8:14], p.SenderMAC)
	s := p.SenderIP.As4()
	copy(b[14:18], s[:])
	copy(b[18:24], p.TargetMAC)
	t := p.TargetIP.As4()
	copy(b[24:28], t[:])
	return b
}

func parseARP(b []byte) (arpPacket, error) {
	if len(b) < arpLen || binary.BigEndian.Uint16(b[0:2]) != 1 || binary.BigEndian.Uint16(b[2:4]) != 0x0800 || b[4] != 6 || b[5] != 4 {
		return arpPacket{}, errors.New("not an Ethernet/IPv4 ARP message")
	}
	return arpPacket{
		Op:        binary.BigEndian.Uint16(b[6:8]),
		SenderMAC: net.HardwareAddr(append([]byte(nil), b[8:14]...)),
		SenderIP:  netip.AddrFrom4([4]byte(b[14:18])),
		TargetMAC: net.HardwareAddr(append([]byte(nil), b[18:24]...)),
		TargetIP:  netip.AddrFrom4([4]byte(b[24:28])),
	}, nil
}

var broadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// arpConn sends and receives ARP on one interface through a packet socket;
// the kernel adds the Ethernet header.
type arpConn struct {
	f       *os.File
	ifindex int
	mac     net.HardwareAddr
	buf     [1500]byte // receive buffer; one reader per conn
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// openARP opens an ARP socket on interface ifname and returns it with the
// interface.
func openARP(ifname string) (*arpConn, netlink.Link, error) {
	link, err := netlink.LinkByName(ifname)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: interface %s: %v", ErrInvalid, ifname, err)
	}
	ifindex, mac := link.Attrs().Index, link.Attrs().HardwareAddr
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ARP)))
	if err != nil {
		return nil, nil, fmt.Errorf("open ARP socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifindex}); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("bind ARP socket: %w", err)
	}
	// os.NewFile on a non-blocking fd uses the runtime poller, so reads
	// take deadlines.
	return &arpConn{f: os.NewFile(uintptr(fd), "arp"), ifindex: ifindex, mac: mac}, link, nil
}

func (c *arpConn) close() error { return c.f.Close() }

func (c *arpConn) send(p arpPacket, dst net.HardwareAddr) error {
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: c.ifindex, Halen: 6}
	copy(sa.Addr[:], dst)
	raw, err := c.f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = raw.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), p.marshal(), 0, sa)
		return serr != unix.EAGAIN
	})
	if err != nil {
		return fmt.Errorf("send ARP: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("send ARP: %w", serr)
	}
	return nil
}

// recv returns the next ARP message, or an error when the deadline passes.
func (c *arpConn) recv(deadline time.Time) (arpPacket, error) {
	buf := c.buf[:]
	if err := c.f.SetReadDeadline(deadline); err != nil {
		return arpPacket{}, err
	}
	for {
		n, err := c.f.Read(buf)
		if err != nil {
			return arpPacket{}, err
		}
		if p, err := parseARP(buf[:n]); err == nil {
			return p, nil
		}
	}
}

// announce sends a gratuitous ARP request and a gratuitous ARP reply for ip.
func (c *arpConn) announce(ip netip.Addr) error {
	req := arpPacket{Op: arpRequest, SenderMAC: c.mac, SenderIP: ip, TargetMAC: make(net.HardwareAddr, 6), TargetIP: ip}
	if err := c.send(req, broadcastMAC); err != nil {
		return err
	}
	rep := arpPacket{Op: arpReply, SenderMAC: c.mac, SenderIP: ip, TargetMAC: broadcastMAC, TargetIP: ip}
	return c.send(rep, broadcastMAC)
}

// probe sends an RFC 5227 probe (sender IP 0.0.0.0) for ip.
func (c *arpConn) probe(ip netip.Addr) error {
	p := arpPacket{Op: arpRequest, SenderMAC: c.mac, SenderIP: netip.AddrFrom4([4]byte{}), TargetMAC: make(net.HardwareAddr, 6), TargetIP: ip}
	return c.send(p, broadcastMAC)
}

// request asks who has ip, from our own address src.
func (c *arpConn) request(src, ip netip.Addr) error {
	p := arpPacket{Op: arpRequest, SenderMAC: c.mac, SenderIP: src, TargetMAC: make(net.HardwareAddr, 6), TargetIP: ip}
	return c.send(p, broadcastMAC)
}

// Claim sends one gratuitous ARP reply from this host's ifname claiming ip:
// what a host that takes the address over announces. Tests use it to play a
// foreign host.
func Claim(ifname string, ip netip.Addr) error {
	c, _, err := openARP(ifname)
	if err != nil {
		return err
	}
	defer c.close()
	return c.send(arpPacket{Op: arpReply, SenderMAC: c.mac, SenderIP: ip, TargetMAC: broadcastMAC, TargetIP: ip}, broadcastMAC)
}
