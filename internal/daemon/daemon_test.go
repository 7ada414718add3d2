package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/taskd/taskd/internal/node"
)

func TestEnvAndFilePrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "taskd.env")
	if err := os.WriteFile(file, []byte("# comment\nTASKD_PRIORITY=7\nTASKD_NAME=from-file\nTASKD_LISTEN=\"127.0.0.1:1\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TASKD_NAME", "from-env")
	cmd := newRootCmd()
	if err := cmd.ParseFlags([]string{"--listen", "127.0.0.1:2"}); err != nil {
		t.Fatal(err)
	}
	if err := applyEnvAndFile(cmd.Flags(), file); err != nil {
		t.Fatal(err)
	}
	get := func(n string) string { return cmd.Flags().Lookup(n).Value.String() }
	if get("name") != "from-env" || get("priority") != "7" || get("listen") != "127.0.0.1:2" {
		t.Fatalf("name=%s priority=%s listen=%s: want env > file, flag > all", get("name"), get("priority"), get("listen"))
	}
}

func TestConfigFileErrors(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"unknown key": "TASKD_NO_SUCH=1\n",
		"no equals":   "TASKD_NAME\n",
		"bad value":   "TASKD_PRIORITY=high\n",
	} {
		file := filepath.Join(dir, name)
		if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := newRootCmd()
		err := applyEnvAndFile(cmd.Flags(), file)
		if !errors.Is(err, node.ErrConfig) {
			t.Errorf("%s: got %v, want a configuration error", name, err)
		}
	}
}

func TestExitCodes(t *testing.T) {
	cases := map[error]int{
		nil:                         ExitOK,
		usageError{errors.New("x")}: ExitUsage,
		node.ErrConfig:              ExitConfig,
		node.ErrDataDir:             ExitDataDir,
		node.ErrCoordinatorFailed:   ExitCoordinator,
		errForced:                   ExitForced,
		errors.New("other"):         ExitInternal,
	}
	for err, want := range cases {
		if got := exitCode(err); got != want {
			t.Errorf("exitCode(%v) = %d, want %d", err, got, want)
		}
	}
}

// TestArgumentErrorsAreUsage (issue 13 bug 7): an unknown command or an
// argument to a command that takes none is a usage error, exit 2 (which
// systemd does not restart), and nothing runs; cobra's error was exit 1.
func TestArgumentErrorsAreUsage(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	d := []string{"--data-dir", dir}
	for _, args := range [][]string{
		append([]string{"bogus"}, d...), append([]string{"init", "extra"}, d...), append([]string{"join", "extra"}, d...),
		{"cert", "bogus"}, append([]string{"cert", "renew", "extra"}, d...), {"volume", "copy", "a"}, append([]string{"--priority", "x"}, d...),
	} {
		cmd := newRootCmd()
		cmd.SetArgs(args)
		err := cmd.Execute()
		if code := exitCode(err); code != ExitUsage {
			t.Errorf("taskd %v: exit %d (%v), want %d", args, code, err, ExitUsage)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a usage error created the data directory (%v)", err)
	}
}
