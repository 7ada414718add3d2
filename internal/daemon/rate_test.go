package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestVolumeCopyRefusesBadRate is issue 13 bug 2: `taskd volume copy`
// read "10Q" (flag or --rate-file) as 10 B/s. Now it is a usage error
// (exit 2) naming the flag, and the target is not created.
func TestVolumeCopyRefusesBadRate(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	if err := os.WriteFile(src, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	rateFile := filepath.Join(dir, "rate")
	if err := os.WriteFile(rateFile, []byte("10Q\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		flags []string
		says  string
	}{
		{"--rate 10Q", []string{"--rate", "10Q"}, "--rate"},
		{"--rate 1e3", []string{"--rate", "1e3"}, "--rate"},
		{"--rate-file holding 10Q", []string{"--rate-file", rateFile}, "--rate-file"},
	} {
		dst := filepath.Join(dir, "dst-"+strings.NewReplacer(" ", "", "-", "").Replace(tc.name)+".img")
		cmd := newRootCmd()
		cmd.SetArgs(append([]string{"volume", "copy", "--progress", "none", src, dst}, tc.flags...))
		err := cmd.Execute()
		if code := exitCode(err); code != ExitUsage {
			t.Errorf("%s: exit %d (%v), want %d", tc.name, code, err, ExitUsage)
			continue
		}
		if !strings.Contains(err.Error(), tc.says) || !strings.Contains(err.Error(), "10Q") && !strings.Contains(err.Error(), "1e3") {
			t.Errorf("%s: error %q does not name %s and the value", tc.name, err, tc.says)
		}
		if _, err := os.Stat(dst); !os.IsNotExist(err) {
			t.Errorf("%s: the target exists after the refusal (%v)", tc.name, err)
		}
	}
}
