package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/harness"
)

// startNode builds taskd and runs one node on loopback ports from the
// kernel; it returns the taskctl flags that reach it with its admin
// credentials. The node is killed when the test ends.
func startNode(t *testing.T) []string {
	t.Helper()
	dir := t.TempDir()
	bin, _, err := harness.Build(filepath.Join(dir, "bin"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := harness.NewCluster(filepath.Join(dir, "cluster"), bin, 1, harness.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		if t.Failed() {
			t.Logf("log of n1:\n%s", c.Nodes[0].Log())
		}
	})
	if err := c.StartAll(); err != nil {
		t.Fatal(err)
	}
	n := c.Nodes[0]
	flags := []string{"--endpoint", "https://" + n.API, "--data-dir", n.DataDir}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err = harness.WaitFor(ctx, 100*time.Millisecond, func() bool {
		var out, errb bytes.Buffer
		var v struct {
			Leader string `json:"leader"`
		}
		return Main(append(slices.Clone(flags), "service", "list", "-o", "json"), &out, &errb) == 0 &&
			json.Unmarshal(out.Bytes(), &v) == nil && v.Leader == "n1"
	})
	if err != nil {
		t.Fatalf("node n1 did not lead within 60s")
	}
	return flags
}

func ctl(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(args, &out, &errb)
	return code, out.String() + errb.String()
}

// completions runs `taskctl __complete ARGS` and returns the offered
// values (without descriptions).
func completions(t *testing.T, flags []string, args ...string) []string {
	t.Helper()
	code, out := ctl(t, append(append([]string{"__complete"}, flags...), args...)...)
	if code != 0 {
		t.Fatalf("__complete %v: exit %d %s", args, code, out)
	}
	var got []string
	for _, l := range strings.Split(out, "\n") {
		if l == "" || strings.HasPrefix(l, ":") || strings.HasPrefix(l, "Completion ended") {
			continue
		}
		v, _, _ := strings.Cut(l, "\t")
		got = append(got, v)
	}
	return got
}

// TestCompletionIsDynamic (issue 13): `taskctl __complete` (what the shell
// scripts call) offers the node's task ids, node names, task types and
// VIP services, and the values of --status, -o and events --type. Against
// a node that does not answer it offers nothing and still exits 0.
// Also doctor -o json against the same node.
func TestCompletionIsDynamic(t *testing.T) {
	flags := startNode(t)
	code, out := ctl(t, append(slices.Clone(flags), "task", "create", "sleep", "--spec", `{"duration":"1h"}`)...)
	if code != 0 {
		t.Fatalf("task create: exit %d %s", code, out)
	}
	id := strings.TrimSpace(out)
	for _, tc := range []struct {
		args []string
		want []string
		not  []string
	}{
		{[]string{"task", "show", ""}, []string{id}, nil},
		{[]string{"task", "cancel", id[:4]}, []string{id}, nil},
		{[]string{"task", "resume", ""}, nil, []string{id}},   // not paused
		{[]string{"task", "show", id, ""}, nil, []string{id}}, // one argument only
		{[]string{"runner", "cordon", ""}, []string{"n1"}, nil},
		{[]string{"service", "set-priority", "n"}, []string{"n1"}, nil},
		{[]string{"events", "--node", ""}, []string{"n1"}, nil},
		{[]string{"task", "create", ""}, []string{"copy", "noop", "sleep"}, nil},
		{[]string{"task", "list", "--status", "fin"}, []string{"finished"}, []string{"running"}},
		{[]string{"service", "list", "-o", ""}, []string{"table", "json"}, nil},
		{[]string{"events", "--type", "fence_"}, []string{"fence_started", "fence_finished"}, []string{"session"}},
	} {
		got := completions(t, flags, tc.args...)
		for _, w := range tc.want {
			if !slices.Contains(got, w) {
				t.Errorf("complete %q: %v, want %q among them", tc.args, got, w)
			}
		}
		for _, n := range tc.not {
			if slices.Contains(got, n) {
				t.Errorf("complete %q: %v, should not offer %q", tc.args, got, n)
			}
		}
	}
	// An interface no host has: the VIP is stored (so completion can offer
	// it) but never taken.
	code, out = ctl(t, append(slices.Clone(flags), "vip", "set", "nfs", "10.99.0.1/32", "--interface", "taskdnone0")...)
	if code != 0 {
		t.Fatalf("vip set: exit %d %s", code, out)
	}
	if got := completions(t, flags, "vip", "delete", ""); !slices.Contains(got, "nfs") {
		t.Errorf("complete vip delete: %v, want nfs", got)
	}
	start := time.Now()
	if got := completions(t, []string{"--endpoint", "127.0.0.1:1", "--data-dir", flags[3]}, "task", "show", ""); len(got) != 0 || time.Since(start) > 5*time.Second {
		t.Errorf("complete against no node: %v after %v, want nothing at once", got, time.Since(start))
	}

	// doctor -o json: one result per check, and the summary in numbers.
	code, out = ctl(t, append(slices.Clone(flags), "doctor", "-o", "json")...)
	var rep doctorReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("doctor -o json: exit %d, not JSON (%v): %s", code, err, out)
	}
	oks := 0
	for _, r := range rep.Results {
		if r.Status == "ok" {
			oks++
		}
	}
	if code != ExitOK && code != ExitDoctorFindings || rep.Checks < 6 || oks+rep.Failed != rep.Checks || rep.OK != (rep.Failed == 0) || rep.OK != (code == ExitOK) {
		t.Errorf("doctor -o json: exit %d %+v", code, rep)
	}
	code, out = ctl(t, append(slices.Clone(flags), "doctor")...)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	summary := regexp.MustCompile(`^\d+ checks, (all ok|\d+ failed)$`)
	if last := lines[len(lines)-1]; !summary.MatchString(last) {
		t.Errorf("doctor: last line %q, want the summary (exit %d)\n%s", last, code, out)
	}
	n := 0
	for _, l := range lines {
		if summary.MatchString(l) {
			n++
		}
	}
	if n != 1 {
		t.Errorf("doctor: %d summary lines, want one:\n%s", n, out)
	}
}
