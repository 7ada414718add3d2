package harness

import (
	"crypto/x509"
	"fmt"
	"time"

	"github.com/taskd/taskd/internal/auth"
	"github.com/taskd/taskd/internal/pki"
)

// NodeCreds names a node whose data directory gets credentials.
type NodeCreds struct {
	Name    string
	DataDir string
	Hosts   []string // addresses the node uses (SANs)
}

// Credentials are what the harness made for a cluster.
type Credentials struct {
	CA     *pki.CA
	Tokens map[string]auth.Token // node name -> its admin token
}

// Pool is the cluster CA as a certificate pool.
func (c *Credentials) Pool() *x509.CertPool { return c.CA.Pool() }

// ProvisionCredentials gives every node the same cluster CA before any
// starts: DATA_DIR/pki with the CA, the node's certificate and the shared
// secrets, and DATA_DIR/admin.token, as `taskd init` and `taskd join`
// leave them.
func ProvisionCredentials(nodes []NodeCreds) (*Credentials, error) {
	now := time.Now()
	ca, err := pki.NewCA("harness", now)
	if err != nil {
		return nil, err
	}
	caKey, err := ca.KeyPEM()
	if err != nil {
		return nil, err
	}
	secrets := pki.NewSecrets()
	out := &Credentials{CA: ca, Tokens: map[string]auth.Token{}}
	for _, n := range nodes {
		key, err := pki.NewKey()
		if err != nil {
			return nil, err
		}
		cert, err := ca.Issue(key.Public(), n.Name, n.Hosts, now)
		if err != nil {
			return nil, err
		}
		keyPEM, err := pki.MarshalKey(key)
		if err != nil {
			return nil, err
		}
		if err := pki.Install(n.DataDir, ca.PEM(), caKey, cert, keyPEM, secrets); err != nil {
			return nil, fmt.Errorf("credentials of %s: %w", n.Name, err)
		}
		l := auth.NewLocal(n.DataDir, n.Name)
		if err := l.Write(); err != nil {
			return nil, fmt.Errorf("admin token of %s: %w", n.Name, err)
		}
		out.Tokens[n.Name] = l.Token
	}
	return out, nil
}
