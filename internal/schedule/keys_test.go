package schedule

import (
	"errors"
	"github.com/taskd/taskd/internal/keys"
	"path"
	"strings"
	"testing"
)

// hostile are names an attacker sends: traversal, separators, control
// characters, encodings and sizes.
var hostile = []string{
	"", ".", "..", "/", "../", "a/b", "/a", "a/", "../../tasks/active/x", "../../election/epoch", "a..b",
	"..%2f", "a\x00b", "a\nb", "a\tb", "\x7f", "a b", "\xff\xfe", "…", "ｎ1", "-a", ".a", "_a", "a@b",
	strings.Repeat("a", 64), strings.Repeat("a", 1<<16),
}

func TestValidName(t *testing.T) {
	for _, n := range []string{"nightly", "backup-vol1", "a", "A.b_c-1", strings.Repeat("a", 63)} {
		if err := ValidName(n); err != nil {
			t.Errorf("%q refused: %v", n, err)
		}
	}
	for _, n := range hostile {
		err := ValidName(n)
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%q: got %v, want ErrInvalid", n, err)
			continue
		}
		if strings.ContainsAny(err.Error(), "\x00\n") || len(err.Error()) > 300 {
			t.Errorf("%q: message not safe to log: %q", n, err.Error())
		}
	}
}

// FuzzKeys holds every key builder to: an error wrapping ErrInvalid and no
// key, or a key that is exactly DIR/SEGMENT, which cleans to itself.
func FuzzKeys(f *testing.F) {
	for _, s := range append(hostile, "nightly", "0f8fad5b-d9cb-469f-a165-70867728950e") {
		f.Add(s, "0f8fad5b-d9cb-469f-a165-70867728950e")
	}
	root, err := keys.NewRoot("/taskd")
	if err != nil {
		f.Fatal(err)
	}
	lay := newLayout(root)
	f.Fuzz(func(t *testing.T, name, id string) {
		check := func(dir, key string, err error) {
			if err != nil {
				if !errors.Is(err, ErrInvalid) || key != "" {
					t.Fatalf("%q: %v, key %q", name, err, key)
				}
				return
			}
			if path.Dir(key) != dir || path.Clean(key) != key || strings.ContainsAny(path.Base(key), "\x00\n/") {
				t.Fatalf("%q/%q: key %q escapes %s", name, id, key, dir)
			}
		}
		k, err := lay.DefKey(name)
		check(lay.DefsDir(), k, err)
		k, err = lay.StateKey(id)
		check(lay.StateDir(), k, err)
		k, err = lay.TriggerKey(name, id)
		check(lay.TriggersDir(), k, err)
		if err == nil {
			n, i, perr := lay.parseTriggerKey(k)
			if perr != nil || n != name || i != id {
				t.Fatalf("trigger key %q read back as %q %q %v", k, n, i, perr)
			}
		}
	})
}
