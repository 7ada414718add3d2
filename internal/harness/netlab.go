package harness

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/vishvananda/netns"
)

// NetLab is a test network: one namespace per host, joined by veth links to
// a bridge that lives in a namespace of its own. Host i has 10.77.0.(10+i)/24
// on eth0. Nothing is created in the root namespace; Cleanup deletes every
// namespace, which also removes the links.
type NetLab struct {
	prefix string
	hosts  []string
}

// NewNetLab builds the network (root and iproute2 needed). On error
// everything made so far is removed.
func NewNetLab(hosts ...string) (l *NetLab, err error) {
	b := make([]byte, 3)
	rand.Read(b)
	l = &NetLab{prefix: "tdn" + hex.EncodeToString(b), hosts: hosts}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	br := l.NS("br")
	steps := [][]string{
		{"netns", "add", br},
		{"-n", br, "link", "add", "br0", "type", "bridge"},
		{"-n", br, "link", "set", "br0", "up"},
	}
	for i, h := range hosts {
		ns := l.NS(h)
		steps = append(steps,
			[]string{"netns", "add", ns},
			[]string{"-n", br, "link", "add", fmt.Sprintf("v%d", i), "type", "veth", "peer", "name", "eth0", "netns", ns},
			[]string{"-n", br, "link", "set", fmt.Sprintf("v%d", i), "master", "br0", "up"},
			[]string{"-n", ns, "link", "set", "lo", "up"},
			[]string{"-n", ns, "link", "set", "eth0", "up"},
			[]string{"-n", ns, "addr", "add", fmt.Sprintf("10.77.0.%d/24", 10+i), "dev", "eth0"},
		)
	}
	for _, s := range steps {
		if _, err := l.IP(s...); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// NS names host's namespace ("br" is the bridge's).
func (l *NetLab) NS(host string) string { return l.prefix + "-" + host }

// Addr is host's address on the lab subnet ("" for an unknown host).
func (l *NetLab) Addr(host string) string {
	for i, h := range l.hosts {
		if h == host {
			return fmt.Sprintf("10.77.0.%d", 10+i)
		}
	}
	return ""
}

// IP runs the ip command.
func (l *NetLab) IP(args ...string) (string, error) {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Close deletes every namespace of the lab (and with them its links).
func (l *NetLab) Close() {
	for _, h := range append([]string{"br"}, l.hosts...) {
		exec.Command("ip", "netns", "del", l.NS(h)).Run()
	}
}

// MAC is the hardware address of host's eth0.
func (l *NetLab) MAC(host string) (string, error) {
	out, err := l.IP("-n", l.NS(host), "-j", "link", "show", "dev", "eth0")
	if err != nil {
		return "", err
	}
	var links []struct {
		Address string `json:"address"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		return "", fmt.Errorf("mac of %s: %v", host, errors.Join(err, errors.New(out)))
	}
	return links[0].Address, nil
}

// AddrInfo is one address on an interface, as `ip -j addr` shows it.
type AddrInfo struct {
	Local     string `json:"local"`
	PrefixLen int    `json:"prefixlen"`
	Label     string `json:"label"`
	// The kernel reports a permanent address's preferred lifetime as
	// "forever" even when it is deprecated; the flag is what counts.
	Deprecated bool `json:"deprecated"`
}

// Has returns the address ip on host's eth0, if present.
func (l *NetLab) Has(host, ip string) (AddrInfo, bool, error) {
	out, err := l.IP("-n", l.NS(host), "-j", "addr", "show", "dev", "eth0")
	if err != nil {
		return AddrInfo{}, false, err
	}
	var links []struct {
		AddrInfo []AddrInfo `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		return AddrInfo{}, false, fmt.Errorf("addresses of %s: %v", host, err)
	}
	for _, a := range links[0].AddrInfo {
		if a.Local == ip {
			return a, true, nil
		}
	}
	return AddrInfo{}, false, nil
}

// DialInNS opens a TCP connection from inside network namespace ns (the
// current one when ns is ""), so that the harness can reach servers on a
// lab subnet without any process of its own joining it. The socket is
// created on a thread switched into ns and keeps that namespace.
func DialInNS(ns, addr string, timeout time.Duration) (net.Conn, error) {
	if ns == "" {
		return net.DialTimeout("tcp", addr, timeout)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("current netns: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(ns)
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", ns, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return nil, fmt.Errorf("enter netns %s: %w", ns, err)
	}
	c, derr := net.DialTimeout("tcp", addr, timeout)
	if err := netns.Set(orig); err != nil {
		// The thread stays in ns; a locked thread that is not unlocked
		// is discarded when its goroutine ends.
		runtime.LockOSThread()
		if c != nil {
			c.Close()
		}
		return nil, fmt.Errorf("leave netns %s: %w", ns, err)
	}
	return c, derr
}
