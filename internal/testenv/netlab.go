package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// NetLab is a test network: one namespace per host, joined by veth links to
// a bridge that lives in a namespace of its own. Host i has 10.77.0.(10+i)/24
// on eth0. Nothing is created in the root namespace; Cleanup deletes every
// namespace, which also removes the links.
type NetLab struct {
	t      testing.TB
	prefix string
	hosts  []string
}

// NewNetLab builds the network, or skips/fails (see Missing) without root
// or iproute2.
func NewNetLab(t testing.TB, hosts ...string) *NetLab {
	t.Helper()
	Need(t, "iproute2", "ip")
	if os.Geteuid() != 0 {
		Missing(t, "network namespaces need root")
	}
	b := make([]byte, 3)
	rand.Read(b)
	l := &NetLab{t: t, prefix: "tdn" + hex.EncodeToString(b), hosts: hosts}
	t.Cleanup(l.destroy)
	br := l.NS("br")
	l.IP("netns", "add", br)
	l.IP("-n", br, "link", "add", "br0", "type", "bridge")
	l.IP("-n", br, "link", "set", "br0", "up")
	for i, h := range hosts {
		ns := l.NS(h)
		l.IP("netns", "add", ns)
		l.IP("-n", br, "link", "add", fmt.Sprintf("v%d", i), "type", "veth", "peer", "name", "eth0", "netns", ns)
		l.IP("-n", br, "link", "set", fmt.Sprintf("v%d", i), "master", "br0", "up")
		l.IP("-n", ns, "link", "set", "lo", "up")
		l.IP("-n", ns, "link", "set", "eth0", "up")
		l.IP("-n", ns, "addr", "add", l.Addr(h)+"/24", "dev", "eth0")
	}
	return l
}

// NS names host's namespace ("br" is the bridge's).
func (l *NetLab) NS(host string) string { return l.prefix + "-" + host }

// Addr is host's address on the lab subnet.
func (l *NetLab) Addr(host string) string {
	for i, h := range l.hosts {
		if h == host {
			return fmt.Sprintf("10.77.0.%d", 10+i)
		}
	}
	l.t.Fatalf("no host %s in the lab", host)
	return ""
}

// IP runs the ip command and fails the test on error.
func (l *NetLab) IP(args ...string) string {
	l.t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (l *NetLab) destroy() {
	for _, h := range append([]string{"br"}, l.hosts...) {
		exec.Command("ip", "netns", "del", l.NS(h)).Run()
	}
}

// MAC is the hardware address of host's eth0.
func (l *NetLab) MAC(host string) string {
	var links []struct {
		Address string `json:"address"`
	}
	if err := json.Unmarshal([]byte(l.IP("-n", l.NS(host), "-j", "link", "show", "dev", "eth0")), &links); err != nil || len(links) != 1 {
		l.t.Fatalf("mac of %s: %v", host, err)
	}
	return links[0].Address
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
func (l *NetLab) Has(host, ip string) (AddrInfo, bool) {
	var links []struct {
		AddrInfo []AddrInfo `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(l.IP("-n", l.NS(host), "-j", "addr", "show", "dev", "eth0")), &links); err != nil || len(links) != 1 {
		l.t.Fatalf("addresses of %s: %v", host, err)
	}
	for _, a := range links[0].AddrInfo {
		if a.Local == ip {
			return a, true
		}
	}
	return AddrInfo{}, false
}
