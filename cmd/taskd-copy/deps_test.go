package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// heavyPackages are what taskd-copy must not link: the daemon (its store,
// RPC, metrics and API), whose package initialisation would run at every
// start-up of the copy. (net/http and crypto/tls stay: the progress-bar
// library, schollz/progressbar, imports them; they cost a few ms.) A
// package path matches when it equals an entry or lies below it.
var heavyPackages = []string{
	"go.etcd.io/etcd",
	"google.golang.org/grpc",
	"google.golang.org/protobuf",
	"github.com/prometheus",
	"connectrpc.com",
	"github.com/go-zookeeper",
	"go.uber.org/zap",
	"github.com/taskd/taskd/api",
	"github.com/taskd/taskd/internal/api",
	"github.com/taskd/taskd/internal/daemon",
	"github.com/taskd/taskd/internal/node",
	"github.com/taskd/taskd/internal/coord",
	"github.com/taskd/taskd/internal/metrics",
}

// TestLinksNoDaemonPackages is a regression guard, not a timing test: an
// import that pulls any of heavyPackages into taskd-copy (through volcmd,
// volcopy, volume, nbd or a library) fails here, naming the chain.
func TestLinksNoDaemonPackages(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Fatalf("go command needed to list the binary's packages: %v", err)
	}
	// CGO_ENABLED=0 as make build builds it; with cgo the list is the same
	// but for runtime/cgo.
	cmd := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}\t{{join .Imports \" \"}}", ".")
	cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	imports := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, imps, _ := strings.Cut(line, "\t")
		imports[pkg] = strings.Fields(imps)
	}
	if len(imports) < 10 {
		t.Fatalf("go list -deps listed %d packages; the check would prove nothing:\n%s", len(imports), out)
	}
	if _, ok := imports["github.com/taskd/taskd/internal/volcopy"]; !ok {
		t.Fatalf("internal/volcopy not among taskd-copy's packages; is this the copy command?")
	}
	var bad []string
	for pkg := range imports {
		if heavy(pkg) {
			bad = append(bad, pkg)
		}
	}
	slices.Sort(bad)
	for i, pkg := range bad {
		if i == 15 {
			t.Errorf("... and %d more", len(bad)-i)
			break
		}
		t.Errorf("taskd-copy links %s: %s", pkg, strings.Join(importChain(imports, "github.com/taskd/taskd/cmd/taskd-copy", pkg), " -> "))
	}
}

func heavy(pkg string) bool {
	for _, h := range heavyPackages {
		if pkg == h || strings.HasPrefix(pkg, h+"/") {
			return true
		}
	}
	return false
}

// importChain is a shortest import path from root to pkg (breadth first).
func importChain(imports map[string][]string, root, pkg string) []string {
	prev := map[string]string{root: ""}
	queue := []string{root}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if p == pkg {
			var chain []string
			for ; p != ""; p = prev[p] {
				chain = append([]string{p}, chain...)
			}
			return chain
		}
		for _, i := range imports[p] {
			if _, seen := prev[i]; !seen {
				prev[i] = p
				queue = append(queue, i)
			}
		}
	}
	return []string{root, "?", pkg}
}
