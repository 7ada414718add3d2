package ctl

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/auth"
	"github.com/taskd/taskd/internal/pki"
)

// run runs taskctl with args and returns its exit code and stderr.
func run(args ...string) (int, string) {
	var out, errb bytes.Buffer
	code := Main(args, &out, &errb)
	return code, errb.String()
}

// TestCredentialErrors: taskctl refuses unusable credential files before
// it dials anything (the endpoint is unreachable, so a dial would exit 3)
// and says what to do.
func TestCredentialErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := pki.Create(dir, "n1", nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	l, err := auth.LoadLocal(dir, "n1")
	if err != nil {
		t.Fatal(err)
	}
	ep := "--endpoint=127.0.0.1:1"
	if code, msg := run(ep, "--data-dir", dir, "service", "list"); code != ExitUnavailable {
		t.Fatalf("usable credentials, unreachable endpoint: exit %d %s", code, msg)
	}
	if code, msg := run(ep, "--data-dir", filepath.Join(dir, "nope"), "service", "list"); code != ExitUnauthorized || !strings.Contains(msg, "--data-dir") {
		t.Errorf("no data dir: exit %d %s", code, msg)
	}
	if err := os.Chmod(l.Path, 0o640); err != nil {
		t.Fatal(err)
	}
	if code, msg := run(ep, "--data-dir", dir, "service", "list"); code != ExitUnauthorized || !strings.Contains(msg, "chmod 600") {
		t.Errorf("group-readable admin.token: exit %d %s", code, msg)
	}
	os.Chmod(l.Path, 0o600)
	bad := filepath.Join(dir, "bad.token")
	os.WriteFile(bad, []byte("hunter2\n"), 0o600)
	if code, msg := run(ep, "--data-dir", dir, "--token-file", bad, "service", "list"); code != ExitUnauthorized || !strings.Contains(msg, "taskd.ID.SECRET") || strings.Contains(msg, "hunter2") {
		t.Errorf("malformed token file: exit %d %s", code, msg)
	}
	if code, msg := run(ep, "--data-dir", dir, "--tls-ca", filepath.Join(dir, "absent.crt"), "service", "list"); code != ExitUnauthorized || !strings.Contains(msg, "CA") {
		t.Errorf("missing CA file: exit %d %s", code, msg)
	}
	notPEM := filepath.Join(dir, "ca.txt")
	os.WriteFile(notPEM, []byte("not a certificate"), 0o644)
	if code, msg := run(ep, "--data-dir", dir, "--tls-ca", notPEM, "service", "list"); code != ExitUnauthorized || !strings.Contains(msg, "no PEM certificate") {
		t.Errorf("CA file without a certificate: exit %d %s", code, msg)
	}
	if code, msg := run("--endpoint=http://127.0.0.1:1", "--data-dir", dir, "service", "list"); code != ExitUsage || !strings.Contains(msg, "only https") {
		t.Errorf("http:// endpoint: exit %d %s", code, msg)
	}
}

func TestParseTTL(t *testing.T) {
	for in, want := range map[string]time.Duration{"": 0, "0": 0, "90m": 90 * time.Minute, "12h": 12 * time.Hour, "30d": 30 * 24 * time.Hour} {
		if got, err := parseTTL(in); err != nil || got != want {
			t.Errorf("parseTTL(%q) = %v %v, want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"-1h", "-3d", "0d", "1y", "d", "99999d", "1e9h", "abc"} {
		if _, err := parseTTL(in); err == nil {
			t.Errorf("parseTTL(%q) accepted", in)
		}
	}
}

// TestUnknownCommandIsUsage: an unknown subcommand, at the top or in a
// group, is a usage error (exit 2) that names it, not help and exit 0; a
// bare group still prints its help; --version prints the version.
func TestUnknownCommandIsUsage(t *testing.T) {
	all := func(args ...string) (int, string) {
		var out bytes.Buffer
		code := Main(args, &out, &out)
		return code, out.String()
	}
	for _, tc := range []struct {
		args []string
		name string
	}{
		{[]string{"bogus"}, "bogus"}, {[]string{"task", "lst"}, "lst"}, {[]string{"service", "foo", "bar"}, "foo"}, {[]string{"token", "mint"}, "mint"},
	} {
		code, msg := all(tc.args...)
		if code != ExitUsage || !strings.Contains(msg, "unknown command \""+tc.name+"\"") {
			t.Errorf("%v: exit %d %q, want %d naming %q", tc.args, code, msg, ExitUsage, tc.name)
		}
	}
	if _, msg := all("task", "lst"); !strings.Contains(msg, "did you mean list") {
		t.Errorf("task lst: %q, want a suggestion", msg)
	}
	if code, msg := all("task"); code != ExitOK || !strings.Contains(msg, "Available Commands") {
		t.Errorf("bare group: exit %d %q, want its help and 0", code, msg)
	}
	if code, msg := all("--version"); code != ExitOK || !strings.Contains(msg, "taskctl version "+Version) {
		t.Errorf("--version: exit %d %q", code, msg)
	}
}

// TestCobraUsageErrorsAreUsage (issue 13 bug 7): every usage error cobra
// finds itself exits 2 and says what was wrong, before anything is sent
// (there is no server here: a command that went on would exit 3 or 5). A
// missing required flag (vip set without --interface) exited 1.
func TestCobraUsageErrorsAreUsage(t *testing.T) {
	dir := t.TempDir() // no credentials: a command that got as far as a call would exit 5
	for _, tc := range []struct {
		name string
		args []string
		says string
	}{
		{"missing required flag", []string{"vip", "set", "web", "10.0.0.1/24"}, `required flag(s) "interface" not set`},
		{"missing required flag, JSON output", []string{"vip", "set", "web", "10.0.0.1/24", "-o", "json"}, `"interface"`},
		{"bad flag value", []string{"task", "wait", "t-1", "--max-wait", "soon"}, "--max-wait"},
		{"bad flag value of a number", []string{"copy", "file:///a", "file:///b", "--priority", "high"}, "--priority"},
		{"unknown flag", []string{"task", "list", "--colour"}, "--colour"},
		{"flag without its value", []string{"task", "list", "--status"}, "--status"},
		{"too few arguments", []string{"task", "show"}, "accepts 1 arg"},
		{"too many arguments", []string{"task", "show", "a", "b"}, "accepts 1 arg"},
		{"arguments to a command without any", []string{"service", "list", "extra"}, "accepts 0 arg"},
		{"too many arguments to copy", []string{"copy", "a", "b", "c"}, "accepts 2 arg"},
	} {
		code, msg := run(append(tc.args, "--data-dir", dir, "--endpoint", "127.0.0.1:1")...)
		if code != ExitUsage || !strings.Contains(msg, tc.says) {
			t.Errorf("%s: taskctl %v: exit %d %q; want %d saying %q", tc.name, tc.args, code, msg, ExitUsage, tc.says)
		}
	}
}
