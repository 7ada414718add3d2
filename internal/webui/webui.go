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
// scripts from the console's own files only: its files, and the one file
// index.html carries inline (early.js), allowed by the hash of its bytes.
package webui

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

//go:embed assets
var assets embed.FS

// Prefix is where the console is served.
const Prefix = "/ui/"

// cspFormat: only the console's own files and its one inlined script
// (allowed by the SHA-256 of its bytes, %s), no inline style, no frames,
// and fetch only to the origin that served the page.
const cspFormat = "default-src 'none'; script-src 'self' %s; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// inlined are the files index.html carries inside itself, where it says
// <script data-inline="NAME"></script>: early.js must run before the
// other files arrive.
var inlined = []string{"early.js"}

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

// site is the console as served: index.html names every other file with
// a version, the first bytes of the file's SHA-256 ("app.js?v=1a2b…"), so
// a browser keeps each file until a new binary changes it and a page load
// asks the server for index.html alone.
type site struct {
	files   http.Handler
	index   []byte
	version map[string]string // file name -> version
	csp     string
}

var loadSite = sync.OnceValue(func() *site {
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	index, err := fs.ReadFile(sub, "index.html")
	if err != nil {
		panic(err)
	}
	s := &site{files: http.StripPrefix(Prefix, http.FileServerFS(sub)), version: map[string]string{}}
	names, err := fs.Glob(sub, "*")
	if err != nil {
		panic(err)
	}
	var hashes []string
	for _, name := range inlined {
		b, err := fs.ReadFile(sub, name)
		if err != nil {
			panic(err)
		}
		// The browser hashes the script's text as the HTML parser left
		// it, line ends as LF; so are the bytes hashed and served here.
		b = bytes.ReplaceAll(bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")), []byte("\r"), []byte("\n"))
		tag := []byte(`<script data-inline="` + name + `"></script>`)
		low := bytes.ToLower(b)
		if bytes.Count(index, tag) != 1 || bytes.Contains(low, []byte("</script")) || bytes.Contains(low, []byte("<!--")) {
			panic("webui: " + name + " cannot be inlined once into index.html")
		}
		index = bytes.Replace(index, tag, append(append([]byte("<script>"), b...), "</script>"...), 1)
		sum := sha256.Sum256(b)
		hashes = append(hashes, "'sha256-"+base64.StdEncoding.EncodeToString(sum[:])+"'")
	}
	s.csp = fmt.Sprintf(cspFormat, strings.Join(hashes, " "))
	for _, name := range names {
		if name == "index.html" || slices.Contains(inlined, name) {
			continue
		}
		b, err := fs.ReadFile(sub, name)
		if err != nil {
			panic(err)
		}
		sum := sha256.Sum256(b)
		s.version[name] = hex.EncodeToString(sum[:6])
		index = bytes.ReplaceAll(index, []byte(`"`+name+`"`), []byte(`"`+name+"?v="+s.version[name]+`"`))
	}
	s.index = index
	return s
})

// Handler serves the console's files under Prefix; "/ui" redirects there.
func Handler() http.Handler {
	s := loadSite()
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
		h.Set("Content-Security-Policy", s.csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
		name := strings.TrimPrefix(r.URL.Path, Prefix)
		if name == "" || name == "index.html" {
			h.Set("Cache-Control", "no-cache")
			h.Set("Content-Type", "text/html; charset=utf-8")
			http.ServeContent(w, r, "index.html", time.Time{}, bytes.NewReader(s.index))
			return
		}
		// Only the version index.html names is cached for good: a
		// request for any other keeps being checked.
		if v, ok := s.version[name]; ok && r.URL.Query().Get("v") == v {
			h.Set("Cache-Control", "public, max-age=31536000, immutable")
		} else {
			h.Set("Cache-Control", "no-cache")
		}
		s.files.ServeHTTP(w, r)
	})
}
