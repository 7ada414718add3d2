// Package webui is taskd's web console: plain HTML, CSS and JavaScript
// embedded in the binary and served at /ui/ on the API listener.
//
// The assets hold no data and need no token. The console logs in with an
// API token, keeps it in the tab's sessionStorage and calls the API with
// it as a bearer token, exactly as taskctl does: every read and every
// action is checked by the API's guard and role table, never by the page.
// Hiding a button from a viewer is convenience, not protection.
//
// Because the token sits in the page's storage, the page must never run
// injected script: every value from the API is written as text
// (textContent), never as HTML, and the Content-Security-Policy allows
// scripts from the console's own files only.
package webui

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

//go:embed assets
var assets embed.FS

// Prefix is where the console is served.
const Prefix = "/ui/"

// csp: only the console's own files, no inline script or style, no
// frames, and fetch only to the origin that served the page.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// AssetBytes is the size of the console's files, the bytes the console
// adds to the binary.
func AssetBytes() (int64, error) {
	var n int64
	err := fs.WalkDir(assets, "assets", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		n += info.Size()
		return nil
	})
	return n, err
}

// Handler serves the console's files under Prefix; "/ui" redirects there.
func Handler() http.Handler {
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.StripPrefix(Prefix, http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "the console's files are read with GET", http.StatusMethodNotAllowed)
			return
		}
		if !strings.HasPrefix(r.URL.Path, Prefix) {
			http.Redirect(w, r, Prefix, http.StatusMovedPermanently)
			return
		}
		h := w.Header()
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}
