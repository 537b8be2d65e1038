package checkpoint

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImportsStayBelowGroup: checkpoint sits under group in DESIGN.md section 3,
// and group imports it, so it may use only the shared lower packages, the
// standard library, zap and msgpack. This test keeps the arrow pointing down.
func TestImportsStayBelowGroup(t *testing.T) {
	allowed := map[string]bool{
		"github.com/multipaxos/engine/ids":          true,
		"github.com/multipaxos/engine/statemachine": true,
		"github.com/multipaxos/engine/logstore":     true,
		"go.uber.org/zap":                           true,
		"github.com/vmihailenco/msgpack/v5":         true,
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			standard := !strings.Contains(strings.Split(path, "/")[0], ".")
			if !standard && !allowed[path] {
				t.Errorf("%s imports %s", name, path)
			}
		}
	}
}
