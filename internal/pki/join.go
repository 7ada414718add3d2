package pki

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// joinPrefix starts every join token, so that one is recognised in a
// config file or a paste buffer.
const joinPrefix = "taskd-join"

// ErrBadJoinToken: a join token that is not well-formed.
var ErrBadJoinToken = errors.New("pki: malformed join token: want taskd-join:CAHASH:CREDENTIAL as printed by `taskd init` or `taskctl token create --role join`")

// JoinToken lets a new node join: it pins the cluster CA by its SHA-256
// (so the node verifies the server before it sends anything, as k3s and
// kubeadm do) and carries the credential that the cluster checks (an API
// token of role join, stored hashed in the store).
type JoinToken struct {
	CAHash     string // hex SHA-256 of the CA certificate's DER
	Credential string
}

// String is the token's text form: taskd-join:CAHASH:CREDENTIAL.
func (t JoinToken) String() string { return joinPrefix + ":" + t.CAHash + ":" + t.Credential }

// ParseJoinToken parses the text form.
func ParseJoinToken(s string) (JoinToken, error) {
	parts := strings.SplitN(strings.TrimSpace(s), ":", 3)
	if len(parts) != 3 || parts[0] != joinPrefix || parts[2] == "" {
		return JoinToken{}, ErrBadJoinToken
	}
	if b, err := hex.DecodeString(parts[1]); err != nil || len(b) != 32 {
		return JoinToken{}, fmt.Errorf("%w (the CA hash is not 64 hex digits)", ErrBadJoinToken)
	}
	return JoinToken{CAHash: strings.ToLower(parts[1]), Credential: parts[2]}, nil
}

// PinnedClientTLS is the configuration with which a joining node dials a
// member: it accepts the server only if the chain it presents contains a
// CA whose hash is caHash and the leaf is a node certificate signed by it.
// The CA found is stored in *found.
func PinnedClientTLS(caHash string, found **x509.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The joining node has no CA yet, only the pin: VerifyConnection
		// (every handshake, resumed ones included) finds the pinned CA in
		// the presented chain and verifies the leaf against it
		// (x509.Verify). Test: TestJoinPinsTheCA (another CA is refused
		// and nothing is sent).
		InsecureSkipVerify: true, //nolint:gosec // chain verified against the pinned CA in VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			ca, err := VerifyPinned(cs.PeerCertificates, caHash)
			if err != nil {
				return err
			}
			if found != nil {
				*found = ca
			}
			return nil
		},
	}
}

// VerifyPinned finds the CA pinned by caHash in a presented chain and
// verifies the leaf against it.
func VerifyPinned(chain []*x509.Certificate, caHash string) (*x509.Certificate, error) {
	for _, c := range chain {
		if c.IsCA && Fingerprint(c) == caHash {
			pool := x509.NewCertPool()
			pool.AddCert(c)
			if _, err := VerifyPeer(chain, pool, ""); err != nil {
				return nil, err
			}
			return c, nil
		}
	}
	return nil, fmt.Errorf("%w: the server's CA does not match the join token's CA hash (wrong cluster, or someone in between)", ErrIdentity)
}
