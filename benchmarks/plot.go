package main

import (
	"bufio"
	"encoding/csv"
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// csvRow is what the plot needs of one run.
type csvRow struct {
	Groups, Clients, Payload int
	OpsPerSec, P99ms         float64
}

func rowOf(r result) csvRow {
	return csvRow{Groups: r.Groups, Clients: r.Clients, Payload: r.Payload, OpsPerSec: r.OpsPerSec, P99ms: ms(r.P99)}
}

// readCSV reads the rows of a file written by -out (columns found by header name).
func readCSV(path string) ([]csvRow, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	recs, err := csv.NewReader(f).ReadAll()
	if err != nil {
		return nil, err
	}
	if len(recs) < 2 {
		return nil, fmt.Errorf("%s: no rows", path)
	}
	col := map[string]int{}
	for i, h := range recs[0] {
		col[h] = i
	}
	for _, h := range []string{"groups", "clients_per_group", "payload", "ops_per_s", "p99_ms"} {
		if _, ok := col[h]; !ok {
			return nil, fmt.Errorf("%s: no column %q", path, h)
		}
	}
	var rows []csvRow
	for _, r := range recs[1:] {
		var row csvRow
		var e1, e2, e3, e4, e5 error
		row.Groups, e1 = strconv.Atoi(r[col["groups"]])
		row.Clients, e2 = strconv.Atoi(r[col["clients_per_group"]])
		row.Payload, e3 = strconv.Atoi(r[col["payload"]])
		row.OpsPerSec, e4 = strconv.ParseFloat(r[col["ops_per_s"]], 64)
		row.P99ms, e5 = strconv.ParseFloat(r[col["p99_ms"]], 64)
		for _, e := range []error{e1, e2, e3, e4, e5} {
			if e != nil {
				return nil, fmt.Errorf("%s: %v", path, e)
			}
		}
		rows = append(rows, row)
	}
	return rows, nil
}

var lineRE = regexp.MustCompile(`^groups=(\d+) clients_per_group=(\d+) payload=(\d+) ops/s=([0-9.]+) p50_ms=([0-9.]+) p99_ms=([0-9.]+) errors=(\d+)$`)

// parseResultLine parses one result line (ours or the Dragonboat peer's).
func parseResultLine(s string) (csvRow, bool) {
	m := lineRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return csvRow{}, false
	}
	g, _ := strconv.Atoi(m[1])
	c, _ := strconv.Atoi(m[2])
	p, _ := strconv.Atoi(m[3])
	ops, _ := strconv.ParseFloat(m[4], 64)
	p99, _ := strconv.ParseFloat(m[6], 64)
	return csvRow{Groups: g, Clients: c, Payload: p, OpsPerSec: ops, P99ms: p99}, true
}

func readResultLines(path string) ([]csvRow, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var rows []csvRow
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if r, ok := parseResultLine(sc.Text()); ok {
			rows = append(rows, r)
		}
	}
	return rows, sc.Err()
}

type seriesKey struct{ clients, payload int }

func groupSeries(rows []csvRow) (map[seriesKey][]csvRow, []seriesKey) {
	m := map[seriesKey][]csvRow{}
	for _, r := range rows {
		k := seriesKey{r.Clients, r.Payload}
		m[k] = append(m[k], r)
	}
	var keys []seriesKey
	for k, v := range m {
		sort.Slice(v, func(i, j int) bool { return v[i].Groups < v[j].Groups })
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].clients != keys[j].clients {
			return keys[i].clients < keys[j].clients
		}
		return keys[i].payload < keys[j].payload
	})
	return m, keys
}

var palette = []color.Color{
	color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
	color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
	color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
	color.RGBA{R: 0x8c, G: 0x56, B: 0x4b, A: 0xff},
}

// drawPlot draws two panels, ops/s and p99 against groups (log-log), one line per
// clients x payload series; the rows of the compare file (e.g. the Dragonboat
// peer's output) are drawn dashed in the same colour per series.
func drawPlot(path string, rows []csvRow, compare string) error {
	if path == "" {
		return nil
	}
	format := strings.TrimPrefix(strings.ToLower(filepath.Ext(path)), ".")
	if format != "png" && format != "svg" {
		return fmt.Errorf("-plot %s: want a .png or .svg file", path)
	}
	var other []csvRow
	if compare != "" {
		var err error
		if other, err = readResultLines(compare); err != nil {
			return err
		}
	}
	ops, p99 := plot.New(), plot.New()
	ops.Title.Text = "throughput"
	ops.Y.Label.Text = "ops/s"
	p99.Title.Text = "p99 latency"
	p99.Y.Label.Text = "p99 ms"
	for _, p := range []*plot.Plot{ops, p99} {
		p.X.Label.Text = "groups"
		p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
		p.X.Tick.Marker, p.Y.Tick.Marker = plot.LogTicks{Prec: -1}, plot.LogTicks{Prec: -1}
		p.Add(plotter.NewGrid())
	}
	p99.Legend.Top, p99.Legend.Left = true, true // latency rises with groups: top left is free
	p99.Legend.XOffs, p99.Legend.YOffs = vg.Millimeter*2, -vg.Millimeter*2
	ours, keys := groupSeries(rows)
	theirs, _ := groupSeries(other)
	for i, k := range keys {
		col := palette[i%len(palette)]
		name := fmt.Sprintf("C=%d P=%dB", k.clients, k.payload)
		if err := addSeries(ops, p99, ours[k], col, false, name); err != nil {
			return err
		}
		if t := theirs[k]; len(t) > 0 {
			if err := addSeries(ops, p99, t, col, true, name+" dragonboat"); err != nil {
				return err
			}
		}
	}
	const w, h = 11 * vg.Inch, 4.5 * vg.Inch
	c, err := draw.NewFormattedCanvas(w, h, format)
	if err != nil {
		return err
	}
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Millimeter * 6, PadY: vg.Millimeter * 2,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	canvases := plot.Align([][]*plot.Plot{{ops, p99}}, tiles, draw.New(c))
	ops.Draw(canvases[0][0])
	p99.Draw(canvases[0][1])
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func addSeries(ops, p99 *plot.Plot, rows []csvRow, col color.Color, dashed bool, name string) error {
	var a, b plotter.XYs
	for _, r := range rows {
		if r.Groups <= 0 {
			continue
		}
		if r.OpsPerSec > 0 {
			a = append(a, plotter.XY{X: float64(r.Groups), Y: r.OpsPerSec})
		}
		if r.P99ms > 0 {
			b = append(b, plotter.XY{X: float64(r.Groups), Y: r.P99ms})
		}
	}
	for _, x := range []struct {
		p   *plot.Plot
		xys plotter.XYs
	}{{ops, a}, {p99, b}} {
		if len(x.xys) == 0 {
			continue
		}
		l, s, err := plotter.NewLinePoints(x.xys)
		if err != nil {
			return err
		}
		l.Color, s.Color = col, col
		if dashed {
			l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			s.Shape = draw.CrossGlyph{}
		}
		x.p.Add(l, s)
		if x.p == p99 {
			x.p.Legend.Add(name, l, s)
		}
	}
	return nil
}

// compareTable is a markdown table of our rows against the compare file's rows
// with the same groups, clients and payload: ops/s and p99, and the ratios.
func compareTable(ours, theirs []csvRow) string {
	type key struct{ g, c, p int }
	them := map[key]csvRow{}
	for _, r := range theirs {
		them[key{r.Groups, r.Clients, r.Payload}] = r
	}
	var b strings.Builder
	b.WriteString("| groups | clients | payload | ops/s ours | ops/s theirs | ops/s ours/theirs | p99 ms ours | p99 ms theirs | p99 ours/theirs |\n")
	b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range ours {
		t, ok := them[key{r.Groups, r.Clients, r.Payload}]
		if !ok || t.OpsPerSec == 0 || t.P99ms == 0 {
			continue
		}
		fmt.Fprintf(&b, "| %d | %d | %d | %.0f | %.0f | %.1fx | %.1f | %.1f | %.2f |\n", r.Groups, r.Clients, r.Payload,
			r.OpsPerSec, t.OpsPerSec, r.OpsPerSec/t.OpsPerSec, r.P99ms, t.P99ms, r.P99ms/t.P99ms)
	}
	return b.String()
}
