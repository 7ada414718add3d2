package node

import (
	"errors"
	"strings"
	"testing"

	"github.com/taskd/taskd/internal/events"
	"github.com/taskd/taskd/internal/vipaddr"
)

// The VIP flags: allowlists are validated, and a --vip outside this node's
// own lists is a configuration error (exit 78), not a VIP nobody may hold.
func TestVIPFlagsValidate(t *testing.T) {
	for _, tc := range []struct {
		name         string
		vips, ifs, c []string
		text         string // "" for valid
	}{
		{"no lists", []string{"iscsi=10.0.0.50@eth0"}, nil, nil, ""},
		{"inside both", []string{"iscsi=10.0.0.50@eth0"}, []string{"eth0"}, []string{"10.0.0.0/24"}, ""},
		{"outside the interfaces", []string{"iscsi=10.0.0.50@eth0"}, []string{"eth1"}, nil, "--vip-allow-interface"},
		{"outside the networks", []string{"iscsi=10.0.0.50@eth0"}, nil, []string{"10.9.0.0/16"}, "--vip-allow-cidr"},
		{"host bits", nil, nil, []string{"10.0.0.1/24"}, "host bits"},
		{"not a CIDR", nil, nil, []string{"10.0.0.1"}, "not a CIDR"},
		{"lo allowed", nil, []string{"lo"}, nil, "other than lo"},
		{"reserved vip", []string{"x=240.0.0.1@eth0"}, nil, nil, "reserved"},
		{"short prefix vip", []string{"x=130.0.0.1/1@eth0"}, nil, nil, "shorter than /16"},
	} {
		c := DefaultConfig()
		c.Name, c.VIPs, c.VIPAllowInterfaces, c.VIPAllowCIDRs = "n1", tc.vips, tc.ifs, tc.c
		err := c.Validate()
		switch {
		case tc.text == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.text != "" && (!errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.text)):
			t.Errorf("%s: %v, want a configuration error mentioning %q", tc.name, err, tc.text)
		}
	}
}

// TestVIPEventKinds: every kind a VIP holder reports is recorded on the
// timeline under a known kind, the one operators know ("vip_" + kind); a
// kind without one would be logged without its event.
func TestVIPEventKinds(t *testing.T) {
	for _, k := range vipaddr.EventKinds {
		ek, ok := vipEventKinds[k]
		if !ok || string(ek) != "vip_"+string(k) || events.ValidType(string(ek)) != nil {
			t.Errorf("holder event %q is recorded as %q, want the known type %q", k, ek, "vip_"+string(k))
		}
	}
	if len(vipEventKinds) != len(vipaddr.EventKinds) {
		t.Errorf("%d timeline kinds for %d holder kinds", len(vipEventKinds), len(vipaddr.EventKinds))
	}
}
