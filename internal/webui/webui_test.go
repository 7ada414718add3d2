package webui

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
)

func get(t *testing.T, path string) (*http.Response, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	resp := rec.Result()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// TestVersionedFiles: index.html names every other file with the version
// of its current bytes and is itself never cached; a file asked with that
// version may be kept for good, with any other version (or none) it is
// checked again.
func TestVersionedFiles(t *testing.T) {
	resp, index := get(t, Prefix)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Cache-Control") != "no-cache" {
		t.Fatalf("GET %s: %d, Cache-Control %q; want 200, no-cache", Prefix, resp.StatusCode, resp.Header.Get("Cache-Control"))
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Errorf("index Content-Type %q", ct)
	}
	names, err := fs.Glob(assets, "assets/*")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range names {
		name := strings.TrimPrefix(p, "assets/")
		if name == "index.html" || slices.Contains(inlined, name) {
			continue
		}
		b, err := fs.ReadFile(assets, p)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		v := hex.EncodeToString(sum[:6])
		if !strings.Contains(index, `"`+name+"?v="+v+`"`) {
			t.Errorf("index.html does not name %s with its version %s:\n%s", name, v, index)
		}
		for _, c := range []struct{ query, cache string }{
			{"?v=" + v, "public, max-age=31536000, immutable"},
			{"", "no-cache"},
			{"?v=000000000000", "no-cache"},
		} {
			resp, body := get(t, Prefix+name+c.query)
			if resp.StatusCode != http.StatusOK || body != string(b) {
				t.Errorf("GET %s%s: %d, %d bytes; want 200 and the file", name, c.query, resp.StatusCode, len(body))
			}
			if got := resp.Header.Get("Cache-Control"); got != c.cache {
				t.Errorf("GET %s%s: Cache-Control %q; want %q", name, c.query, got, c.cache)
			}
			if resp.Header.Get("Content-Security-Policy") != loadSite().csp {
				t.Errorf("GET %s%s: no Content-Security-Policy", name, c.query)
			}
		}
	}
	if resp, _ := get(t, Prefix+"index.html"); resp.StatusCode != http.StatusOK || resp.Header.Get("Cache-Control") != "no-cache" {
		t.Errorf("GET index.html: %d, Cache-Control %q", resp.StatusCode, resp.Header.Get("Cache-Control"))
	}
	// net/http's error reply drops Cache-Control: a 404 is never kept.
	if resp, _ := get(t, Prefix+"nosuch.js?v=1"); resp.StatusCode != http.StatusNotFound || strings.Contains(resp.Header.Get("Cache-Control"), "max-age") {
		t.Errorf("GET nosuch.js: %d, Cache-Control %q; want 404, not cached", resp.StatusCode, resp.Header.Get("Cache-Control"))
	}
}

// TestInlinedScript: index.html carries early.js inside itself, and the
// page's Content-Security-Policy allows that script by the SHA-256 of its
// bytes and no other inline script; a browser refuses a script whose
// bytes do not match (the browser test TestConsole sees it run, in its
// step earlyFirstPage).
func TestInlinedScript(t *testing.T) {
	resp, index := get(t, Prefix)
	policy := resp.Header.Get("Content-Security-Policy")
	for _, name := range inlined {
		b, err := fs.ReadFile(assets, "assets/"+name)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(index, "<script>"+string(b)+"</script>") {
			t.Errorf("index.html does not carry %s inline:\n%s", name, index)
		}
		if strings.Contains(index, `data-inline="`+name+`"`) || strings.Contains(index, `"`+name+`?v=`) {
			t.Errorf("index.html still names %s:\n%s", name, index)
		}
		sum := sha256.Sum256(b)
		if want := "script-src 'self' 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "';"; !strings.Contains(policy, want) {
			t.Errorf("Content-Security-Policy %q lacks %q", policy, want)
		}
	}
	if strings.Contains(policy, "unsafe-inline") || strings.Count(policy, "'sha256-") != len(inlined) {
		t.Errorf("Content-Security-Policy %q allows more inline script than %v", policy, inlined)
	}
	if n := strings.Count(index, "<script>"); n != len(inlined) {
		t.Errorf("index.html has %d inline scripts, want %d", n, len(inlined))
	}
}
