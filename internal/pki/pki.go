// Package pki holds a taskd cluster's credentials: the cluster CA, each
// node's certificate and key, the shared store secrets, and the files they
// live in under DATA_DIR/pki.
//
// Every node holds the CA key, so that any member can admit a new one (k3s
// servers share their CA the same way). A member is as trusted as the whole
// cluster: it can write any record into the store. A join token, which
// yields the CA key, is therefore a root secret and is treated as one.
//
// Identity: a node certificate names its node in a URI SAN taskd://node/NAME.
// Peers and taskctl verify the chain against the cluster CA and, where they
// expect a particular member, that name. A record in the store is never
// proof of identity: an address read from it is only where to dial.
//
// Files: the directory is 0700 and every file 0600, owned by the user taskd
// runs as. ReadPrivate refuses a file that anybody else can read, so a
// credential that leaked through permissions is noticed at start.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Validity of the certificates this package issues.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	NodeValidity = 365 * 24 * time.Hour
	// clockSlack backdates NotBefore so a peer whose clock is a little
	// behind accepts a fresh certificate.
	clockSlack = time.Hour
)

// ErrNotInitialized: the data directory holds no cluster credentials yet.
var ErrNotInitialized = errors.New("pki: no cluster credentials in the data directory")

// ErrInsecureFile: a credential file can be read by someone other than its
// owner, or is not owned by the user taskd runs as.
var ErrInsecureFile = errors.New("pki: credential file is readable by others")

// ErrIdentity: a peer's certificate is not what we expect (wrong CA, no node
// name, another node's name).
var ErrIdentity = errors.New("pki: peer identity not verified")

// Paths are the credential files of one data directory.
type Paths struct{ Dir string }

// In returns the credential paths under a taskd data directory.
func In(dataDir string) Paths { return Paths{Dir: filepath.Join(dataDir, "pki")} }

// CACert is the cluster CA certificate (PEM).
func (p Paths) CACert() string { return filepath.Join(p.Dir, "ca.crt") }

// CAKey is the cluster CA private key (PEM).
func (p Paths) CAKey() string { return filepath.Join(p.Dir, "ca.key") }

// NodeCert is this node's certificate (PEM), signed by the CA.
func (p Paths) NodeCert() string { return filepath.Join(p.Dir, "node.crt") }

// NodeKey is this node's private key (PEM).
func (p Paths) NodeKey() string { return filepath.Join(p.Dir, "node.key") }

// Secrets is the file of shared store secrets (JSON).
func (p Paths) Secrets() string { return filepath.Join(p.Dir, "secrets.json") }

// NodeURI is the URI SAN that names a node in its certificate.
func NodeURI(name string) *url.URL { return &url.URL{Scheme: "taskd", Host: "node", Path: "/" + name} }

// NodeName returns the node a certificate names (its taskd://node/NAME URI
// SAN).
func NodeName(cert *x509.Certificate) (string, bool) {
	for _, u := range cert.URIs {
		if u.Scheme == "taskd" && u.Host == "node" {
			if name, ok := strings.CutPrefix(u.Path, "/"); ok && name != "" && !strings.Contains(name, "/") {
				return name, true
			}
		}
	}
	return "", false
}

// CA is the cluster certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer // nil when only the certificate is known
	pem  []byte
}

// NewCA makes a new cluster CA (ECDSA P-256).
func NewCA(cluster string, now time.Time) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generate CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "taskd cluster CA " + cluster, Organization: []string{"taskd"}},
		NotBefore:             now.Add(-clockSlack),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("pki: create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parse CA certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key, pem: pemBlock("CERTIFICATE", der)}, nil
}

// ParseCA reads a CA from PEM; keyPEM may be nil.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: CA certificate: %w", err)
	}
	if !cert.IsCA {
		return nil, errors.New("pki: CA certificate is not a CA")
	}
	ca := &CA{Cert: cert, pem: pemBlock("CERTIFICATE", cert.Raw)}
	if keyPEM != nil {
		key, err := parseKey(keyPEM)
		if err != nil {
			return nil, fmt.Errorf("pki: CA key: %w", err)
		}
		if !publicKeysEqual(key.Public(), cert.PublicKey) {
			return nil, errors.New("pki: CA key does not match the CA certificate")
		}
		ca.Key = key
	}
	return ca, nil
}

// PEM is the CA certificate in PEM form.
func (ca *CA) PEM() []byte { return slices.Clone(ca.pem) }

// KeyPEM is the CA key in PEM form (nil without a key).
func (ca *CA) KeyPEM() ([]byte, error) {
	if ca.Key == nil {
		return nil, nil
	}
	return marshalKey(ca.Key)
}

// Fingerprint is the hex SHA-256 of the CA certificate (DER): what a join
// token pins.
func (ca *CA) Fingerprint() string { return Fingerprint(ca.Cert) }

// Fingerprint is the hex SHA-256 of a certificate's DER encoding.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// Pool is a certificate pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Issue signs a node certificate for name, valid for server and client
// authentication, with the given hosts (IP addresses or DNS names) as SANs.
// etcd checks a peer's client certificate against the address it connects
// from, so hosts must hold every address the node uses.
func (ca *CA) Issue(pub crypto.PublicKey, name string, hosts []string, now time.Time) ([]byte, error) {
	if ca.Key == nil {
		return nil, errors.New("pki: this node holds no CA key and cannot issue certificates")
	}
	if name == "" || strings.ContainsAny(name, "/ ") {
		return nil, fmt.Errorf("pki: node name %q cannot name a certificate", name)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: name, Organization: []string{"taskd"}},
		NotBefore:    now.Add(-clockSlack),
		NotAfter:     now.Add(NodeValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{NodeURI(name)},
	}
	for _, h := range uniqueHosts(hosts) {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("pki: sign certificate for %s: %w", name, err)
	}
	return pemBlock("CERTIFICATE", der), nil
}

// uniqueHosts always includes loopback (taskctl on the node dials it) and
// drops empty and duplicate entries.
func uniqueHosts(hosts []string) []string {
	out := []string{"localhost", "127.0.0.1", "::1"}
	for _, h := range hosts {
		h = strings.Trim(strings.TrimSpace(h), "[]")
		if h != "" && !slices.Contains(out, h) {
			out = append(out, h)
		}
	}
	return out
}

// HostsOf extracts the host parts of addresses (host:port) and URLs
// (scheme://host:port), for Issue. Bad entries are skipped.
func HostsOf(addrs ...string) []string {
	var out []string
	for _, a := range addrs {
		if a == "" {
			continue
		}
		if strings.Contains(a, "://") {
			if u, err := url.Parse(a); err == nil {
				a = u.Host
			}
		}
		if h, _, err := net.SplitHostPort(a); err == nil {
			a = h
		}
		if a != "" && a != "0.0.0.0" && a != "::" {
			out = append(out, a)
		}
	}
	return out
}

// NewKey makes a node key (ECDSA P-256).
func NewKey() (crypto.Signer, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generate key: %w", err)
	}
	return k, nil
}

// NewCSR makes a certificate request for a node key; the CA takes only its
// public key and signature, never its names (the admitting node decides
// those).
func NewCSR(key crypto.Signer, name string) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		return nil, fmt.Errorf("pki: certificate request: %w", err)
	}
	return pemBlock("CERTIFICATE REQUEST", der), nil
}

// ParseCSR checks a certificate request's signature and returns its key.
func ParseCSR(csrPEM []byte) (crypto.PublicKey, error) {
	b, _ := pem.Decode(csrPEM)
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("pki: not a PEM certificate request")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("pki: certificate request signature: %w", err)
	}
	return csr.PublicKey, nil
}

// MarshalKey encodes a private key as PEM (PKCS#8).
func MarshalKey(k crypto.Signer) ([]byte, error) { return marshalKey(k) }

func marshalKey(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("pki: encode key: %w", err)
	}
	return pemBlock("PRIVATE KEY", der), nil
}

func parseKey(b []byte) (crypto.Signer, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("no PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		if ek, eerr := x509.ParseECPrivateKey(blk.Bytes); eerr == nil {
			return ek, nil
		}
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("key cannot sign")
	}
	return s, nil
}

func parseCert(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(blk.Bytes)
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(fmt.Sprintf("pki: crypto/rand failed: %v", err)) // the system has no entropy; nothing is safe
	}
	return n
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

// ReadPrivate reads a credential file. It refuses a file that is group- or
// world-accessible, or owned by another user than the one reading it, so a
// credential exposed through its permissions is caught rather than used.
func ReadPrivate(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read credential: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read credential: %w", err)
	}
	if err := checkPrivate(path, fi); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read credential: %w", err)
	}
	return b, nil
}

func checkPrivate(path string, fi os.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: %s is not a regular file", ErrInsecureFile, path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%w: %s has mode %04o; run chmod 600 %s", ErrInsecureFile, path, perm, path)
	}
	if uid, ok := ownerOf(fi); ok && uid != os.Geteuid() {
		return fmt.Errorf("%w: %s is owned by uid %d, not by uid %d that reads it", ErrInsecureFile, path, uid, os.Geteuid())
	}
	return nil
}

// WritePrivate writes a credential file with mode 0600 atomically (a
// temporary file renamed into place), creating the directory 0700.
func WritePrivate(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("write credential: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write credential: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("write credential: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write credential: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write credential: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write credential: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write credential: %w", err)
	}
	return nil
}

// RandomSecret returns n random bytes, hex-encoded.
func RandomSecret(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("pki: crypto/rand failed: %v", err))
	}
	return hex.EncodeToString(b)
}

// certChainPEM concatenates a leaf and the CA, so a peer that pins the CA
// by its hash (a joining node) finds it in the handshake.
func certChainPEM(leaf, ca []byte) []byte { return append(slices.Clone(leaf), ca...) }
