package harness

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/taskd/taskd/internal/auth"
	"github.com/taskd/taskd/internal/pki"
)

// PKI is the credentials of one test cluster: one CA and one set of store
// secrets, shared by its taskd nodes, its ZooKeeper servers and the clients
// the harness opens. Nodes get the same files `taskd init` and `taskd join`
// write (DATA_DIR/pki), made with the pki package, before they start.
type PKI struct {
	Dir     string
	CA      *pki.CA
	Secrets pki.Secrets
}

// NewPKI makes a CA and store secrets under dir.
func NewPKI(dir string) (*PKI, error) {
	ca, err := pki.NewCA("test", time.Now())
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &PKI{Dir: dir, CA: ca, Secrets: pki.NewSecrets()}
	if err := os.WriteFile(p.CAFile(), ca.PEM(), 0o644); err != nil {
		return nil, err
	}
	return p, nil
}

// CAFile is the CA certificate (PEM), readable by anyone (it is public).
func (p *PKI) CAFile() string { return filepath.Join(p.Dir, "ca.crt") }

// Provision writes a node's credentials into dataDir: the CA (with its
// key), a certificate for name valid for hosts (loopback is always added)
// and the secrets.
func (p *PKI) Provision(dataDir, name string, hosts ...string) error {
	key, err := pki.NewKey()
	if err != nil {
		return err
	}
	certPEM, err := p.CA.Issue(key.Public(), name, hosts, time.Now())
	if err != nil {
		return err
	}
	keyPEM, err := pki.MarshalKey(key)
	if err != nil {
		return err
	}
	caKey, err := p.CA.KeyPEM()
	if err != nil {
		return err
	}
	if err := pki.Install(dataDir, p.CA.PEM(), caKey, certPEM, keyPEM, p.Secrets); err != nil {
		return fmt.Errorf("provision %s: %w", name, err)
	}
	return nil
}

// AdminToken writes node name's admin token into dataDir
// (DATA_DIR/admin.token), as taskd init and taskd join leave it, and
// returns it.
func (p *PKI) AdminToken(dataDir, name string) (auth.Token, error) {
	l := auth.NewLocal(dataDir, name)
	if err := l.Write(); err != nil {
		return auth.Token{}, fmt.Errorf("admin token of %s: %w", name, err)
	}
	return l.Token, nil
}

// Bundle provisions credentials for a client of the harness (name is its
// certificate's common name, and so its etcd user) and loads them.
func (p *PKI) Bundle(name string, hosts ...string) (*pki.Bundle, error) {
	dir := filepath.Join(p.Dir, "clients", name)
	if !pki.Initialized(dir) {
		if err := p.Provision(dir, name, hosts...); err != nil {
			return nil, err
		}
	}
	return pki.Load(dir)
}

// ServerPEM writes a PEM file holding a new private key followed by its
// certificate for name and hosts, as ZooKeeper's PEM key store reads it,
// and returns its path.
func (p *PKI) ServerPEM(dir, name string, hosts ...string) (string, error) {
	key, err := pki.NewKey()
	if err != nil {
		return "", err
	}
	certPEM, err := p.CA.Issue(key.Public(), name, hosts, time.Now())
	if err != nil {
		return "", err
	}
	keyPEM, err := pki.MarshalKey(key)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, name+".pem")
	if err := pki.WritePrivate(path, append(keyPEM, certPEM...)); err != nil {
		return "", err
	}
	return path, nil
}

// ClientTLS is what a client of a server this PKI signed (ZooKeeper, an
// external etcd) presents and trusts: the CA, with standard host name
// verification, and a certificate of it.
func (p *PKI) ClientTLS(b *pki.Bundle) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(p.CA.Cert)
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, Certificates: []tls.Certificate{b.Cert}}
}
