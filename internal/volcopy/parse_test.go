package volcopy_test

import (
	"strings"
	"testing"

	"github.com/taskd/taskd/internal/volcopy"
)

// TestParseBytes: issue 13 bug 2 found "10Q" read as 10 B/s. Every unit
// that is not K, M, G, T (with optional i/B) or B is refused, and so is
// anything that is not a plain decimal count.
func TestParseBytes(t *testing.T) {
	good := []struct {
		in   string
		want int64
	}{
		{"0", 0},
		{"10", 10},
		{"10B", 10},
		{"1K", 1 << 10},
		{"1k", 1 << 10},
		{"64KiB", 64 << 10},
		{"64kb", 64 << 10},
		{"100M", 100 << 20},
		{"100 MiB", 100 << 20},
		{"1.5G", 3 << 29},
		{"1.5GiB", 3 << 29},
		{"2T", 2 << 40},
		{"0.5K", 512},
		{"1.1K", 1126}, // 1126.4: fractions of a byte are dropped
		{" 200M ", 200 << 20},
		{"4194304T", 1 << 62},
	}
	for _, tc := range good {
		got, err := volcopy.ParseBytes(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	bad := []struct{ in, why string }{
		{"10Q", "unknown unit"},
		{"10q", "unknown unit"},
		{"10MQ", "unknown unit"},
		{"10X", "unknown unit"},
		{"10P", "unknown unit"},
		{"10 bytes", "unknown unit"},
		{"1e3", "unknown unit"},
		{"1E3", "unknown unit"},
		{"", "not a byte count"},
		{"   ", "not a byte count"},
		{"-1", "not a byte count"},
		{"-1M", "not a byte count"},
		{"+5", "not a byte count"},
		{"M", "not a byte count"},
		{".5M", "not a byte count"},
		{"1.M", "not a byte count"},
		{"1.2.3", "not a byte count"},
		{"0x10", "unknown unit"},
		{"NaN", "not a byte count"},
		{"Inf", "not a byte count"},
		{"1_000", "unknown unit"},
		{"0.1", "less than one byte"},
		{"99999999999999999999G", "too large"},
		{"4194305T", "too large"},
		{"4611686018427387905", "too large"},
	}
	for _, tc := range bad {
		got, err := volcopy.ParseBytes(tc.in)
		if err == nil {
			t.Errorf("ParseBytes(%q) = %d, want an error (%s)", tc.in, got, tc.why)
			continue
		}
		if !strings.Contains(err.Error(), tc.why) {
			t.Errorf("ParseBytes(%q): error %q does not say %q", tc.in, err, tc.why)
		}
	}
}
