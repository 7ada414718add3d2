package events

import (
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/taskd/taskd/internal/keys"
)

// TestTypesAreComplete: Types lists every Kind constant once; the code
// records events only through the constants (no string literal as an
// "event" attribute, no Kind made from a string), and every kind is
// emitted somewhere; every type the docs list is in Types, so `events
// --type T` never refuses a real one.
func TestTypesAreComplete(t *testing.T) {
	consts := kindConstants(t)
	if len(consts) < 25 {
		t.Fatalf("found only %d Kind constants in types.go: the scan is broken", len(consts))
	}
	listed := map[Kind]int{}
	for _, k := range Types {
		listed[k]++
	}
	for name, k := range consts {
		if listed[k] != 1 {
			t.Errorf("constant %s (%q) is in Types %d times, want once", name, k, listed[k])
		}
	}
	if len(Types) != len(consts) {
		t.Errorf("Types has %d entries for %d constants", len(Types), len(consts))
	}

	literal := regexp.MustCompile(`"event", |slog\.String\("event"|events\.Kind\(`)
	used := regexp.MustCompile(`events\.([A-Z][A-Za-z]*)\b`)
	emitted := map[string]string{}
	err := filepath.WalkDir("../..", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") ||
			strings.Contains(path, "/gen/") || strings.Contains(path, "internal/events/") {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, line := range strings.Split(string(b), "\n") {
			if literal.MatchString(line) {
				t.Errorf("%s:%d records an event kind that is not an events constant: %s", path, i+1, strings.TrimSpace(line))
			}
		}
		for _, m := range used.FindAllStringSubmatch(string(b), -1) {
			emitted[m[1]] = path
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for name := range consts {
		if _, ok := emitted[name]; !ok {
			t.Errorf("event kind %s is never recorded (no events.%s outside the package)", name, name)
		}
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
			docTypes++
			if m[1] != "vip_" && !slices.Contains(Types, Kind(m[1])) { // "vip_" is the prefix of the holder's kinds
				t.Errorf("event type %q (docs/operations.md) is not in events.Types", m[1])
			}
		}
	}
	if docTypes < 20 {
		t.Fatalf("read only %d types from the docs' table", docTypes)
	}
}

// kindConstants are the Kind constants declared in types.go, by name.
func kindConstants(t *testing.T) map[string]Kind {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "types.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]Kind{}
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, spec := range g.Specs {
			vs := spec.(*ast.ValueSpec)
			if id, ok := vs.Type.(*ast.Ident); !ok || id.Name != "Kind" {
				continue
			}
			for i, n := range vs.Names {
				lit, ok := vs.Values[i].(*ast.BasicLit)
				if !ok {
					t.Fatalf("constant %s is not a string literal", n.Name)
				}
				v, err := strconv.Unquote(lit.Value)
				if err != nil {
					t.Fatal(err)
				}
				out[n.Name] = Kind(v)
			}
		}
	}
	return out
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
