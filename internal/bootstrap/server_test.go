package bootstrap

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/pki"
)

// fakeCluster records admissions; the join server's logic is tested
// against it, the real etcd admission in internal/coord/etcd and the whole
// protocol end to end in internal/e2e.
type fakeCluster struct {
	mu       sync.Mutex
	admitted []string
	live     []string
	err      error
}

func (f *fakeCluster) Admit(_ context.Context, name, peerURL string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return "", f.err
	}
	f.admitted = append(f.admitted, name+"="+peerURL)
	return "n1=https://10.0.0.1:2380," + name + "=" + peerURL, nil
}

func (f *fakeCluster) LiveMember(name string) bool { return slices.Contains(f.live, name) }

type fixedVerifier struct{ good string }

func (v fixedVerifier) VerifyJoin(_ context.Context, c string) error {
	if c != v.good {
		return ErrUnauthenticated
	}
	return nil
}

func newServer(t *testing.T) (*Server, *fakeCluster) {
	t.Helper()
	b, err := pki.Create(t.TempDir(), "n1", []string{"10.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	fc := &fakeCluster{live: []string{"n1"}}
	return &Server{Creds: b, Coordinator: "embedded", Embedded: true, Cluster: fc, Verifier: fixedVerifier{"good"},
		Now: time.Now, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}, fc
}

func goodRequest(t *testing.T) Request {
	t.Helper()
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.NewCSR(key, "ignored-by-the-server")
	if err != nil {
		t.Fatal(err)
	}
	return Request{Name: "n2", CSR: csr, APIAddress: "10.0.0.2:10600", EtcdPeerURL: "https://10.0.0.2:2380",
		EtcdClientURL: "https://127.0.0.1:2379", Hosts: []string{"n2.example"}}
}

// TestJoinRefusesBadRequests: each bad request is refused with the right
// error and nothing is admitted.
func TestJoinRefusesBadRequests(t *testing.T) {
	cases := []struct {
		name string
		cred string
		edit func(*Request)
		want error
	}{
		{"wrong credential", "bad", func(*Request) {}, ErrUnauthenticated},
		{"no credential", "", func(*Request) {}, ErrUnauthenticated},
		{"name with slash", "good", func(r *Request) { r.Name = "../n2" }, ErrInvalid},
		{"empty name", "good", func(r *Request) { r.Name = "" }, ErrInvalid},
		{"live member's name", "good", func(r *Request) { r.Name = "n1" }, ErrRefused},
		{"plaintext peer URL", "good", func(r *Request) { r.EtcdPeerURL = "http://10.0.0.2:2380" }, ErrInvalid},
		{"peer URL with path", "good", func(r *Request) { r.EtcdPeerURL = "https://10.0.0.2:2380/x" }, ErrInvalid},
		{"bad API address", "good", func(r *Request) { r.APIAddress = "10.0.0.2" }, ErrInvalid},
		{"garbage host", "good", func(r *Request) { r.Hosts = []string{"evil host\n"} }, ErrInvalid},
		{"too many hosts", "good", func(r *Request) { r.Hosts = make([]string, 17) }, ErrInvalid},
		{"no CSR", "good", func(r *Request) { r.CSR = nil }, ErrInvalid},
		{"certificate instead of CSR", "good", func(r *Request) { r.CSR = []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n") }, ErrInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, fc := newServer(t)
			req := goodRequest(t)
			c.edit(&req)
			_, err := s.Join(context.Background(), "10.0.0.2:40000", c.cred, req)
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			if len(fc.admitted) != 0 {
				t.Fatalf("admitted %v", fc.admitted)
			}
		})
	}
}

// TestJoinIssuesForTheRequestKey: the certificate is for the request's
// key and name, signed by the cluster CA, valid for the request's
// addresses and the address the request came from, and the answer carries
// the CA, secrets and the initial cluster.
func TestJoinIssuesForTheRequestKey(t *testing.T) {
	s, fc := newServer(t)
	req := goodRequest(t)
	resp, err := s.Join(context.Background(), "192.0.2.7:40000", "good", req)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(resp.NodeCert)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if name, err := pki.VerifyPeer([]*x509.Certificate{cert}, s.Creds.CA.Pool(), "n2"); err != nil || name != "n2" || cert.Subject.CommonName != "n2" {
		t.Fatalf("certificate names %q (%v), CN %q", name, err, cert.Subject.CommonName)
	}
	csrBlk, _ := pem.Decode(req.CSR)
	csr, _ := x509.ParseCertificateRequest(csrBlk.Bytes)
	if !publicKeyMatches(csr.PublicKey, cert.PublicKey) {
		t.Fatal("certificate is not for the request's key")
	}
	var ips []string
	for _, ip := range cert.IPAddresses {
		ips = append(ips, ip.String())
	}
	for _, want := range []string{"10.0.0.2", "192.0.2.7", "127.0.0.1"} {
		if !slices.Contains(ips, want) {
			t.Errorf("certificate lacks %s: %v", want, ips)
		}
	}
	if !slices.Contains(cert.DNSNames, "n2.example") {
		t.Errorf("certificate lacks n2.example: %v", cert.DNSNames)
	}
	if resp.Secrets != s.Creds.Secrets || !strings.Contains(resp.EtcdInitialCluster, "n2=https://10.0.0.2:2380") {
		t.Fatalf("answer: secrets %v, initial cluster %q", resp.Secrets == s.Creds.Secrets, resp.EtcdInitialCluster)
	}
	if len(fc.admitted) != 1 {
		t.Fatalf("admitted %v", fc.admitted)
	}
}
