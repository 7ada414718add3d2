package zk_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	gozk "github.com/go-zookeeper/zk"
	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/coord/zk"
	"github.com/taskd/taskd/internal/harness"
	"github.com/taskd/taskd/internal/testenv"
)

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// rawConn connects the way an attacker's client would: its own dialer and
// credentials (digest "" for none). It waits at most a few seconds for a
// session; ok is false if none came.
func rawConn(t *testing.T, servers []string, tc *tls.Config, digest string) (*gozk.Conn, bool) {
	t.Helper()
	dialer := func(network, addr string, timeout time.Duration) (net.Conn, error) {
		if tc == nil {
			return net.DialTimeout(network, addr, timeout)
		}
		return tls.DialWithDialer(&net.Dialer{Timeout: timeout}, network, addr, tc)
	}
	c, events, err := gozk.Connect(servers, 4*time.Second, gozk.WithDialer(dialer), gozk.WithLogInfo(false),
		gozk.WithLogger(nopLogger{}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	deadline := time.After(5 * time.Second)
	for {
		select {
		case ev := <-events:
			if ev.State == gozk.StateHasSession {
				if digest != "" {
					if err := c.AddAuth("digest", []byte(digest)); err != nil {
						t.Fatal(err)
					}
				}
				return c, true
			}
		case <-deadline:
			return c, false
		}
	}
}

type nopLogger struct{}

func (nopLogger) Printf(string, ...any) {}

// tree lists every znode under root with its data version and data, as the
// cluster's credential sees them.
func tree(t *testing.T, c *gozk.Conn, root string) []string {
	t.Helper()
	var out []string
	var walk func(p string)
	walk = func(p string) {
		data, st, err := c.Get(p)
		if err != nil {
			t.Fatalf("read %s: %v", p, err)
		}
		out = append(out, fmt.Sprintf("%s v%d %q", p, st.Version, data))
		kids, _, err := c.Children(p)
		if err != nil {
			t.Fatalf("children of %s: %v", p, err)
		}
		slices.Sort(kids)
		for _, k := range kids {
			walk(path.Join(p, k))
		}
	}
	walk(root)
	return out
}

// TestRefusesWithoutCredentials plays an attacker against a TLS-only
// ensemble holding taskd's znodes: without TLS, without a client
// certificate, with another CA's certificate, with the cluster's
// certificate but no digest or a wrong one. No znode of taskd's can be
// read, listed, written, deleted, re-ACLed or created under, and the tree
// is unchanged.
func TestRefusesWithoutCredentials(t *testing.T) {
	ens := testenv.StartEnsemble(t, 1)
	s := open(t, ens, "/sec")
	ctx := ctxFor(t, time.Minute)
	for _, k := range []string{"/taskd/tasks/active/t1", "/taskd/vips/config/iscsi", "/taskd/election/epoch"} {
		if _, err := s.Create(ctx, k, []byte("orig")); err != nil {
			t.Fatal(err)
		}
	}
	sess, err := s.NewSession(ctx, 6*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close(ctx)
	if _, err := s.Create(ctx, "/taskd/members/n1", []byte("eph"), coord.WithSession(sess)); err != nil {
		t.Fatal(err)
	}
	owner, ok := rawConn(t, ens.Addrs(), testenv.ZKConfig(t, ens, nil, "").TLS, ens.PKI.Secrets.ZKDigest)
	if !ok {
		t.Fatal("the cluster's own credentials get no session")
	}
	before := tree(t, owner, "/sec")

	other, err := harness.NewPKI(filepath.Join(t.TempDir(), "other"))
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := other.Bundle("n1")
	if err != nil {
		t.Fatal(err)
	}
	good := testenv.ZKConfig(t, ens, nil, "").TLS
	noCert := good.Clone()
	noCert.Certificates = nil
	foreignTLS := other.ClientTLS(foreign)
	foreignTLS.RootCAs = good.RootCAs // trusts the server; presents another CA's certificate
	user, _, _ := strings.Cut(ens.PKI.Secrets.ZKDigest, ":")
	attackers := []struct {
		name    string
		tls     *tls.Config
		digest  string
		session bool // the attacker gets a session at all
	}{
		{"plaintext", nil, "", false},
		{"tls without client certificate", noCert, "", false},
		{"certificate of another CA", foreignTLS, "", false},
		{"cluster certificate, no digest", good, "", true},
		{"cluster certificate, wrong digest", good, user + ":guess", true},
	}
	for _, a := range attackers {
		t.Run(a.name, func(t *testing.T) {
			c, ok := rawConn(t, ens.Addrs(), a.tls, a.digest)
			if ok != a.session {
				t.Fatalf("session: %v, want %v", ok, a.session)
			}
			if !ok {
				return
			}
			for _, p := range []string{"/sec", "/sec/taskd", "/sec/taskd/tasks/active/t1", "/sec/taskd/members/n1"} {
				if _, _, err := c.Get(p); !errors.Is(err, gozk.ErrNoAuth) {
					t.Errorf("get %s: %v, want ErrNoAuth", p, err)
				}
				if _, _, err := c.Children(p); !errors.Is(err, gozk.ErrNoAuth) {
					t.Errorf("children %s: %v, want ErrNoAuth", p, err)
				}
				if _, err := c.Set(p, []byte("evil"), -1); !errors.Is(err, gozk.ErrNoAuth) {
					t.Errorf("set %s: %v, want ErrNoAuth", p, err)
				}
				if _, err := c.SetACL(p, gozk.WorldACL(gozk.PermAll), -1); !errors.Is(err, gozk.ErrNoAuth) {
					t.Errorf("setACL %s: %v, want ErrNoAuth", p, err)
				}
				if _, err := c.Create(p+"/evil", nil, 0, gozk.WorldACL(gozk.PermAll)); !errors.Is(err, gozk.ErrNoAuth) {
					t.Errorf("create under %s: %v, want ErrNoAuth", p, err)
				}
			}
			if err := c.Delete("/sec/taskd/election/epoch", -1); !errors.Is(err, gozk.ErrNoAuth) {
				t.Errorf("delete: %v, want ErrNoAuth", err)
			}
		})
	}
	if after := tree(t, owner, "/sec"); !slices.Equal(before, after) {
		t.Fatalf("tree changed:\nbefore %v\nafter  %v", before, after)
	}
}

// TestACLOnEveryZnode: every znode taskd creates (the chroot, parents,
// plain and ephemeral keys, keys made in transactions) grants all rights to
// the cluster's digest credential and nothing to anybody else.
func TestACLOnEveryZnode(t *testing.T) {
	ens := testenv.StartEnsemble(t, 1)
	s := open(t, ens, "/acl/chroot")
	ctx := ctxFor(t, time.Minute)
	sess, err := s.NewSession(ctx, 6*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close(ctx)
	if _, err := s.Create(ctx, "/taskd/a/b/c", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, "/taskd/eph/e", nil, coord.WithSession(sess)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Txn(ctx, []coord.Cond{{Key: "/taskd/absent"}}, []coord.Op{coord.CreateOp("/taskd/t/x", nil, nil), coord.CreateOp("/taskd/t/eph", nil, sess)}); err != nil {
		t.Fatal(err)
	}
	owner, ok := rawConn(t, ens.Addrs(), testenv.ZKConfig(t, ens, nil, "").TLS, ens.PKI.Secrets.ZKDigest)
	if !ok {
		t.Fatal("no session")
	}
	user, pw, _ := strings.Cut(ens.PKI.Secrets.ZKDigest, ":")
	want := gozk.DigestACL(gozk.PermAll, user, pw)
	nodes := append([]string{"/acl"}, tree(t, owner, "/acl/chroot")...)
	for _, n := range nodes {
		p, _, _ := strings.Cut(n, " ")
		acl, _, err := owner.GetACL(p)
		if err != nil {
			t.Fatalf("acl of %s: %v", p, err)
		}
		if !slices.Equal(acl, want) {
			t.Errorf("%s has ACL %+v, want only %+v", p, acl, want)
		}
	}
	if len(nodes) < 10 {
		t.Fatalf("walked only %v", nodes)
	}
}

// TestRefusesOpenRoot: a chroot or taskd root znode that already exists
// with a world ACL (made by an unauthenticated taskd, or planted) is
// refused, naming it, before taskd writes anything into it.
func TestRefusesOpenRoot(t *testing.T) {
	ens := testenv.StartEnsemble(t, 1)
	owner, ok := rawConn(t, ens.Addrs(), testenv.ZKConfig(t, ens, nil, "").TLS, "")
	if !ok {
		t.Fatal("no session")
	}
	for _, p := range []string{"/open", "/ok", "/ok/taskd"} {
		if _, err := owner.Create(p, nil, 0, gozk.WorldACL(gozk.PermAll)); err != nil {
			t.Fatal(err)
		}
	}
	// /ok itself is made ours; its taskd child stays open.
	user, pw, _ := strings.Cut(ens.PKI.Secrets.ZKDigest, ":")
	if _, err := owner.SetACL("/ok", gozk.DigestACL(gozk.PermAll, user, pw), -1); err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t, time.Minute)
	for chroot, bad := range map[string]string{"/open": "/open", "/ok": "/ok/taskd"} {
		st := open(t, ens, chroot).(*zk.Store)
		err := st.CheckOwned(ctx, "/taskd")
		if !errors.Is(err, zk.ErrOpenACL) || !strings.Contains(err.Error(), bad+" grants") {
			t.Errorf("chroot %s: %v, want ErrOpenACL naming %s", chroot, err, bad)
		}
	}
	if err := open(t, ens, "/fresh").(*zk.Store).CheckOwned(ctx, "/taskd"); err != nil {
		t.Errorf("a chroot that does not exist yet: %v", err)
	}
	if kids, _, err := owner.Children("/open"); err != nil || len(kids) != 0 {
		t.Errorf("something was written into the refused chroot: %v %v", kids, err)
	}
}
