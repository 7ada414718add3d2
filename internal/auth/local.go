package auth

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/taskd/taskd/internal/pki"
)

// LocalFile is the node-local admin token under a data directory.
func LocalFile(dataDir string) string { return filepath.Join(dataDir, "admin.token") }

// LocalID is the token id of node's local admin token. It is derived from
// the node name, so a replaced file replaces the node's one record instead
// of leaving the old one valid.
func LocalID(node string) string {
	h := sha256.Sum256([]byte("taskd-local-admin:" + node))
	return hex.EncodeToString(h[:idLen/2])
}

// Local is the node's own admin token and the file that holds it.
type Local struct {
	Token Token
	Path  string
}

// NewLocal makes node's admin token (without writing it).
func NewLocal(dataDir, node string) Local {
	return Local{Token: Token{ID: LocalID(node), Secret: randomHex(secretBytes)}, Path: LocalFile(dataDir)}
}

// Write stores the token in its file, mode 0600.
func (l Local) Write() error { return pki.WritePrivate(l.Path, []byte(l.Token.String()+"\n")) }

// rotate makes and writes a new secret under the same id.
func (l Local) rotate() (Local, error) {
	n := Local{Token: Token{ID: l.Token.ID, Secret: randomHex(secretBytes)}, Path: l.Path}
	return n, n.Write()
}

// LoadLocal reads node's admin token from dataDir, making it if the file
// does not exist. A file that others can read, or that does not hold one
// well-formed token, is an error: the node must not run with a credential
// that leaked or was mangled.
func LoadLocal(dataDir, node string) (Local, error) {
	path := LocalFile(dataDir)
	t, err := ReadTokenFile(path)
	if errors.Is(err, os.ErrNotExist) {
		l := NewLocal(dataDir, node)
		if err := l.Write(); err != nil {
			return Local{}, fmt.Errorf("create the node-local admin token: %w", err)
		}
		return l, nil
	}
	if err != nil {
		return Local{}, err
	}
	if t.ID != LocalID(node) {
		return Local{}, fmt.Errorf("%s holds token %s, not node %s's local admin token (id %s): remove the file and taskd makes a new one", path, t.ID, node, LocalID(node))
	}
	return Local{Token: t, Path: path}, nil
}

// ReadTokenFile reads a token file with pki.ReadPrivate (refusing files
// that others can read) and checks it holds exactly one token.
func ReadTokenFile(path string) (Token, error) {
	b, err := pki.ReadPrivate(path)
	if err != nil {
		return Token{}, err
	}
	if len(b) > 4*TokenLen {
		return Token{}, fmt.Errorf("token file %s is %d bytes: it holds more than one token", path, len(b))
	}
	t, err := ParseToken(strings.TrimSpace(string(b)))
	if err != nil {
		return Token{}, fmt.Errorf("token file %s does not hold a token of the form taskd.ID.SECRET (%d hex digits, a dot, %d hex digits after \"taskd.\")", path, idLen, 2*secretBytes)
	}
	return t, nil
}
