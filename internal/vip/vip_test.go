package vip

import (
	"errors"
	"net"
	"net/netip"
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
