package events

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/taskd/taskd/internal/keys"
)

// TestTypesAreComplete: every event type the code records (a log line with
// an "event" attribute, a schedule's outcome, a VIP's kind) and every type
// the docs list is in Types, so `events --type T` never refuses a real one.
func TestTypesAreComplete(t *testing.T) {
	found := map[string]string{}
	lit := regexp.MustCompile(`"event", "([a-z_]+)"`)
	sched := regexp.MustCompile(`"(schedule_[a-z_]+)"`)
	vipKinds := regexp.MustCompile(`Kind +string // (.*)`)
	quoted := regexp.MustCompile(`"([a-z-]+)"`)
	err := filepath.WalkDir("../..", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") || strings.Contains(path, "/gen/") {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range lit.FindAllStringSubmatch(string(b), -1) {
			found[m[1]] = path
		}
		for _, m := range sched.FindAllStringSubmatch(string(b), -1) {
			found[m[1]] = path
		}
		for _, m := range vipKinds.FindAllStringSubmatch(string(b), -1) {
			for _, k := range quoted.FindAllStringSubmatch(m[1], -1) {
				found["vip_"+k[1]] = path
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	_, table, _ := strings.Cut(string(doc), "| type | when |")
	table, _, _ = strings.Cut(table, "\n\n")
	docTypes := 0
	for _, line := range strings.Split(table, "\n") {
		first, _, _ := strings.Cut(strings.TrimPrefix(line, "| "), " |")
		for _, m := range regexp.MustCompile("`([a-z_-]+)`").FindAllStringSubmatch(first, -1) {
			found[m[1]] = "docs/operations.md"
			docTypes++
		}
	}
	if docTypes < 20 {
		t.Fatalf("read only %d types from the docs' table", docTypes)
	}
	delete(found, "vip_") // the prefix of the kinds
	if len(found) < 25 {
		t.Fatalf("found only %d event types: the scan is broken: %v", len(found), found)
	}
	for typ, where := range found {
		if !slices.Contains(Types, typ) {
			t.Errorf("event type %q (%s) is not in events.Types", typ, where)
		}
	}
}

func TestValidType(t *testing.T) {
	for _, ok := range []string{"", "session", "vip_take", "vip_probe-conflict"} {
		if err := ValidType(ok); err != nil {
			t.Errorf("ValidType(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"nosuch", "Session", "vip_", "session "} {
		err := ValidType(bad)
		if !errors.Is(err, keys.ErrInvalid) || !strings.Contains(err.Error(), "fence_started") {
			t.Errorf("ValidType(%q) = %v, want ErrInvalid listing the known types", bad, err)
		}
	}
}
