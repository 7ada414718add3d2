package testenv

import (
	"os"
	"testing"

	"github.com/taskd/taskd/internal/harness"
)

// NetLab is harness.NetLab with test-failing accessors.
type NetLab struct {
	*harness.NetLab
	t testing.TB
}

// NewNetLab builds a lab network for the test (see harness.NetLab), or
// skips/fails (see Missing) without root or iproute2. Cleanup removes it.
func NewNetLab(t testing.TB, hosts ...string) *NetLab {
	t.Helper()
	NeedNetns(t)
	l, err := harness.NewNetLab(hosts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return &NetLab{NetLab: l, t: t}
}

// IP runs the ip command and fails the test on error.
func (l *NetLab) IP(args ...string) string {
	l.t.Helper()
	out, err := l.NetLab.IP(args...)
	if err != nil {
		l.t.Fatal(err)
	}
	return out
}

// MAC is the hardware address of host's eth0.
func (l *NetLab) MAC(host string) string {
	l.t.Helper()
	m, err := l.NetLab.MAC(host)
	if err != nil {
		l.t.Fatal(err)
	}
	return m
}

// Has returns the address ip on host's eth0, if present.
func (l *NetLab) Has(host, ip string) (harness.AddrInfo, bool) {
	l.t.Helper()
	a, ok, err := l.NetLab.Has(host, ip)
	if err != nil {
		l.t.Fatal(err)
	}
	return a, ok
}

// NeedNetns skips or fails (see Missing) unless the test can create network
// namespaces: root and iproute2.
func NeedNetns(t testing.TB) {
	t.Helper()
	Need(t, "iproute2", "ip")
	if os.Geteuid() != 0 {
		Missing(t, "network namespaces need root")
	}
}
