package quorum

import (
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	base := DefaultConfig()
	base.Name, base.NodeID = "n1", "id"
	if err := base.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	cases := map[string]func(*Config){
		"priority above 255":            func(c *Config) { c.Priority = 256 },
		"negative priority":             func(c *Config) { c.Priority = -1 },
		"name with slash":               func(c *Config) { c.Name = "a/b" },
		"empty name":                    func(c *Config) { c.Name = "" },
		"timeout too short":             func(c *Config) { c.SessionTimeout = time.Second },
		"fraction 1":                    func(c *Config) { c.DeadlineFraction = 1 },
		"deadline leaves no budget":     func(c *Config) { c.DeadlineFraction = 0.95 },
		"deadline under two heartbeats": func(c *Config) { c.DeadlineFraction = 0.3 },
		"zero stagger":                  func(c *Config) { c.CampaignStagger = 0 },
		"relative root":                 func(c *Config) { c.Root = "taskd" },
	}
	for name, edit := range cases {
		c := base
		edit(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestRanked(t *testing.T) {
	ms := map[string]Member{
		"a": {Name: "a", CurrentPriority: 10, joinOrder: 1},
		"b": {Name: "b", CurrentPriority: 50, joinOrder: 3},
		"c": {Name: "c", CurrentPriority: 50, joinOrder: 2},
		"d": {Name: "d", CurrentPriority: 0, joinOrder: 0},
	}
	got := ranked(ms, nil)
	want := []string{"c", "b", "a", "d"} // priority, then earliest join
	for i, m := range got {
		if m.Name != want[i] {
			t.Fatalf("ranked = %v, want %v", names(got), want)
		}
	}
	if got := names(ranked(ms, []string{"a", "d"})); len(got) != 2 || got[0] != "a" {
		t.Fatalf("specified members: %v", got)
	}
}

func names(ms []Member) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Name
	}
	return out
}
