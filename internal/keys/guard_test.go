package keys_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestNoHandMadeKeys is the guard of the package's promise that every key
// is built here. It reads the source of every package that talks to the
// coordination store (imports internal/coord) and fails on:
//   - path.Join: a key made by hand, which cleans ".." instead of refusing
//     it (filepath.Join builds file paths, not keys);
//   - a string concatenation or Sprintf format with a "/": the same by
//     another way;
//   - a key builder's (…Key, …Dir, Child, NewRoot) error assigned to "_".
//
// The store backends themselves (internal/coord/...) are exempt: they
// handle the keys they are given. A line that really needs an exemption
// says so with a "keys:allow" comment and its reason.
func TestNoHandMadeKeys(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	checked := 0
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() {
			switch {
			case rel == ".git", strings.HasPrefix(rel, "internal/coord"), rel == "internal/keys",
				strings.HasPrefix(rel, "api/taskdv1"), strings.HasPrefix(rel, "node_modules"):
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, parser.ParseComments|parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		if !importsCoord(f) {
			return nil
		}
		checked++
		for _, problem := range handMadeKeys(fset, f) {
			t.Errorf("%s: %s", strings.TrimPrefix(problem, root+"/"), "build store keys with package keys")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 10 {
		t.Fatalf("checked only %d files that use the store; is the walk looking at the repository?", checked)
	}
}

func importsCoord(f *ast.File) bool {
	for _, imp := range f.Imports {
		if p, _ := strconv.Unquote(imp.Path.Value); p == "github.com/taskd/taskd/internal/coord" {
			return true
		}
	}
	return false
}

// handMadeKeys lists the offending places of f as "file:line: what".
func handMadeKeys(fset *token.FileSet, f *ast.File) []string {
	allowed := map[int]bool{}
	for _, cg := range f.Comments {
		for _, c := range cg.List {
			if strings.Contains(c.Text, "keys:allow") {
				allowed[fset.Position(c.Pos()).Line] = true
			}
		}
	}
	var out []string
	report := func(n ast.Node, what string) {
		pos := fset.Position(n.Pos())
		if !allowed[pos.Line] {
			out = append(out, pos.String()+": "+what)
		}
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.CallExpr:
			pkg, fn := selector(n.Fun)
			switch {
			case pkg == "path" && fn == "Join":
				report(n, "path.Join")
			case pkg == "fmt" && strings.HasPrefix(fn, "Sprint") && len(n.Args) > 0 && slashFormat(n.Args[0]):
				report(n, "fmt."+fn+" of a string with a \"/\" in its format")
			}
		case *ast.BinaryExpr:
			if n.Op == token.ADD && (separator(n.X) || separator(n.Y)) {
				report(n, "string concatenation with \"/\"")
			}
		case *ast.AssignStmt:
			if len(n.Lhs) == 2 && len(n.Rhs) == 1 && isBlank(n.Lhs[1]) {
				if call, ok := n.Rhs[0].(*ast.CallExpr); ok {
					if _, fn := selector(call.Fun); strings.HasSuffix(fn, "Key") || strings.HasSuffix(fn, "Dir") || fn == "Child" || fn == "NewRoot" {
						report(n, "the error of "+fn+" is dropped")
					}
				}
			}
		}
		return true
	})
	return out
}

// selector splits X.Sel into the name of X (when an identifier) and Sel.
func selector(e ast.Expr) (string, string) {
	s, ok := e.(*ast.SelectorExpr)
	if !ok {
		return "", ""
	}
	if id, ok := s.X.(*ast.Ident); ok {
		return id.Name, s.Sel.Name
	}
	return "", s.Sel.Name
}

// literal is the value of a string literal.
func literal(e ast.Expr) (string, bool) {
	lit, ok := e.(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING {
		return "", false
	}
	s, err := strconv.Unquote(lit.Value)
	return s, err == nil
}

// separator: a literal that joins path segments ("/", "a/", "/b"); a URL
// scheme ("http://") is not one.
func separator(e ast.Expr) bool {
	s, ok := literal(e)
	return ok && !strings.Contains(s, "://") && (strings.HasPrefix(s, "/") || strings.HasSuffix(s, "/"))
}

// slashFormat: a format with a "/" that prints a string (%s, %v, %q);
// numbers cannot carry "..".
func slashFormat(e ast.Expr) bool {
	s, ok := literal(e)
	return ok && strings.Contains(s, "/") && (strings.Contains(s, "%s") || strings.Contains(s, "%v") || strings.Contains(s, "%q"))
}

func isBlank(e ast.Expr) bool {
	id, ok := e.(*ast.Ident)
	return ok && id.Name == "_"
}

// TestGuardFindsHandMadeKeys: the guard reports each pattern it promises to
// (so that a clean run of TestNoHandMadeKeys means something).
func TestGuardFindsHandMadeKeys(t *testing.T) {
	const src = `package p
import ("fmt"; "path")
func f(dir, svc string, n int, l layout) {
	_ = path.Join(dir, svc)
	_ = dir + "/" + svc
	_ = fmt.Sprintf("%s/vips/%s", dir, svc)
	k, _ := l.ConfigKey(svc)
	_ = k
	_ = path.Join(dir, svc) // keys:allow: a test of the exemption
	_ = fmt.Sprintf("/proc/%d/status", n)
	_ = "http://" + svc
}
`
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "p.go", src, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	got := handMadeKeys(fset, f)
	want := []string{"p.go:4:6: path.Join", "p.go:5:6: string concatenation",
		"p.go:6:6: fmt.Sprintf", "p.go:7:2: the error of ConfigKey is dropped"}
	if len(got) != len(want) {
		t.Fatalf("guard found %d places, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("finding %d: %q, want %q…", i, got[i], want[i])
		}
	}
}
