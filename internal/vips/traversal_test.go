package vips_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/vipaddr"
	"github.com/taskd/taskd/internal/vips"
)

// snapshot reads the keys of dirs (each with its version): what an attack
// must leave as it was.
func snapshot(t *testing.T, ctx context.Context, kv coord.Store, dirs ...string) string {
	t.Helper()
	var out []string
	for _, d := range dirs {
		kvs, err := kv.List(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range kvs {
			out = append(out, fmt.Sprintf("%s@%d=%s", e.Key, e.Version, e.Value))
		}
	}
	slices.Sort(out)
	return strings.Join(out, "\n")
}

// testTraversal plays finding 3 against the registry: service and node
// names that would leave vips/config (DeleteVIP "../../tasks/active/ID",
// DrainVIP "../../election/epoch") are refused with ErrInvalid, and the
// task record, the epoch, the leader and the VIP holder stay as they were.
// Records written around taskd under vips/config with a name that is not
// a service, or that names another service, are never assigned or held.
func testTraversal(t *testing.T, b backend) {
	c := startCluster(t, b.Open, []vipaddr.Spec{mustSpec(t, "iscsi=10.0.0.50@eth0")})
	leader := c.leader()
	c.waitHolder("iscsi", leader, 20*time.Second)
	ctx := ctxT(t, 60*time.Second)
	kv := c.member(leader).store
	reg := c.registry(leader)
	root := c.root.String()

	// A task record: the target of DeleteVIP "../../tasks/active/ID".
	const id = "0f8fad5b-d9cb-469f-a165-70867728950e"
	if _, err := kv.Create(ctx, root+"/tasks/active/"+id, []byte(`{"id":"`+id+`","state":"running"}`)); err != nil {
		t.Fatal(err)
	}
	dirs := []string{root, root + "/tasks/active", root + "/election", root + "/members",
		root + "/vips/config", root + "/vips/assign", root + "/vips/held"}
	before := snapshot(t, ctx, kv, dirs...)
	views := map[string]string{}
	for _, m := range c.members {
		v := m.view()
		views[m.name] = fmt.Sprintf("leader %s epoch %d fence %v", v.Leader, v.Epoch, v.LastFence)
	}

	for _, svc := range []string{"../../tasks/active/" + id, "../../election/epoch", "..", ".", "", "iscsi/..",
		"iscsi/../../../election/epoch", "iscsi\x00", "ISCSI", strings.Repeat("a", 300)} {
		if err := reg.Delete(ctx, svc); !errors.Is(err, keys.ErrInvalid) {
			t.Errorf("Delete(%q) = %v, want ErrInvalid", svc, err)
		}
		for _, to := range []string{"", leader} {
			if got, err := reg.Drain(ctx, svc, to); !errors.Is(err, keys.ErrInvalid) {
				t.Errorf("Drain(%q, %q) = %q, %v, want ErrInvalid", svc, to, got, err)
			}
		}
		if err := reg.WaitHeld(ctx, svc, leader); !errors.Is(err, keys.ErrInvalid) {
			t.Errorf("WaitHeld(%q) = %v, want ErrInvalid", svc, err)
		}
		_, err := reg.Set(ctx, vips.ServiceVIP{Service: svc, Address: "10.0.0.61", Interface: "eth0"})
		if !errors.Is(err, keys.ErrInvalid) || !errors.Is(err, vipaddr.ErrInvalid) {
			t.Errorf("Set(%q) = %v, want ErrInvalid", svc, err)
		}
	}
	for _, to := range []string{"../n2", "..", "n2/x", "n2\n"} {
		if got, err := reg.Drain(ctx, "iscsi", to); !errors.Is(err, keys.ErrInvalid) {
			t.Errorf("Drain(iscsi, %q) = %q, %v, want ErrInvalid", to, got, err)
		}
	}
	if after := snapshot(t, ctx, kv, dirs...); after != before {
		t.Errorf("refused requests changed the store:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	for _, m := range c.members {
		v := m.view()
		if got := fmt.Sprintf("leader %s epoch %d fence %v", v.Leader, v.Epoch, v.LastFence); got != views[m.name] {
			t.Errorf("%s: %s, before the attack %s", m.name, got, views[m.name])
		}
	}

	// Records written around taskd: a key that is no service, and a
	// service whose record names another one.
	crafted := map[string]string{
		root + "/vips/config/EVIL": `{"service":"EVIL","address":"10.0.0.62/32","interface":"eth0"}`,
		root + "/vips/config/nfs":  `{"service":"../../election/epoch","address":"10.0.0.63/32","interface":"eth0"}`,
	}
	for k, v := range crafted {
		if _, err := kv.Create(ctx, k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	// A genuine VIP set afterwards is assigned and held: the assigner and
	// the holders have seen the crafted records by then.
	if _, err := reg.Set(ctx, vips.ServiceVIP{Service: "smb", Address: "10.0.0.64", Interface: "eth0"}); err != nil {
		t.Fatal(err)
	}
	c.waitHolder("smb", leader, 20*time.Second)
	for _, svc := range []string{"EVIL", "nfs", "../../election/epoch"} {
		if h := c.led.holder(svc); h != "" {
			t.Errorf("crafted vip %q is held by %s", svc, h)
		}
	}
	assigned, err := kv.List(ctx, root+"/vips/assign")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range assigned {
		if !strings.HasSuffix(a.Key, "/iscsi") && !strings.HasSuffix(a.Key, "/smb") {
			t.Errorf("a crafted record was assigned: %s", a.Key)
		}
	}
	st, err := reg.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, s := range st {
		listed = append(listed, s.VIP.Service)
	}
	if !slices.Equal(listed, []string{"iscsi", "smb"}) {
		t.Errorf("vip list shows %v, want [iscsi smb]", listed)
	}
	if _, err := kv.Get(ctx, root+"/election/epoch"); err != nil {
		t.Errorf("epoch: %v", err)
	}
	if now := c.leader(); now != leader {
		t.Errorf("leadership moved from %s to %s during the attack", leader, now)
	}
	c.led.check(t)
}
