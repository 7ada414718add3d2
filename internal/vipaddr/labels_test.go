package vipaddr

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestLabelFile: labels survive a new LabelFile on the same path (a
// restart), are recorded once, and a damaged file loses only the hint.
func TestLabelFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vip-labels.json")
	l := NewLabelFile(path)
	if got := l.Labels(); len(got) != 0 {
		t.Fatalf("labels of a missing file: %v", got)
	}
	for _, lb := range []string{"eth0:web", "eth0:db", "eth0:web"} {
		if err := l.Add(lb); err != nil {
			t.Fatal(err)
		}
	}
	if got := NewLabelFile(path).Labels(); !slices.Equal(got, []string{"eth0:web", "eth0:db"}) {
		t.Fatalf("labels after a restart: %v", got)
	}
	if err := os.WriteFile(path, []byte("{not json"), 0o640); err != nil {
		t.Fatal(err)
	}
	if got := l.Labels(); len(got) != 0 {
		t.Fatalf("labels of a damaged file: %v", got)
	}
	if err := l.Add("eth1:api"); err != nil {
		t.Fatal(err)
	}
	if got := l.Labels(); !slices.Equal(got, []string{"eth1:api"}) {
		t.Fatalf("labels after a damaged file: %v", got)
	}
}
