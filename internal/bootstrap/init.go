package bootstrap

import (
	"fmt"
	"time"

	"github.com/taskd/taskd/internal/auth"
	"github.com/taskd/taskd/internal/pki"
)

// Init creates the credentials of a new cluster in dataDir (pki.Create: a
// CA, this node's certificate for hosts, store secrets) and its first join
// token, written to DATA_DIR/join.token (0600). The token's record is
// stored when the node first reaches its store (auth.Register).
func Init(dataDir, name string, hosts []string, now time.Time) (pki.JoinToken, error) {
	b, err := pki.Create(dataDir, name, hosts, now)
	if err != nil {
		return pki.JoinToken{}, err
	}
	tok := pki.JoinToken{CAHash: b.CA.Fingerprint(), Credential: auth.NewToken().String()}
	if err := pki.WritePrivate(JoinTokenPath(dataDir), []byte(tok.String()+"\n")); err != nil {
		return pki.JoinToken{}, err
	}
	return tok, nil
}

// RenewCert re-issues the node certificate of dataDir from the local CA
// key, for the same key and name, with the hosts of the current certificate
// plus hosts. The node loads it at its next start.
func RenewCert(dataDir string, hosts []string, now time.Time) (*pki.Bundle, error) {
	b, err := pki.Load(dataDir)
	if err != nil {
		return nil, err
	}
	if b.CA.Key == nil {
		return nil, fmt.Errorf("%s holds no CA key: renew the certificate on a node that has one", b.Paths.CAKey())
	}
	all := append([]string(nil), b.Leaf.DNSNames...)
	for _, ip := range b.Leaf.IPAddresses {
		all = append(all, ip.String())
	}
	all = append(all, hosts...)
	certPEM, err := b.CA.Issue(b.Leaf.PublicKey, b.Name, all, now)
	if err != nil {
		return nil, err
	}
	if err := pki.WritePrivate(b.Paths.NodeCert(), certPEM); err != nil {
		return nil, err
	}
	return pki.Load(dataDir)
}
