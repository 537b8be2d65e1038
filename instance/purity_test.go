package instance

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestPurity keeps DESIGN.md section 3 true by a test, not by hope: the protocol core
// imports no clock, randomness, I/O or synchronization and starts no goroutine.
func TestPurity(t *testing.T) {
	banned := map[string]bool{"time": true, "math/rand": true, "math/rand/v2": true, "net": true,
		"os": true, "sync": true, "sync/atomic": true, "io/ioutil": true}
	files, _ := filepath.Glob("*.go")
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		af, err := parser.ParseFile(fset, f, src, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if banned[p] {
				t.Errorf("%s imports %s: instance/ must stay pure", f, p)
			}
			if strings.HasPrefix(p, "github.com/multipaxos/engine/") && p != "github.com/multipaxos/engine/ids" {
				t.Errorf("%s imports %s: instance/ imports nothing of ours but ids", f, p)
			}
		}
		if strings.Contains(string(src), "go func") {
			t.Errorf("%s starts a goroutine", f)
		}
	}
}
