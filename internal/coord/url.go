package coord

import (
	"fmt"
	"net"
	"path"
	"strconv"
	"strings"
)

// Kind names a backend.
type Kind string

// Backends.
const (
	KindEmbedded Kind = "embedded"
	KindEtcd     Kind = "etcd"
	KindZK       Kind = "zk"
)

// Target is a parsed --coordinator value.
type Target struct {
	Kind      Kind
	Endpoints []string // host:port, in the order given
	Chroot    string   // ZooKeeper only: "" or "/path"
	// TLS: etcds:// or zks://, the store is reached over TLS.
	TLS bool
}

func (t Target) String() string {
	if t.Kind == KindEmbedded {
		return "embedded"
	}
	scheme := string(t.Kind)
	if t.TLS {
		scheme += "s"
	}
	return scheme + "://" + strings.Join(t.Endpoints, ",") + t.Chroot
}

// Loopback reports whether every endpoint is on loopback (localhost or a
// loopback address), where plaintext does not leave the host.
func (t Target) Loopback() bool {
	for _, e := range t.Endpoints {
		host, _, _ := net.SplitHostPort(e)
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return false
		}
	}
	return len(t.Endpoints) > 0
}

// ParseTarget parses "embedded", "etcd[s]://h:p,h:p" or
// "zk[s]://h:p,h:p/chroot". Errors say what was wrong with the value and what
// the accepted forms are.
func ParseTarget(s string) (Target, error) {
	const forms = `accepted forms: "embedded", "etcds://host:port[,host:port...]", "zks://host:port[,host:port...][/chroot]" (etcd:// and zk:// without TLS)`
	if s == "" || s == string(KindEmbedded) {
		return Target{Kind: KindEmbedded}, nil
	}
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return Target{}, fmt.Errorf("coordinator %q has no scheme; %s", s, forms)
	}
	var t Target
	switch scheme {
	case "etcd", "etcds":
		t.Kind, t.TLS = KindEtcd, scheme == "etcds"
	case "zk", "zks":
		t.Kind, t.TLS = KindZK, scheme == "zks"
	default:
		return Target{}, fmt.Errorf("coordinator %q: unknown scheme %q; %s", s, scheme, forms)
	}
	hosts := rest
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		hosts, t.Chroot = rest[:i], rest[i:]
		if t.Kind != KindZK {
			return Target{}, fmt.Errorf("coordinator %q: a path is only allowed for zk:// and zks:// (as the chroot); %s", s, forms)
		}
		if t.Chroot == "/" {
			t.Chroot = ""
		} else if path.Clean(t.Chroot) != t.Chroot {
			return Target{}, fmt.Errorf("coordinator %q: chroot %q is not a clean absolute path", s, t.Chroot)
		}
	}
	if hosts == "" {
		return Target{}, fmt.Errorf("coordinator %q lists no host; %s", s, forms)
	}
	for _, hp := range strings.Split(hosts, ",") {
		host, port, err := net.SplitHostPort(hp)
		if err != nil {
			return Target{}, fmt.Errorf("coordinator %q: endpoint %q is not host:port: %w", s, hp, err)
		}
		if host == "" {
			return Target{}, fmt.Errorf("coordinator %q: endpoint %q has no host", s, hp)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return Target{}, fmt.Errorf("coordinator %q: endpoint %q: port must be 1-65535", s, hp)
		}
		t.Endpoints = append(t.Endpoints, hp)
	}
	return t, nil
}
