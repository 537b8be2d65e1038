package main

import (
	"bytes"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/multipaxos/engine/ids"
)

// TestMain lets the test binary act as a -procs child, as the benchmark binary does.
func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" {
		os.Exit(childMain(spec))
	}
	os.Exit(m.Run())
}

var (
	floorRE = regexp.MustCompile(`^floor fsync_us=\d+ rtt_us=\d+ floor_us=\d+$`)
	memRE   = regexp.MustCompile(`^mem rss_mb=\d+\.\d heap_mb=\d+\.\d$`)
)

// smoke runs the harness for about a second on 2 groups and checks the output.
func smoke(t *testing.T, extra ...string) {
	csvPath := filepath.Join(t.TempDir(), "out.csv")
	plotPath := filepath.Join(t.TempDir(), "out.png")
	args := append([]string{"-groups", "2", "-clients", "2", "-payload", "16", "-duration", "1s",
		"-warmup", "200ms", "-dir", t.TempDir(), "-out", csvPath, "-plot", plotPath}, extra...)
	var stdout, stderr bytes.Buffer
	if code := benchMain(args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, &stdout, &stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("want 3 lines (floor, result, mem), got:\n%s", &stdout)
	}
	if !floorRE.MatchString(lines[0]) {
		t.Errorf("floor line %q", lines[0])
	}
	r, ok := parseResultLine(lines[1])
	if !ok {
		t.Fatalf("result line %q does not have the peer harness's form", lines[1])
	}
	if r.Groups != 2 || r.Clients != 2 || r.Payload != 16 || r.OpsPerSec <= 0 || r.P99ms <= 0 {
		t.Errorf("result line %q: %+v", lines[1], r)
	}
	if !strings.HasSuffix(lines[1], " errors=0") {
		t.Errorf("errors in %q", lines[1])
	}
	if !memRE.MatchString(lines[2]) {
		t.Errorf("mem line %q", lines[2])
	}
	rows, err := readCSV(csvPath)
	if err != nil || len(rows) != 1 || rows[0].Groups != 2 {
		t.Errorf("csv: %v %+v", err, rows)
	}
	if st, err := os.Stat(plotPath); err != nil || st.Size() == 0 {
		t.Errorf("plot: %v", err)
	}
}

func TestSmoke(t *testing.T) { smoke(t) }

func TestSmokeProcs(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three processes")
	}
	smoke(t, "-procs")
}

func TestHistogramQuantiles(t *testing.T) {
	h := &Histogram{}
	var vals []time.Duration
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 100000; i++ {
		// log-uniform from 1 µs to 10 s
		v := time.Duration(1e3 * math.Pow(10, r.Float64()*7))
		vals = append(vals, v)
		h.Record(v)
	}
	slices.Sort(vals)
	for _, q := range []float64{0.01, 0.5, 0.9, 0.99, 0.999, 1} {
		idx := int(q*float64(len(vals))+0.5) - 1
		want := vals[max(idx, 0)]
		got := h.Quantile(q)
		if d := float64(got-want) / float64(want); d > 0.01 || d < -0.01 {
			t.Errorf("q=%v: got %v, want %v (%.2f%% off)", q, got, want, 100*d)
		}
	}
	if h.Count() != uint64(len(vals)) {
		t.Errorf("count %d", h.Count())
	}
	var h2 Histogram
	h2.AddSparse(h.Sparse())
	if h2.Quantile(0.99) != h.Quantile(0.99) {
		t.Error("Sparse/AddSparse lost counts")
	}
	for _, v := range []uint64{0, 1, 127, 128, 255, 256, 1000, 1 << 40, 1<<64 - 1} {
		lo, w := histBounds(histIndex(v))
		if v < lo || v-lo >= w {
			t.Errorf("value %d in bucket [%d, +%d)", v, lo, w)
		}
	}
}

func TestProposerSpreadsGroups(t *testing.T) {
	count := map[ids.NodeID]int{}
	for g := 0; g < 300; g++ {
		count[proposerFor(ids.GroupID(g))]++
	}
	if len(count) != 3 || count[1] != 100 || count[2] != 100 || count[3] != 100 {
		t.Errorf("proposers %v", count)
	}
}

func TestLeakVerdict(t *testing.T) {
	flat := make([]uint64, 60)
	grow := make([]uint64, 60)
	for i := range flat {
		flat[i] = 500*mib + uint64(i%3)*mib
		grow[i] = 500*mib + uint64(i)*5*mib
	}
	if msg, ok := leakVerdict(flat); !ok {
		t.Errorf("flat RSS judged a leak: %s", msg)
	}
	if msg, ok := leakVerdict(grow); ok {
		t.Errorf("growing RSS passed: %s", msg)
	}
}

func TestParseBatch(t *testing.T) {
	c, b, err := parseBatch("1024,4194304")
	if err != nil || c != 1024 || b != 4194304 {
		t.Errorf("got %d %d %v", c, b, err)
	}
	if _, _, err := parseBatch("1024"); err == nil {
		t.Error("want an error for one number")
	}
}

func TestCompareTable(t *testing.T) {
	ours := []csvRow{{Groups: 64, Clients: 8, Payload: 16, OpsPerSec: 50000, P99ms: 20}, {Groups: 1024, Clients: 1, Payload: 16, OpsPerSec: 1, P99ms: 1}}
	theirs, _ := parseResultLine("groups=64 clients_per_group=8 payload=16 ops/s=5000 p50_ms=60.000 p99_ms=200.000 errors=0")
	got := compareTable(ours, []csvRow{theirs})
	if !strings.Contains(got, "| 64 | 8 | 16 | 50000 | 5000 | 10.0x | 20.0 | 200.0 | 0.10 |") || strings.Contains(got, "| 1024 |") {
		t.Errorf("table:\n%s", got)
	}
}
