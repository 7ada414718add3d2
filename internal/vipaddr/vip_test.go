package vipaddr

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
)

func TestSpecValidate(t *testing.T) {
	p := func(s string) netip.Prefix {
		v, err := ParsePrefix(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, tc := range []struct {
		name string
		spec Spec
		ok   bool
	}{
		{"plain /32", Spec{"iscsi", p("10.0.0.50"), "eth0"}, true},
		{"with prefix", Spec{"nfs", p("10.0.0.50/24"), "eth0"}, true},
		{"network address", Spec{"nfs", p("10.0.0.0/24"), "eth0"}, false},
		{"broadcast address", Spec{"nfs", p("10.0.0.255/24"), "eth0"}, false},
		{"ipv6", Spec{"nfs", p("fd00::1"), "eth0"}, false},
		{"loopback", Spec{"nfs", p("127.0.0.2"), "eth0"}, false},
		{"bad interface", Spec{"nfs", p("10.0.0.50"), "eth 0"}, false},
		{"interface too long", Spec{"nfs", p("10.0.0.50"), "averyveryverylong0"}, false},
		{"label over 15", Spec{"management", p("10.0.0.50"), "bond0.100"}, false},
		{"label of 15", Spec{"mgmt", p("10.0.0.50"), "bond0.1000"}, true},
		{"bad service", Spec{"Mgmt!", p("10.0.0.50"), "eth0"}, false},
		// Finding 6: a short prefix claimed half the address space.
		{"/1", Spec{"nfs", p("130.0.0.1/1"), "eth0"}, false},
		{"/15", Spec{"nfs", p("10.1.0.1/15"), "eth0"}, false},
		{"/16", Spec{"nfs", p("10.1.0.1/16"), "eth0"}, true},
		{"this network", Spec{"nfs", p("0.1.2.3"), "eth0"}, false},
		{"unspecified", Spec{"nfs", p("0.0.0.0"), "eth0"}, false},
		{"reserved 240/4", Spec{"nfs", p("240.0.0.1"), "eth0"}, false},
		{"reserved 254.x", Spec{"nfs", p("254.1.2.3"), "eth0"}, false},
		{"limited broadcast", Spec{"nfs", p("255.255.255.255"), "eth0"}, false},
		{"multicast", Spec{"nfs", p("224.0.0.18"), "eth0"}, false},
		{"multicast high", Spec{"nfs", p("239.255.255.250"), "eth0"}, false},
		{"link-local metadata", Spec{"nfs", p("169.254.169.254"), "eth0"}, false},
		{"loopback 127.255", Spec{"nfs", p("127.255.0.1"), "eth0"}, false},
		{"interface lo", Spec{"nfs", p("10.0.0.50"), "lo"}, false},
		{"interface lo0 is a name like any", Spec{"nfs", p("10.0.0.50"), "lo0"}, true},
		{"just below 240/4", Spec{"nfs", p("223.255.255.1"), "eth0"}, true},
		{"CGNAT space is unicast", Spec{"nfs", p("100.64.0.5"), "eth0"}, true},
	} {
		err := tc.spec.Validate()
		if tc.ok != (err == nil) {
			t.Errorf("%s: err = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v does not wrap ErrInvalid", tc.name, err)
		}
	}
	if _, err := ParsePrefix("10.0.0.300"); !errors.Is(err, ErrInvalid) {
		t.Errorf("ParsePrefix of a bad address: %v", err)
	}
}

func TestARPRoundTrip(t *testing.T) {
	mac, _ := net.ParseMAC("02:00:00:00:00:01")
	in := arpPacket{Op: arpReply, SenderMAC: mac, SenderIP: netip.MustParseAddr("10.0.0.5"),
		TargetMAC: broadcastMAC, TargetIP: netip.MustParseAddr("10.0.0.5")}
	out, err := parseARP(in.marshal())
	if err != nil {
		t.Fatal(err)
	}
	if out.Op != in.Op || out.SenderIP != in.SenderIP || out.TargetIP != in.TargetIP ||
		out.SenderMAC.String() != in.SenderMAC.String() || out.TargetMAC.String() != in.TargetMAC.String() {
		t.Fatalf("round trip: %+v != %+v", out, in)
	}
	if _, err := parseARP(in.marshal()[:20]); err == nil {
		t.Fatal("short ARP message parsed")
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	c := DefaultConfig()
	c.Refresh = 10 * 60e9
	if err := c.Validate(); err == nil {
		t.Fatal("a 10-minute refresh (beyond ARP cache timeouts) was accepted")
	}
}

func TestPolicyCheck(t *testing.T) {
	spec := func(s string) Spec {
		v, err := ParseSpec(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	cidrs := func(ss ...string) []netip.Prefix {
		v, err := ParseCIDRs(ss)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, tc := range []struct {
		name string
		p    Policy
		s    Spec
		ok   bool
		text string
	}{
		{"zero policy allows", Policy{}, spec("a=10.0.0.5@eth0"), true, ""},
		{"listed interface", Policy{Interfaces: []string{"eth1", "eth0"}}, spec("a=10.0.0.5@eth0"), true, ""},
		{"unlisted interface", Policy{Interfaces: []string{"eth1"}}, spec("a=10.0.0.5@eth0"), false, "--vip-allow-interface (eth1)"},
		{"inside a network", Policy{CIDRs: cidrs("192.168.0.0/16", "10.0.0.0/24")}, spec("a=10.0.0.5/24@eth0"), true, ""},
		{"outside every network", Policy{CIDRs: cidrs("10.0.0.0/24")}, spec("a=10.0.1.5@eth0"), false, "--vip-allow-cidr (10.0.0.0/24)"},
		{"prefix wider than the network", Policy{CIDRs: cidrs("10.0.0.0/24")}, spec("a=10.0.0.5/16@eth0"), false, "--vip-allow-cidr"},
		{"both lists, both pass", Policy{Interfaces: []string{"eth0"}, CIDRs: cidrs("10.0.0.0/8")}, spec("a=10.0.0.5@eth0"), true, ""},
		{"both lists, interface fails", Policy{Interfaces: []string{"bond0"}, CIDRs: cidrs("10.0.0.0/8")}, spec("a=10.0.0.5@eth0"), false, "--vip-allow-interface"},
	} {
		err := tc.p.Check(tc.s)
		if tc.ok != (err == nil) || (err != nil && (!errors.Is(err, ErrNotAllowed) || !strings.Contains(err.Error(), tc.text))) {
			t.Errorf("%s: err = %v, want ok=%v mentioning %q", tc.name, err, tc.ok, tc.text)
		}
	}
	for _, bad := range []Policy{
		{Interfaces: []string{"lo"}},
		{Interfaces: []string{"eth 0"}},
		{CIDRs: cidrs("10.0.0.1/24")}, // host bits
		{CIDRs: cidrs("fd00::/64")},
	} {
		if err := bad.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("Policy %+v validated: %v", bad, err)
		}
	}
	if _, err := ParseCIDRs([]string{"10.0.0.0"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("ParseCIDRs of a bare address: %v", err)
	}
}
