package ctl

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/auth"
	"github.com/taskd/taskd/internal/pki"
)

// TestRefusedBeforeDialing (issue 13, validation gaps): input taskctl can
// judge alone is a usage error (exit 2) naming what was given, and nothing
// is sent: the endpoint is a listener nobody accepts on, so a dial would
// end in exit 3 after the timeout.
func TestRefusedBeforeDialing(t *testing.T) {
	dir := t.TempDir()
	if _, err := pki.Create(dir, "n1", nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := auth.LoadLocal(dir, "n1"); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ep := "--endpoint=" + ln.Addr().String()
	for _, tc := range []struct {
		args []string
		says []string
	}{
		{[]string{"--timeout", "0s", "task", "list"}, []string{"--timeout 0s", "above zero"}},
		{[]string{"--timeout=-5s", "service", "list"}, []string{"--timeout -5s"}},
		{[]string{"events", "--type", "nosuch"}, []string{"--type", `"nosuch"`, "fence_started", "vip_take"}},
	} {
		start := time.Now()
		code, msg := run(append([]string{ep, "--data-dir", dir}, tc.args...)...)
		if code != ExitUsage {
			t.Errorf("%v: exit %d, want %d: %s", tc.args, code, ExitUsage, msg)
		}
		for _, s := range tc.says {
			if !strings.Contains(msg, s) {
				t.Errorf("%v: %q does not say %q", tc.args, msg, s)
			}
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%v: took %v: it waited on the server", tc.args, d)
		}
		if strings.Count(msg, "\n") != 1 {
			t.Errorf("%v: %d lines, want one: %q", tc.args, strings.Count(msg, "\n"), msg)
		}
	}
}

// TestErrorsNameTheSourceGiven (issue 13): a bad endpoint or data
// directory from the environment is named as the variable, one from the
// command line as the flag.
func TestErrorsNameTheSourceGiven(t *testing.T) {
	dir := t.TempDir()
	if _, err := pki.Create(dir, "n1", nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := auth.LoadLocal(dir, "n1"); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TASKD_ENDPOINT", "http://127.0.0.1:1")
	if code, msg := run("--data-dir", dir, "service", "list"); code != ExitUsage || !strings.HasPrefix(msg, "taskctl: TASKD_ENDPOINT: ") {
		t.Errorf("endpoint from the environment: exit %d %q", code, msg)
	}
	if code, msg := run("--endpoint", "http://127.0.0.1:2", "--data-dir", dir, "service", "list"); code != ExitUsage || !strings.HasPrefix(msg, "taskctl: --endpoint: ") {
		t.Errorf("endpoint from the flag: exit %d %q", code, msg)
	}
	t.Setenv("TASKD_DATA_DIR", dir+"/nosuch")
	if code, msg := run("service", "list"); code != ExitUnauthorized || !strings.Contains(msg, "(TASKD_DATA_DIR)") {
		t.Errorf("data dir from the environment: exit %d %q", code, msg)
	}
}
