package backend

import "testing"

func TestIsChild(t *testing.T) {
	cases := []struct {
		dir, key string
		want     bool
	}{
		{"/a", "/a/b", true},
		{"/a/", "/a/b", true},
		{"/a", "/a/b/c", false},
		{"/a", "/ab", false},
		{"/a", "/a/", false},
		{"/a", "/a", false},
	}
	for _, c := range cases {
		if got := IsChild(c.dir, c.key); got != c.want {
			t.Errorf("IsChild(%q, %q) = %v", c.dir, c.key, got)
		}
	}
}
