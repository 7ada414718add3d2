package vipaddr_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// These tests play finding 6 of the security issue: a VIP that claims a
// range of the routing table, reserved or loopback addresses, and a VIP
// equal to an address somebody else configured on the holder. Each runs the
// holder in a lab namespace and checks what the kernel has afterwards.

// hostAddr is one address of a lab host, from `ip -j addr`.
type hostAddr struct {
	Dev       string
	Local     string `json:"local"`
	PrefixLen int    `json:"prefixlen"`
	Label     string `json:"label"`
	Valid     uint64 `json:"valid_life_time"`
	NoPrefix  bool   `json:"noprefixroute"`
}

const forever = 4294967295 // the kernel's "forever" lifetime

// addrs lists host's IPv4 addresses on every interface.
func (l *lab) addrs(host string) []hostAddr {
	l.t.Helper()
	out := l.IP("-n", l.NS(host), "-4", "-j", "addr", "show")
	var links []struct {
		IfName   string     `json:"ifname"`
		AddrInfo []hostAddr `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil {
		l.t.Fatalf("ip -j addr: %v: %s", err, out)
	}
	var res []hostAddr
	for _, k := range links {
		for _, a := range k.AddrInfo {
			a.Dev = k.IfName
			res = append(res, a)
		}
	}
	return res
}

// find returns the address ip/bits on dev of host.
func (l *lab) find(host, dev, ip string, bits int) (hostAddr, bool) {
	for _, a := range l.addrs(host) {
		if a.Dev == dev && a.Local == ip && a.PrefixLen == bits {
			return a, true
		}
	}
	return hostAddr{}, false
}

// refuses runs a holder in host's namespace and returns its exit code. A
// holder that has not ended within 10 s took the address: the test fails.
func (l *lab) refuses(host string, env ...string) (int, string) {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", l.NS(host), os.Args[0])
	cmd.Env = append(os.Environ(), append([]string{"TASKD_VIP_HELPER=hold", "SERVICE=iscsi"}, env...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		l.t.Fatalf("holder %v did not refuse; it held for 10 s:\n%s", env, out)
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		l.t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), string(out)
}

// A VIP with a prefix installs no route for it: 10.88.0.100/24 on a host
// of 10.77.0.0/24 leaves the routing table without 10.88.0.0/24, and the
// address still answers ARP.
func TestHoldInstallsNoPrefixRoute(t *testing.T) {
	l := newLab(t, "n1", "client")
	p, log := l.start("n1", "hold", "VIP=10.88.0.100/24", "SERVICE=iscsi")
	waitFor(t, 10*time.Second, "vip held", func() bool { return hasEvent(t, log, "held") })
	a, ok := l.find("n1", "eth0", "10.88.0.100", 24)
	if !ok || a.Label != "eth0:iscsi" {
		t.Fatalf("held vip %+v (present %v): want 10.88.0.100/24 labelled eth0:iscsi", a, ok)
	}
	out := l.IP("-n", l.NS("n1"), "-4", "-j", "route", "show", "table", "all")
	var routes []struct {
		Dst  string `json:"dst"`
		Type string `json:"type"`
		Dev  string `json:"dev"`
	}
	if err := json.Unmarshal([]byte(out), &routes); err != nil {
		t.Fatalf("ip -j route: %v: %s", err, out)
	}
	var local bool
	for _, r := range routes {
		if r.Dst == "10.88.0.0/24" {
			t.Fatalf("the vip installed a route for its prefix: %+v (all routes: %s)", r, out)
		}
		local = local || (r.Type == "local" && r.Dst == "10.88.0.100")
	}
	if !local {
		t.Fatalf("no local route for the vip itself; routes: %s", out)
	}
	if !a.NoPrefix {
		t.Fatalf("held vip %+v lacks the noprefixroute flag", a)
	}
	if out, err := l.run("client", "query", "SRC="+l.Addr("client"), "VIP=10.88.0.100"); err != nil || out != l.MAC("n1") {
		t.Fatalf("ARP for the vip from the client: %q (%v), want n1's MAC %s", out, err, l.MAC("n1"))
	}
	p.Signal(syscall.SIGTERM)
	p.Wait()
	if _, ok := l.find("n1", "eth0", "10.88.0.100", 24); ok {
		t.Fatal("vip still on n1 after release")
	}
}

// An address somebody configured on the holder (no taskd label) is never
// taken over: the hold is refused, and the address is left as it was,
// permanent, with its own label, after the holder has ended.
func TestHoldRefusesForeignAddress(t *testing.T) {
	l := newLab(t, "n1")
	for _, tc := range []struct {
		name, dev, addr string
		bits            int
		vip             string
	}{
		{"same /32 on eth0", "eth0", "10.77.0.100", 32, "10.77.0.100"},
		{"same /24 on eth0 (a secondary)", "eth0", "10.77.0.101", 24, "10.77.0.101/24"},
		{"on lo, as for direct routing", "lo", "10.77.0.102", 32, "10.77.0.102"},
		{"the node's own address", "eth0", "10.77.0.10", 24, "10.77.0.10"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, ok := l.find("n1", tc.dev, tc.addr, tc.bits); !ok {
				l.IP("-n", l.NS("n1"), "addr", "add", tc.addr+"/"+strconv.Itoa(tc.bits), "dev", tc.dev)
			}
			before := l.addrs("n1")
			code, out := l.refuses("n1", "VIP="+tc.vip)
			if code != exitForeign || !strings.Contains(out, "not \"eth0:iscsi\"") {
				t.Fatalf("holder exit %d, want %d (ErrForeign) naming the labels:\n%s", code, exitForeign, out)
			}
			a, ok := l.find("n1", tc.dev, tc.addr, tc.bits)
			if !ok || a.Valid != forever || a.Label == "eth0:iscsi" {
				t.Fatalf("foreign address after the refused hold: %+v (present %v); want it unchanged, permanent", a, ok)
			}
			if after := l.addrs("n1"); !equalAddrs(before, after) {
				t.Fatalf("the refused hold changed the addresses:\nbefore %+v\nafter  %+v", before, after)
			}
		})
	}
}

// A copy of the address configured while the VIP is held ends the hold:
// the holder removes only its own address, and the foreign one stays.
func TestForeignAddressDuringHoldEndsIt(t *testing.T) {
	l := newLab(t, "n1")
	p, log := l.start("n1", "hold", "VIP="+vipAddr, "SERVICE=iscsi")
	waitFor(t, 10*time.Second, "vip held", func() bool { return hasEvent(t, log, "held") })
	// The same address with another prefix on the same interface: the
	// kernel accepts it next to the vip's /32.
	l.IP("-n", l.NS("n1"), "addr", "add", vipAddr+"/24", "dev", "eth0")
	select {
	case <-p.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the holder kept the vip next to a foreign copy of its address")
	}
	if code := p.ExitCode(); code != exitForeign {
		t.Fatalf("holder exit %d, want %d (ErrForeign)", code, exitForeign)
	}
	if _, ok := l.find("n1", "eth0", vipAddr, 32); ok {
		t.Fatal("the holder left its own address behind")
	}
	if a, ok := l.find("n1", "eth0", vipAddr, 24); !ok || a.Valid != forever || a.Label != "eth0" {
		t.Fatalf("foreign address after the hold ended: %+v (present %v); want it permanent with label eth0", a, ok)
	}
}

// Reserved ranges and loopback interfaces are refused on the holder
// itself, whatever reached it: nothing is added.
func TestHoldRefusesReservedAndLoopback(t *testing.T) {
	l := newLab(t, "n1")
	// A loopback interface under another name.
	l.IP("-n", l.NS("n1"), "link", "set", "lo", "down")
	l.IP("-n", l.NS("n1"), "link", "set", "lo", "name", "lo9")
	l.IP("-n", l.NS("n1"), "link", "set", "lo9", "up")
	before := l.addrs("n1")
	for _, env := range [][]string{
		{"VIP=0.1.2.3"},
		{"VIP=240.0.0.1"},
		{"VIP=255.255.255.255"},
		{"VIP=127.0.0.5"},
		{"VIP=130.0.0.1/1"},
		{"VIP=10.77.0.100", "IFACE=lo"},
		{"VIP=10.77.0.100", "IFACE=lo9"},
	} {
		if code, out := l.refuses("n1", env...); code != exitInvalid {
			t.Errorf("holder %v: exit %d, want %d (ErrInvalid):\n%s", env, code, exitInvalid, out)
		}
	}
	if after := l.addrs("n1"); !equalAddrs(before, after) {
		t.Fatalf("refused holds changed the addresses:\nbefore %+v\nafter  %+v", before, after)
	}
}

// A holder refuses a VIP outside its allowlist and adds nothing; inside
// it, it holds.
func TestHoldHonoursAllowlist(t *testing.T) {
	l := newLab(t, "n1")
	before := l.addrs("n1")
	for _, env := range [][]string{
		{"ALLOW_IF=eth1"},
		{"ALLOW_CIDR=10.99.0.0/16"},
		{"ALLOW_CIDR=10.77.0.96/30"}, // 10.77.0.100 is just outside
		{"ALLOW_IF=eth0", "ALLOW_CIDR=10.99.0.0/16"},
	} {
		code, out := l.refuses("n1", append(env, "VIP="+vipAddr)...)
		if code != exitNotAllowed || !strings.Contains(out, "--vip-allow-") {
			t.Errorf("holder %v: exit %d, want %d (ErrNotAllowed) naming the list:\n%s", env, code, exitNotAllowed, out)
		}
	}
	if after := l.addrs("n1"); !equalAddrs(before, after) {
		t.Fatalf("refused holds changed the addresses:\nbefore %+v\nafter  %+v", before, after)
	}
	p, log := l.start("n1", "hold", "VIP="+vipAddr, "SERVICE=iscsi", "ALLOW_IF=eth0", "ALLOW_CIDR=10.77.0.0/24")
	waitFor(t, 10*time.Second, "vip held inside the allowlist", func() bool { return hasEvent(t, log, "held") })
	p.Signal(syscall.SIGTERM)
	p.Wait()
}

func equalAddrs(a, b []hostAddr) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		// Lifetimes of permanent addresses do not change; others are
		// not expected here.
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
