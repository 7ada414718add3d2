package daemon

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// TestHelpHasOneDefault (issue 13): --help printed "(default 256M)
// (default "0")". Every flag of every taskd command shows at most one
// default.
func TestHelpHasOneDefault(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			line := c.LocalFlags().FlagUsages()
			for _, l := range strings.Split(line, "\n") {
				if strings.Contains(l, "--"+f.Name+" ") && strings.Count(l, "(default") > 1 {
					t.Errorf("%s --%s: %q", c.CommandPath(), f.Name, strings.TrimSpace(l))
				}
			}
		})
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(newRootCmd())
}

// TestVolumeCopyReadsLikeATool (issue 13): the log lines and the summary of
// taskd volume copy use IEC units only, the summary gives the elapsed time
// and the average rate, and --verify adds a verified line (only then).
func TestVolumeCopyReadsLikeATool(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	data := make([]byte, 3<<20)
	for i := range data {
		data[i] = byte(i*13 + 1)
	}
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, verify := range []bool{false, true} {
		dst := filepath.Join(dir, "dst.img")
		os.Remove(dst)
		args := []string{"volume", "copy", "--progress", "log", "--extent-size", "1M", "--direct-io=false", src, dst}
		if verify {
			args = append(args, "--verify")
		}
		var errb bytes.Buffer
		cmd := newRootCmd()
		cmd.SetArgs(args)
		cmd.SetErr(&errb)
		cmd.SetOut(&errb)
		if err := cmd.Execute(); err != nil {
			t.Fatalf("verify=%v: %v\n%s", verify, err, errb.String())
		}
		out := errb.String()
		if regexp.MustCompile(`\d (kB|MB|GB)\b`).MatchString(out) {
			t.Errorf("verify=%v: SI units in %q", verify, out)
		}
		if !regexp.MustCompile(`copied 3\.0 MiB in [0-9.]+m?s \(average [0-9.]+ [KMG]?i?B/s\): read 3\.0 MiB`).MatchString(out) {
			t.Errorf("verify=%v: no summary with elapsed time and average rate in %q", verify, out)
		}
		if got := strings.Contains(out, "verified: all 3 checkpoint units"); got != verify {
			t.Errorf("verify=%v: verified line present=%v in %q", verify, got, out)
		}
	}
}

// TestConfigErrorsNameTheirSource (issue 13): a bad value from the
// environment was reported under its flag only ("--priority: ..."), and
// the priority error came twice. Now the message names the variable
// actually given, once; a value from the command line names the flag
// alone. Nothing is written to the data directory.
func TestConfigErrorsNameTheirSource(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	for _, tc := range []struct {
		env, flag string
		want      string
		not       string
	}{
		{"TASKD_PRIORITY=300", "", "--priority (from environment variable TASKD_PRIORITY)", ""},
		{"TASKD_COPY_MEMORY_LIMIT=10Q", "", "--copy-memory-limit (from environment variable TASKD_COPY_MEMORY_LIMIT)", ""},
		{"", "--priority=300", "--priority:", "(from"},
	} {
		args := []string{"--data-dir", dir}
		if tc.env != "" {
			k, v, _ := strings.Cut(tc.env, "=")
			t.Setenv(k, v)
		}
		if tc.flag != "" {
			args = append(args, tc.flag)
		}
		cmd := newRootCmd()
		cmd.SetArgs(args)
		err := cmd.Execute()
		if exitCode(err) != ExitConfig || err == nil || !strings.Contains(err.Error(), tc.want) || (tc.not != "" && strings.Contains(err.Error(), tc.not)) {
			t.Errorf("%s %s: exit %d: %v; want %q", tc.env, tc.flag, exitCode(err), err, tc.want)
		}
		if err != nil && strings.Count(err.Error(), "out of range") > 1 {
			t.Errorf("%s %s: the same error twice: %v", tc.env, tc.flag, err)
		}
		if tc.env != "" {
			k, _, _ := strings.Cut(tc.env, "=")
			os.Unsetenv(k)
		}
		if _, err := os.Stat(dir); err == nil {
			t.Fatalf("%s %s: the data directory was created", tc.env, tc.flag)
		}
	}
}
