package pki

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

func TestCreateLoadAndPermissions(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	b, err := Create(dir, "n1", []string{"10.0.0.1", "node1.example"}, now)
	if err != nil {
		t.Fatal(err)
	}
	if b.Name != "n1" || b.CA.Key == nil || b.Secrets.EtcdRootPassword == "" || !strings.HasPrefix(b.Secrets.ZKDigest, "taskd:") {
		t.Fatalf("bundle: %+v", b)
	}
	if got := b.Leaf.IPAddresses; len(got) < 3 {
		t.Fatalf("SANs: %v", got)
	}
	if _, err := Create(dir, "n1", nil, now); err == nil {
		t.Fatal("Create over existing credentials succeeded")
	}
	fi, err := os.Stat(b.Paths.Dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("pki dir mode: %v %v", fi.Mode(), err)
	}
	for _, f := range []string{b.Paths.CACert(), b.Paths.CAKey(), b.Paths.NodeCert(), b.Paths.NodeKey(), b.Paths.Secrets()} {
		fi, err := os.Stat(f)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: mode %v %v", f, fi.Mode(), err)
		}
	}
	// A key readable by the group is refused, and named.
	if err := os.Chmod(b.Paths.NodeKey(), 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); !errors.Is(err, ErrInsecureFile) || !strings.Contains(err.Error(), "node.key") {
		t.Fatalf("Load with a group-readable key: %v", err)
	}
	if err := os.Chmod(b.Paths.NodeKey(), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(t.TempDir()); !errors.Is(err, ErrNotInitialized) {
		t.Fatalf("Load of an empty dir: %v", err)
	}
}

func TestIdentityVerification(t *testing.T) {
	now := time.Now()
	a, err := Create(t.TempDir(), "n1", nil, now)
	if err != nil {
		t.Fatal(err)
	}
	other, err := Create(t.TempDir(), "n1", nil, now) // same name, another cluster
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", a.ServerTLS(false))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.(*tls.Conn).Handshake()
			_, _ = io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	dial := func(cfg *tls.Config) error {
		d := tls.Dialer{Config: cfg}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial(VerifyingClientTLS(a.CA.Pool(), "n1")); err != nil {
		t.Fatalf("right CA, right name: %v", err)
	}
	if err := dial(VerifyingClientTLS(a.CA.Pool(), "")); err != nil {
		t.Fatalf("right CA, any name: %v", err)
	}
	if err := dial(VerifyingClientTLS(a.CA.Pool(), "n2")); err == nil {
		t.Fatal("a certificate for n1 was accepted as n2")
	}
	if err := dial(VerifyingClientTLS(other.CA.Pool(), "n1")); err == nil {
		t.Fatal("a server of another cluster was accepted")
	}
	tok := JoinToken{CAHash: a.CA.Fingerprint(), Credential: "taskd.abc.def"}
	parsed, err := ParseJoinToken(tok.String())
	if err != nil || parsed != tok {
		t.Fatalf("join token round trip: %+v %v", parsed, err)
	}
	if err := dial(PinnedClientTLS(parsed.CAHash, nil)); err != nil {
		t.Fatalf("pinned CA: %v", err)
	}
	if err := dial(PinnedClientTLS(other.CA.Fingerprint(), nil)); err == nil {
		t.Fatal("a server whose CA is not the pinned one was accepted")
	}
	for _, bad := range []string{"", "taskd-join::x", "taskd-join:zz:x", "other:" + a.CA.Fingerprint() + ":x", "taskd-join:" + a.CA.Fingerprint() + ":"} {
		if _, err := ParseJoinToken(bad); !errors.Is(err, ErrBadJoinToken) {
			t.Errorf("ParseJoinToken(%q) = %v", bad, err)
		}
	}
}

func TestIssueNeedsCAKeyAndValidName(t *testing.T) {
	b, err := Create(t.TempDir(), "n1", nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, _ := NewKey()
	csr, err := NewCSR(key, "n2")
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ParseCSR(csr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.CA.Issue(pub, "../n2", nil, time.Now()); err == nil {
		t.Fatal("issued a certificate for a name with a slash")
	}
	certOnly, err := ParseCA(b.CA.PEM(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := certOnly.Issue(pub, "n2", nil, time.Now()); err == nil {
		t.Fatal("issued without a CA key")
	}
	if _, err := ParseCSR([]byte("junk")); err == nil {
		t.Fatal("parsed junk as a CSR")
	}
	if got := HostsOf("https://10.1.2.3:2380", "node.example:10600", "0.0.0.0:1", "", "[::1]:5"); strings.Join(got, ",") != "10.1.2.3,node.example,::1" {
		t.Fatalf("HostsOf: %v", got)
	}
}
