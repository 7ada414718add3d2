package coord

import (
	"strings"
	"testing"
)

func TestParseTarget(t *testing.T) {
	good := []struct {
		in   string
		want Target
	}{
		{"", Target{Kind: KindEmbedded}},
		{"embedded", Target{Kind: KindEmbedded}},
		{"etcd://127.0.0.1:2379", Target{Kind: KindEtcd, Endpoints: []string{"127.0.0.1:2379"}}},
		{"etcd://a:1,b:2", Target{Kind: KindEtcd, Endpoints: []string{"a:1", "b:2"}}},
		{"zk://h1:2181,h2:2181,h3:2181/taskd", Target{Kind: KindZK, Endpoints: []string{"h1:2181", "h2:2181", "h3:2181"}, Chroot: "/taskd"}},
		{"zk://h1:2181/", Target{Kind: KindZK, Endpoints: []string{"h1:2181"}}},
		{"zk://[::1]:2181", Target{Kind: KindZK, Endpoints: []string{"[::1]:2181"}}},
		{"etcds://a:1,b:2", Target{Kind: KindEtcd, Endpoints: []string{"a:1", "b:2"}, TLS: true}},
		{"zks://h1:2281/c", Target{Kind: KindZK, Endpoints: []string{"h1:2281"}, Chroot: "/c", TLS: true}},
	}
	for _, g := range good {
		got, err := ParseTarget(g.in)
		if err != nil {
			t.Errorf("%q: %v", g.in, err)
			continue
		}
		if got.String() != g.want.String() || got.Kind != g.want.Kind || got.Chroot != g.want.Chroot || got.TLS != g.want.TLS {
			t.Errorf("%q = %+v, want %+v", g.in, got, g.want)
		}
	}
	bad := map[string]string{
		"zk:/h:1":           "no scheme",
		"consul://h:1":      "unknown scheme",
		"etcd://":           "no host",
		"etcd://h":          "not host:port",
		"etcd://h:0":        "port",
		"etcd://h:70000":    "port",
		"etcd://h:1/prefix": "only allowed for zk",
		"etcds://h:1/p":     "only allowed for zk",
		"zkss://h:1":        "unknown scheme",
		"zk://h:1/a/../b":   "clean",
		"zk://:2181":        "no host",
		"zk://h:1,,h:2":     "not host:port",
	}
	for in, want := range bad {
		_, err := ParseTarget(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one mentioning %q", in, err, want)
		}
	}
}

func TestTargetLoopback(t *testing.T) {
	cases := map[string]bool{
		"etcd://127.0.0.1:2379":              true,
		"etcd://localhost:1,[::1]:2":         true,
		"etcd://127.0.0.1:1,10.0.0.1:2":      false,
		"etcd://etcd.example:2379":           false,
		"zk://0.0.0.0:2181":                  false,
		"etcds://127.0.0.2:2379,127.9.9.9:1": true,
	}
	for in, want := range cases {
		tg, err := ParseTarget(in)
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if got := tg.Loopback(); got != want {
			t.Errorf("%s: Loopback() = %v, want %v", in, got, want)
		}
	}
}
