package auth_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/taskd/taskd/internal/auth"
)

func TestParseToken(t *testing.T) {
	good := auth.NewToken()
	if p, err := auth.ParseToken(good.String()); err != nil || p != good {
		t.Fatalf("round trip of a new token: %v %+v", err, p)
	}
	if len(good.String()) != auth.TokenLen || !auth.ValidID(good.ID) || len(good.Secret) != 64 {
		t.Fatalf("new token has the wrong shape: %q", good.String())
	}
	s := good.String()
	for name, bad := range map[string]string{
		"empty":         "",
		"no prefix":     strings.TrimPrefix(s, "taskd."),
		"wrong prefix":  "tasko." + s[6:],
		"upper hex":     strings.ToUpper(s[:6]) + s[6:],
		"upper secret":  s[:15] + strings.ToUpper(s[15:]),
		"short secret":  s[:len(s)-1],
		"long secret":   s + "0",
		"dot in id":     "taskd.1234.678." + s[15:],
		"slash in id":   "taskd.../../.." + s[14:],
		"space":         s[:20] + " " + s[21:],
		"missing dot":   s[:14] + "0" + s[15:],
		"non-hex":       s[:20] + "g" + s[21:],
		"old style":     "s3cret-token",
		"bearer prefix": "Bearer " + s,
	} {
		if _, err := auth.ParseToken(bad); !errors.Is(err, auth.ErrUnauthenticated) {
			t.Errorf("%s: ParseToken(%q) = %v, want ErrUnauthenticated", name, bad, err)
		}
		if _, err := auth.ParseToken(bad); err != nil && bad != "" && strings.Contains(err.Error(), bad) {
			t.Errorf("%s: the error echoes the (possibly secret) input: %v", name, err)
		}
	}
}

func TestRoles(t *testing.T) {
	cases := []struct {
		have, need auth.Role
		ok         bool
	}{
		{auth.Viewer, auth.Viewer, true}, {auth.Viewer, auth.Operator, false}, {auth.Viewer, auth.Admin, false},
		{auth.Operator, auth.Viewer, true}, {auth.Operator, auth.Operator, true}, {auth.Operator, auth.Admin, false},
		{auth.Admin, auth.Viewer, true}, {auth.Admin, auth.Operator, true}, {auth.Admin, auth.Admin, true},
		{auth.Join, auth.Join, true}, {auth.Join, auth.Viewer, false}, {auth.Join, auth.Admin, false},
		{auth.Admin, auth.Join, false}, {auth.Viewer, auth.Join, false},
		{auth.Role("root"), auth.Viewer, false}, {auth.Role(""), auth.Viewer, false},
	}
	for _, c := range cases {
		if got := c.have.Satisfies(c.need); got != c.ok {
			t.Errorf("%q.Satisfies(%q) = %v, want %v", c.have, c.need, got, c.ok)
		}
	}
	for _, s := range []string{"", "Admin", "root", "admin ", "viewer,admin"} {
		if _, err := auth.ParseRole(s); !errors.Is(err, auth.ErrInvalid) {
			t.Errorf("ParseRole(%q) = %v, want ErrInvalid", s, err)
		}
	}
}

// FuzzKey: no input makes Key return a key outside the token directory.
func FuzzKey(f *testing.F) {
	for _, s := range []string{"0123abcd", "..", "../../election/epoch", "0123abc/", "", "0123ABCD", "\x00123abcd"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		key, err := auth.Key("/taskd", id)
		if err != nil {
			if !errors.Is(err, auth.ErrInvalid) {
				t.Fatalf("Key(%q) error %v is not ErrInvalid", id, err)
			}
			return
		}
		rest, ok := strings.CutPrefix(key, "/taskd/tokens/")
		if !ok || rest == "" || strings.ContainsAny(rest, "/.\x00") || rest != id || len(rest) != 8 {
			t.Fatalf("Key(%q) = %q escapes or garbles the token directory", id, key)
		}
	})
}
