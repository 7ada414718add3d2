package chaos

import "testing"

func TestNamesMatchesWholeNodeNames(t *testing.T) {
	cases := []struct {
		what, node string
		want       bool
	}{
		{"kill -9 n2 (leader; new leader after 4.1s)", "n2", true},
		{"etcd raft leader: kill -9 n3", "n3", true},
		{"SIGSTOP n1 for 5s", "n1", true},
		{"n2 under a CPU quota of 1000us per 100ms next to a busy loop for 10s", "n2", true},
		{"partition n12 for 5s", "n1", false},
		{"kill -9 zookeeper 2, restart", "n2", false},
		{"wall clock of n1 stepped by 3m0s for 5s", "n3", false},
	}
	for _, c := range cases {
		if got := names(c.what, c.node); got != c.want {
			t.Errorf("names(%q, %q) = %v, want %v", c.what, c.node, got, c.want)
		}
	}
}
