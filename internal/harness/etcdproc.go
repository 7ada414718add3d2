package harness

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/taskd/taskd/internal/coord/etcd"
	"github.com/taskd/taskd/internal/pki"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// ErrNoEtcd: Debian's etcd server is not installed.
var ErrNoEtcd = errors.New("etcd server not installed (Debian package etcd-server; `make test-deps` installs it)")

// EtcdProc is an external etcd server (Debian's etcd-server, 3.4) run as a
// separate process, configured as an operator would secure it: TLS with
// client certificates on the client and peer ports, or (Plaintext)
// plaintext on a loopback client port; auth enabled with a root user and a
// user for taskd.
type EtcdProc struct {
	ClientURL string
	PKI       *PKI
	// User and Password are taskd's etcd user (role taskd: read and write
	// under /taskd/); RootPassword is root's.
	User, Password, RootPassword string
	proc                         *Proc
	dir                          string
}

// EtcdProcOptions shape an external etcd.
type EtcdProcOptions struct {
	// Plaintext serves clients over plain HTTP on loopback (peers still
	// use TLS).
	Plaintext bool
	// JWT makes the server issue signed JWT auth tokens (ES256, a key
	// made for the server) instead of its default simple tokens.
	JWT bool
}

// StartEtcdProc starts one etcd server under dir on free loopback ports,
// waits until it serves and sets up auth.
func StartEtcdProc(dir string, opt EtcdProcOptions) (*EtcdProc, error) {
	if _, err := exec.LookPath("etcd"); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoEtcd, err)
	}
	p, err := NewPKI(filepath.Join(dir, "pki"))
	if err != nil {
		return nil, err
	}
	srvDir := filepath.Join(dir, "server")
	if err := p.Provision(srvDir, "etcd-server"); err != nil {
		return nil, err
	}
	files := pki.In(srvDir)
	ports, err := FreePorts(2)
	if err != nil {
		return nil, err
	}
	scheme := "https"
	if opt.Plaintext {
		scheme = "http"
	}
	e := &EtcdProc{ClientURL: fmt.Sprintf("%s://127.0.0.1:%d", scheme, ports[0]), PKI: p, dir: dir,
		User: "taskd-ext", Password: pki.RandomSecret(16), RootPassword: pki.RandomSecret(16)}
	peer := fmt.Sprintf("https://127.0.0.1:%d", ports[1])
	args := []string{"--name", "ext", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", e.ClientURL, "--advertise-client-urls", e.ClientURL,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "ext=" + peer,
		"--peer-cert-file", files.NodeCert(), "--peer-key-file", files.NodeKey(),
		"--peer-trusted-ca-file", files.CACert(), "--peer-client-cert-auth",
		"--log-level", "warn"}
	if !opt.Plaintext {
		args = append(args, "--cert-file", files.NodeCert(), "--key-file", files.NodeKey(),
			"--trusted-ca-file", files.CACert(), "--client-cert-auth")
	}
	if opt.JWT {
		pub, priv, err := writeJWTKeys(filepath.Join(dir, "jwt"))
		if err != nil {
			return nil, err
		}
		args = append(args, "--auth-token", "jwt,pub-key="+pub+",priv-key="+priv+",sign-method=ES256")
	}
	if e.proc, err = StartProc(filepath.Join(dir, "etcd.log"), "etcd", args...); err != nil {
		return nil, err
	}
	if err := e.setupAuth(); err != nil {
		e.Kill()
		return nil, fmt.Errorf("external etcd (log in %s): %w", filepath.Join(dir, "etcd.log"), err)
	}
	return e, nil
}

// writeJWTKeys writes a new P-256 key pair for the server's JWT tokens
// into dir and returns the paths of the public and the private key.
func writeJWTKeys(dir string) (pub, priv string, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", "", err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return "", "", err
	}
	pub, priv = filepath.Join(dir, "jwt.pub"), filepath.Join(dir, "jwt.key")
	if err := os.WriteFile(priv, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		return "", "", err
	}
	return pub, priv, nil
}

// clientConfig reaches the server with its own certificate (on a TLS
// client port).
func (e *EtcdProc) clientConfig() (clientv3.Config, error) {
	cfg := clientv3.Config{Endpoints: []string{e.ClientURL}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
	if e.ClientURL[:5] == "https" {
		tc, err := e.serverTLS()
		if err != nil {
			return cfg, err
		}
		cfg.TLS = tc
	}
	return cfg, nil
}

// serverTLS is a client TLS configuration with the server's certificate.
func (e *EtcdProc) serverTLS() (*tls.Config, error) {
	b, err := pki.Load(filepath.Join(e.dir, "server"))
	if err != nil {
		return nil, err
	}
	return b.ClientTLS(""), nil
}

// admin connects with the server's own certificate; before auth is on
// that is enough for anything.
func (e *EtcdProc) admin() (*clientv3.Client, error) {
	cfg, err := e.clientConfig()
	if err != nil {
		return nil, err
	}
	return clientv3.New(cfg)
}

func (e *EtcdProc) setupAuth() error {
	cli, err := e.admin()
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := WaitFor(ctx, 100*time.Millisecond, func() bool {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := cli.Get(sctx, "/probe")
		return err == nil
	}); err != nil {
		return fmt.Errorf("not serving: %w", err)
	}
	steps := []func() error{
		func() error { _, err := cli.UserAdd(ctx, etcd.RootUser, e.RootPassword); return err },
		func() error { _, err := cli.UserGrantRole(ctx, etcd.RootUser, "root"); return err },
		func() error { _, err := cli.RoleAdd(ctx, etcd.TaskdRole); return err },
		func() error {
			_, err := cli.RoleGrantPermission(ctx, etcd.TaskdRole, etcd.KeyPrefix, clientv3.GetPrefixRangeEnd(etcd.KeyPrefix),
				clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := cli.UserAdd(ctx, e.User, e.Password); return err },
		func() error { _, err := cli.UserGrantRole(ctx, e.User, etcd.TaskdRole); return err },
		func() error { _, err := cli.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			return fmt.Errorf("auth set-up step %d: %w", i+1, err)
		}
	}
	return nil
}

// AddCertUsers adds an etcd user without a password, with the taskd role,
// for each name: a client whose certificate's common name is that name
// is that user (the server runs with --client-cert-auth), as
// docs/security.md tells an operator to set up certificate auth. It logs
// in as root once (one bcrypt check on the server).
func (e *EtcdProc) AddCertUsers(names ...string) error {
	cfg, err := e.clientConfig()
	if err != nil {
		return err
	}
	cfg.Username, cfg.Password = etcd.RootUser, e.RootPassword
	cli, err := clientv3.New(cfg)
	if err != nil {
		return fmt.Errorf("external etcd as root: %w", err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, n := range names {
		if _, err := cli.UserAddWithOptions(ctx, n, "", &clientv3.UserAddOptions{NoPassword: true}); err != nil {
			return fmt.Errorf("add etcd user %s: %w", n, err)
		}
		if _, err := cli.UserGrantRole(ctx, n, etcd.TaskdRole); err != nil {
			return fmt.Errorf("grant role %s to %s: %w", etcd.TaskdRole, n, err)
		}
	}
	return nil
}

// Logins reads how many password logins (Authenticate calls) the server
// started and how many of them failed, from its /metrics, and counts the
// requests its log refused for an invalid auth token. Each login costs the
// server a bcrypt check; a client whose token is refused logs in again.
func (e *EtcdProc) Logins(ctx context.Context) (started, failed, invalidToken int, err error) {
	tc, err := e.serverTLS()
	if err != nil {
		return 0, 0, 0, err
	}
	u, err := url.JoinPath(e.ClientURL, "metrics")
	if err != nil {
		return 0, 0, 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, 0, 0, err
	}
	cl := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
	defer cl.CloseIdleConnections()
	resp, err := cl.Do(req)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("etcd metrics: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("etcd metrics: %w", err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.Contains(line, `grpc_method="Authenticate"`) {
			continue
		}
		f := strings.Fields(line)
		n, _ := strconv.ParseFloat(f[len(f)-1], 64)
		switch {
		case strings.HasPrefix(line, "grpc_server_started_total{"):
			started += int(n)
		case strings.HasPrefix(line, "grpc_server_handled_total{") && !strings.Contains(line, `grpc_code="OK"`):
			failed += int(n)
		}
	}
	return started, failed, strings.Count(e.Log(), "auth: invalid auth token"), nil
}

// PID is the etcd process's id, 0 when it was never started.
func (e *EtcdProc) PID() int {
	if e.proc == nil {
		return 0
	}
	return e.proc.PID()
}

// Kill stops the server (SIGKILL) and waits.
func (e *EtcdProc) Kill() {
	if e.proc != nil {
		e.proc.Signal(syscall.SIGKILL)
		e.proc.Wait()
	}
}

// Log returns the server's log.
func (e *EtcdProc) Log() string {
	b, _ := os.ReadFile(filepath.Join(e.dir, "etcd.log"))
	return string(b)
}
