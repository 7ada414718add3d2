// Package bootstrap makes and joins taskd clusters: `taskd init` creates a
// cluster's credentials and its first join token; `taskd join` admits a new
// node through a member's API, the way kubeadm and k3s join nodes.
//
// The join protocol:
//
//  1. The joining node parses its join token (pki.JoinToken): the SHA-256 of
//     the cluster CA and a join credential.
//  2. It dials the member with pki.PinnedClientTLS: the TLS handshake fails
//     unless the member presents a certificate chain with that CA, so the
//     credential is never sent to anybody else.
//  3. It sends ClusterService/Join with the credential as bearer token, its
//     name, its addresses and a certificate request made with a key that
//     never leaves it.
//  4. The member verifies the credential (JoinVerifier), the name (valid,
//     not a live member) and the addresses, signs a certificate for the
//     request's key with SANs from the addresses and the address the request
//     came from, and on the embedded store adds the node's etcd member (as
//     a learner, as etcd's root user) and its etcd user. It answers with the
//     CA (certificate and key), the certificate, the store secrets and
//     settings.
//  5. The joining node checks the answer against its pin, writes
//     DATA_DIR/cluster.json and DATA_DIR/pki (pki.Install, node.crt last),
//     and starts.
//
// Idempotence: a node whose data directory holds credentials does not join
// again; a join retried after the member was added but before it started is
// answered again (etcd.Server.Admit).
package bootstrap

import "errors"

// Errors a join can end with; the API maps them to codes and the daemon to
// exit statuses.
var (
	// ErrUnauthenticated: the join credential is missing, unknown, expired
	// or not of role join.
	ErrUnauthenticated = errors.New("join credential refused")
	// ErrInvalid: a malformed request (name, addresses, certificate
	// request).
	ErrInvalid = errors.New("invalid join request")
	// ErrRefused: the request is well-formed but cannot be granted (the
	// name belongs to a live member, the peer URL to another member).
	ErrRefused = errors.New("join refused")
	// ErrUnavailable: the member cannot admit anybody now (its store is
	// not running yet, or etcd cannot change membership yet); retry.
	ErrUnavailable = errors.New("join not possible now")
	// ErrNotTLS: a join request that did not come over TLS.
	ErrNotTLS = errors.New("join requests are only served over TLS")
)
