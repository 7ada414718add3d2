package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	gozk "github.com/go-zookeeper/zk"
	"github.com/taskd/taskd/internal/pki"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// attackPlan is what the store attacker (a child process: uid 65534, or
// in another network namespace) goes after. It holds addresses and paths,
// never a credential.
type attackPlan struct {
	EtcdClient []string // host:port of embedded etcd client ports
	EtcdPeer   []string // host:port of embedded etcd peer ports
	ZK         []string // host:port of ZooKeeper (TLS) client ports
	ZKChroot   string
	Files      []string // credential files
}

// attempt is one try: Reachable says the port accepted a TCP connection
// (so a refusal came from the protection, not from a closed port); OK
// says the attack worked.
type attempt struct {
	Name      string `json:"name"`
	Reachable bool   `json:"reachable"`
	OK        bool   `json:"ok"`
	Detail    string `json:"detail"`
}

// storeAttackMain runs in the child: every attempt it can think of without
// credentials, one JSON line each.
func storeAttackMain() int {
	var plan attackPlan
	if err := json.Unmarshal([]byte(os.Getenv("ATTACK_PLAN")), &plan); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	out := json.NewEncoder(os.Stdout)
	report := func(a attempt) { _ = out.Encode(a) }
	own, err := selfSignedTLS()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	tlsModes := []struct {
		name string
		tls  *tls.Config
	}{
		{"plaintext", nil},
		{"tls, no client certificate", &tls.Config{InsecureSkipVerify: true}}, //nolint:gosec // the attacker trusts anything
		{"tls, self-made certificate", own},
	}
	for _, ep := range plan.EtcdClient {
		for _, m := range tlsModes {
			a := attempt{Name: "etcd client " + ep + " " + m.name, Reachable: reachable(ep)}
			a.OK, a.Detail = etcdAttack(ep, m.tls)
			report(a)
		}
	}
	for _, ep := range plan.EtcdPeer {
		for _, m := range tlsModes {
			a := attempt{Name: "etcd peer /members " + ep + " " + m.name, Reachable: reachable(ep)}
			a.OK, a.Detail = peerAttack(ep, m.tls)
			report(a)
		}
	}
	for _, ep := range plan.ZK {
		for _, m := range tlsModes {
			a := attempt{Name: "zookeeper " + ep + " " + m.name, Reachable: reachable(ep)}
			a.OK, a.Detail = zkAttack(ep, plan.ZKChroot, m.tls)
			report(a)
		}
	}
	for _, f := range plan.Files {
		_, err := os.ReadFile(f)
		report(attempt{Name: "read " + f, Reachable: true, OK: err == nil, Detail: fmt.Sprint(err)})
	}
	return 0
}

func reachable(ep string) bool {
	c, err := net.DialTimeout("tcp", ep, 2*time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func selfSignedTLS() (*tls.Config, error) {
	dir, err := os.MkdirTemp("", "attacker")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	b, err := pki.Create(dir, "n1", nil, time.Now())
	if err != nil {
		return nil, err
	}
	return &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{b.Cert}}, nil //nolint:gosec // the attacker trusts anything
}

// etcdAttack writes a VIP and a task record, and reads everything.
func etcdAttack(ep string, tc *tls.Config) (bool, string) {
	scheme := "http://"
	if tc != nil {
		scheme = "https://"
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{scheme + ep}, TLS: tc, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return false, err.Error()
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	var errs []string
	ok := false
	if _, err := cli.Put(ctx, "/taskd/vips/config/evil", `{"service":"evil","ip":"10.0.0.66/32"}`); err == nil {
		ok = true
	} else {
		errs = append(errs, "put: "+err.Error())
	}
	if _, err := cli.Put(ctx, "/taskd/tasks/active/evil", "{}"); err == nil {
		ok = true
	} else {
		errs = append(errs, "put task: "+err.Error())
	}
	if r, err := cli.Get(ctx, "/taskd/", clientv3.WithPrefix()); err == nil {
		ok = true
		errs = append(errs, fmt.Sprintf("read %d keys", len(r.Kvs)))
	} else {
		errs = append(errs, "get: "+err.Error())
	}
	if _, err := cli.MemberList(ctx); err == nil {
		ok = true
		errs = append(errs, "member list answered")
	}
	return ok, strings.Join(errs, "; ")
}

func peerAttack(ep string, tc *tls.Config) (bool, string) {
	scheme := "http://"
	if tc != nil {
		scheme = "https://"
	}
	hc := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
	resp, err := hc.Get(scheme + ep + "/members")
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
	return true, fmt.Sprintf("%s %s", resp.Status, b)
}

func zkAttack(ep, chroot string, tc *tls.Config) (bool, string) {
	dialer := func(network, addr string, timeout time.Duration) (net.Conn, error) {
		if tc == nil {
			return net.DialTimeout(network, addr, timeout)
		}
		return tls.DialWithDialer(&net.Dialer{Timeout: timeout}, network, addr, tc)
	}
	c, events, err := gozk.Connect([]string{ep}, 4*time.Second, gozk.WithDialer(dialer), gozk.WithLogInfo(false), gozk.WithLogger(nopLogger{}))
	if err != nil {
		return false, err.Error()
	}
	defer c.Close()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case ev := <-events:
			if ev.State != gozk.StateHasSession {
				continue
			}
			var errs []string
			ok := false
			root := chroot + "/taskd"
			if _, _, err := c.Children(root); err == nil {
				ok = true
				errs = append(errs, "listed "+root)
			}
			if _, err := c.Create(root+"/evil", []byte("x"), 0, gozk.WorldACL(gozk.PermAll)); err == nil {
				ok = true
				errs = append(errs, "created "+root+"/evil")
			} else {
				errs = append(errs, "create: "+err.Error())
			}
			if _, err := c.SetACL(chroot, gozk.WorldACL(gozk.PermAll), -1); err == nil {
				ok = true
				errs = append(errs, "opened "+chroot)
			}
			return ok, strings.Join(errs, "; ")
		case <-deadline:
			return false, "no session"
		}
	}
}

type nopLogger struct{}

func (nopLogger) Printf(string, ...any) {}

// parseAttempts reads the child's report.
func parseAttempts(out []byte) ([]attempt, error) {
	var as []attempt
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		var a attempt
		if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
			return nil, fmt.Errorf("attacker output %q: %w", sc.Text(), err)
		}
		as = append(as, a)
	}
	return as, sc.Err()
}
