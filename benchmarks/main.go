// Command benchmarks (go run ./benchmarks) measures the engine the way a user
// would run it: a 3-replica cluster on loopback - real TCP through the node's
// default transport, real Pebble with fsync on in a temp dir removed at exit, the
// node's default options - driven by closed-loop clients. For every group, C
// clients each propose a P-byte value through the group's proposer and wait for
// the result, for D after a warm-up. One line per run on stdout,
//
//	groups=G clients_per_group=C payload=P ops/s=X p50_ms=Y p99_ms=Z errors=E
//	mem rss_mb=R heap_mb=H
//
// in the same form as the Dragonboat peer harness (../shared/peers/dragonboat),
// preceded by the physical floor of this machine measured in the same run:
//
//	floor fsync_us=A rtt_us=B floor_us=C
//
// Examples:
//
//	go run ./benchmarks -groups 64 -clients 8 -payload 16 -duration 5s
//	go run ./benchmarks -sweep -out sweep.csv -plot docs/benchmarks.png
//	go run ./benchmarks -procs -groups 64 -clients 8
//	go run ./benchmarks -groups 64 -clients 8 -cpuprofile cpu.pprof
//	go run ./benchmarks -leak            # 10 minutes of 256 x 8, RSS must level off
//
// See docs/benchmarks.md for the method and the latest results.
package main

import (
	"encoding/csv"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"
)

func main() {
	if spec := os.Getenv(childEnv); spec != "" {
		os.Exit(childMain(spec))
	}
	os.Exit(benchMain(os.Args[1:], os.Stdout, os.Stderr))
}

// options are the parsed command line.
type options struct {
	settings
	groups, clients, payload int
	duration, warmup         time.Duration
	sweep                    bool
	sweepGroups              []int
	sweepClients             []int
	sweepPayloads            []int
	idleGroups               int
	idleDuration             time.Duration
	out, plot, compare       string
	plotFrom                 string
	leak                     bool
	leakDuration             time.Duration
	leakEvery                time.Duration
	noFloor                  bool
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("benchmarks", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.groups, "groups", 1, "number of Paxos groups, each replicated on all three nodes")
	fs.IntVar(&o.clients, "clients", 1, "closed-loop clients per group")
	fs.IntVar(&o.payload, "payload", 16, "bytes per proposed value")
	fs.DurationVar(&o.duration, "duration", 5*time.Second, "measured window of each run")
	fs.DurationVar(&o.warmup, "warmup", time.Second, "load before the window opens (not counted)")
	batch := fs.String("batch", "", "batching limits `COUNT,BYTES` (node.Options BatchCountMax, BatchBytesMax); empty = the node's defaults")
	fs.BoolVar(&o.sweep, "sweep", false, "run groups x clients x payload (see -sweep-*), then the idle run")
	sg := fs.String("sweep-groups", "1,4,16,64,256,1024", "groups of the sweep")
	sc := fs.String("sweep-clients", "1,8", "clients per group of the sweep")
	sp := fs.String("sweep-payloads", "16,128", "payloads of the sweep")
	fs.IntVar(&o.idleGroups, "idle-groups", 4096, "groups of the sweep's idle run")
	fs.DurationVar(&o.idleDuration, "idle-duration", 30*time.Second, "window of the sweep's idle run (0 = skip it)")
	fs.StringVar(&o.out, "out", "", "append one CSV row per run to this file")
	fs.StringVar(&o.plot, "plot", "", "draw ops/s and p99 against groups into this .png or .svg")
	fs.StringVar(&o.plotFrom, "plot-from", "", "draw -plot from this CSV (written by -out) instead of running")
	fs.StringVar(&o.compare, "compare", "", "also draw the result lines in this file (e.g. the Dragonboat peer's stdout) on the plot, dashed; with -plot-from, print a markdown table of the ratios")
	fs.BoolVar(&o.procs, "procs", false, "run the three replicas as three processes (clients run in the process of each group's proposer)")
	fs.StringVar(&o.dir, "dir", "", "parent of the temporary data dir (default $TMPDIR); it must be on the disk to measure")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Second, "per-proposal timeout")
	fs.DurationVar(&o.setupTimeout, "setup-timeout", 120*time.Second, "how long setup may take to get one proposal through in every group")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole invocation (-procs: FILE.node1..3, one per replica, per run)")
	fs.StringVar(&o.memProfile, "memprofile", "", "write heap profiles: FILE.live at the end of the last run's window (the cluster under load), FILE after it stopped and a GC (what outlives the runs; with FILE.goroutines); in-process only")
	fs.BoolVar(&o.leak, "leak", false, "leak check: one long 256 x 8 run sampling RSS; fails if RSS keeps growing")
	fs.DurationVar(&o.leakDuration, "leak-duration", 10*time.Minute, "window of the -leak run")
	fs.DurationVar(&o.leakEvery, "leak-every", 10*time.Second, "RSS sample interval of the -leak run")
	fs.BoolVar(&o.noFloor, "no-floor", false, "skip the floor measurement")
	fs.BoolVar(&o.verbose, "v", false, "diagnostics on stderr: setup time, fsyncs, messages, CPU, batching per run")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var err error
	if o.batchCount, o.batchBytes, err = parseBatch(*batch); err != nil {
		return o, err
	}
	for _, l := range []struct {
		s   string
		dst *[]int
	}{{*sg, &o.sweepGroups}, {*sc, &o.sweepClients}, {*sp, &o.sweepPayloads}} {
		if *l.dst, err = parseInts(l.s); err != nil {
			return o, err
		}
	}
	if o.groups < 1 || o.clients < 1 || o.payload < 1 || o.duration <= 0 || o.warmup < 0 {
		return o, errors.New("-groups, -clients, -payload and -duration must be positive, -warmup not negative")
	}
	o.dir = dataDirBase(o.dir)
	return o, nil
}

func parseBatch(s string) (count, bytes int, err error) {
	if s == "" {
		return 0, 0, nil
	}
	v, err := parseInts(s)
	if err != nil || len(v) != 2 {
		return 0, 0, fmt.Errorf("-batch %q: want COUNT,BYTES", s)
	}
	return v[0], v[1], nil
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v < 1 {
			return nil, fmt.Errorf("%q: want positive integers separated by commas", s)
		}
		out = append(out, v)
	}
	return out, nil
}

// benchMain is main without the exit: it returns the exit code.
func benchMain(args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "benchmarks:", err)
		return 2
	}
	if o.plotFrom != "" {
		rows, err := readCSV(o.plotFrom)
		if err == nil {
			err = drawPlot(o.plot, rows, o.compare)
		}
		if err == nil && o.compare != "" {
			var other []csvRow
			if other, err = readResultLines(o.compare); err == nil {
				fmt.Fprint(stdout, compareTable(rows, other))
			}
		}
		if err != nil {
			fmt.Fprintln(stderr, "benchmarks:", err)
			return 1
		}
		return 0
	}

	// Remove the data dir of the run in progress on Ctrl-C/SIGTERM.
	sigCh := make(chan os.Signal, 1)
	signal.Notify(sigCh, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigCh)
	go func() {
		if _, ok := <-sigCh; !ok {
			return
		}
		if d, _ := currentDir.Load().(string); d != "" {
			os.RemoveAll(d)
		}
		os.Exit(130)
	}()

	if o.cpuProfile != "" && !o.procs {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			fmt.Fprintln(stderr, "benchmarks:", err)
			return 2
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(stderr, "benchmarks:", err)
			return 2
		}
		defer pprof.StopCPUProfile()
	}
	if o.memProfile != "" && !o.procs {
		defer func() {
			runtime.GC()
			if err := writeHeapProfile(o.memProfile); err != nil {
				fmt.Fprintln(stderr, "benchmarks:", err)
			}
		}()
	}

	mode := "one process"
	if o.procs {
		mode = "three processes"
	}
	fmt.Fprintf(stderr, "# multipaxos engine: 3 replicas (%s) on 127.0.0.1, TCP, Pebble fsync on in %s, node default options%s, warmup=%v duration=%v, GOMAXPROCS=%d, NumCPU=%d, load %s\n",
		mode, o.dir, batchNote(o.settings), o.warmup, o.duration, runtime.GOMAXPROCS(0), runtime.NumCPU(), loadAvg())

	var fl floor
	if !o.noFloor {
		fdir, err := os.MkdirTemp(o.dir, "paxosbench-floor-")
		if err == nil {
			fl, err = measureFloor(fdir, 300, 2000)
			os.RemoveAll(fdir)
		}
		if err != nil {
			fmt.Fprintln(stderr, "benchmarks: floor:", err)
			return 1
		}
		fmt.Fprintln(stdout, fl)
	}

	var csvw *csvOut
	if o.out != "" {
		if csvw, err = openCSV(o.out); err != nil {
			fmt.Fprintln(stderr, "benchmarks:", err)
			return 1
		}
		defer csvw.close()
	}

	var runs []params
	switch {
	case o.leak:
		runs = []params{{Groups: 256, Clients: 8, Payload: o.payload, Duration: o.leakDuration, Warmup: o.warmup}}
	case o.sweep:
		for _, g := range o.sweepGroups {
			for _, c := range o.sweepClients {
				for _, p := range o.sweepPayloads {
					runs = append(runs, params{g, c, p, o.duration, o.warmup})
				}
			}
		}
	default:
		runs = []params{{o.groups, o.clients, o.payload, o.duration, o.warmup}}
	}
	idle := o.sweep && o.idleDuration > 0

	var bar *progressbar.ProgressBar
	if o.sweep {
		n := len(runs)
		if idle {
			n += 2
		}
		bar = progressbar.NewOptions(n, progressbar.OptionSetWriter(stderr), progressbar.OptionShowCount(),
			progressbar.OptionSetWidth(30), progressbar.OptionSetPredictTime(true),
			progressbar.OptionSetDescription("sweep"), progressbar.OptionSetElapsedTime(true))
	}
	// say prints result lines (to stdout) and diag lines (to stderr) without
	// tearing the bar.
	sayTo := func(w io.Writer, format string, a ...any) {
		if bar != nil {
			_ = bar.Clear()
		}
		fmt.Fprintf(w, format, a...)
		if bar != nil {
			_ = bar.RenderBlank()
		}
	}
	say := func(format string, a ...any) { sayTo(stdout, format, a...) }
	step := func(desc string) {
		if bar != nil {
			bar.Describe(desc)
		}
	}
	done := func() {
		if bar != nil {
			_ = bar.Add(1)
		}
	}

	failed := false
	var results []result
	for _, p := range runs {
		step(fmt.Sprintf("%dx%dx%dB", p.Groups, p.Clients, p.Payload))
		var sampler leakSampler
		if o.leak {
			sampler = func(ms []member, d time.Duration) ([]uint64, error) {
				return sampleRSS(ms, d, o.leakEvery, func(t time.Duration, rss uint64) {
					sayTo(stderr, "# leak t=%v rss_mb=%.1f\n", t.Round(time.Second), float64(rss)/mib)
				})
			}
		}
		r, err := runOnce(p, o.settings, sampler)
		done()
		if err != nil {
			failed = true
			say("groups=%d clients_per_group=%d payload=%d FAILED: %v\n", p.Groups, p.Clients, p.Payload, err)
			continue
		}
		results = append(results, r)
		say("%s\n%s\n", r.line(), r.memLine())
		if p.Groups == 1 && p.Clients == 1 && fl.totalUs() > 0 {
			say("ratio p50/floor=%.2f\n", us(r.P50)/fl.totalUs())
		}
		if o.verbose {
			sayTo(stderr, "%s\n", r.diagLine())
		}
		if csvw != nil {
			if err := csvw.write(r, o.procs); err != nil {
				fmt.Fprintln(stderr, "benchmarks: csv:", err)
			}
		}
		if o.leak {
			if verdict, ok := leakVerdict(r.RSSSamples); !ok {
				failed = true
				say("leak FAILED: %s\n", verdict)
			} else {
				say("leak ok: %s\n", verdict)
			}
		}
	}
	if idle {
		step(fmt.Sprintf("idle %d groups", o.idleGroups))
		line, err := idleRun(o, done)
		if err != nil {
			failed = true
			say("idle FAILED: %v\n", err)
		} else {
			say("%s", line)
		}
	}
	if bar != nil {
		_ = bar.Finish()
		fmt.Fprintln(stderr)
	}
	if o.plot != "" && len(results) > 0 {
		rows := make([]csvRow, len(results))
		for i, r := range results {
			rows[i] = rowOf(r)
		}
		if err := drawPlot(o.plot, rows, o.compare); err != nil {
			fmt.Fprintln(stderr, "benchmarks: plot:", err)
			failed = true
		}
	}
	if failed {
		return 1
	}
	return 0
}

func batchNote(s settings) string {
	if s.batchCount == 0 && s.batchBytes == 0 {
		return ""
	}
	return fmt.Sprintf(" except BatchCountMax=%d BatchBytesMax=%d", s.batchCount, s.batchBytes)
}

func (r result) diagLine() string {
	return fmt.Sprintf("# diag groups=%d clients=%d payload=%d window=%v cpu_pct=%.0f fsyncs/s=%.0f msgs/s=%.0f msgs/write=%.2f instances=%d fsyncs/instance=%.2f cmds/instance=%.2f log_writes/fsync=%.1f not_master=%d load=[%s] errors_seen=%q",
		r.Groups, r.Clients, r.Payload, r.Elapsed.Round(time.Millisecond), r.CPUPct, r.fsyncsPerSec(), r.msgsPerSec(),
		ratio(r.Frames, r.NetWrites), r.Instances, r.fsyncsPerInstance(), r.cmdsPerInstance(), ratio(r.LogWrites, r.Syncs), r.NotMaster, r.Load, r.ErrKinds)
}

// idleRun measures the idle cost of many groups: a cluster of o.idleGroups groups
// that each chose one value in setup, then no load for o.idleDuration. The base is
// the same cluster with one group, so resident memory per group is
// (RSS(N) - RSS(1)) / (3 (N-1)): every node holds every group.
func idleRun(o options, done func()) (string, error) {
	base, err := runOnce(params{Groups: 1, Duration: min(3*time.Second, o.idleDuration)}, o.settings, nil)
	done()
	if err != nil {
		return "", fmt.Errorf("base (1 group): %w", err)
	}
	r, err := runOnce(params{Groups: o.idleGroups, Duration: o.idleDuration}, o.settings, nil)
	done()
	if err != nil {
		return "", err
	}
	perGroup := 0.0
	if o.idleGroups > 1 && r.RSS > base.RSS {
		perGroup = float64(r.RSS-base.RSS) / 1024 / float64(numNodes*(o.idleGroups-1))
	}
	return fmt.Sprintf("idle groups=%d seconds=%.0f cpu_pct=%.1f cpu_pct_per_node=%.2f fsyncs/s=%.1f msgs/s=%.1f rss_mb=%.1f base_rss_mb=%.1f kib_per_group_per_node=%.1f load=[%s]\n%s\n",
		o.idleGroups, r.secs(), r.CPUPct, r.CPUPct/numNodes, r.fsyncsPerSec(), r.msgsPerSec(),
		float64(r.RSS)/mib, float64(base.RSS)/mib, perGroup, r.Load, r.memLine()), nil
}

// sampleRSS waits d, taking the members' summed RSS every `every`.
func sampleRSS(ms []member, d, every time.Duration, report func(time.Duration, uint64)) ([]uint64, error) {
	var out []uint64
	start := time.Now()
	t := time.NewTicker(every)
	defer t.Stop()
	end := time.After(d)
	for {
		select {
		case <-end:
			return out, nil
		case <-t.C:
			var sum uint64
			for _, m := range ms {
				v, err := m.rss()
				if err != nil {
					return out, err
				}
				sum += v
			}
			out = append(out, sum)
			report(time.Since(start), sum)
		}
	}
}

// leakVerdict: RSS must level off. The first sixth of the samples (at least one)
// is the warm-up of caches and memtables and is ignored; of the rest, the maximum of
// the last third may exceed the maximum of the first third by at most 10% (and at
// least 16 MiB of slack, for allocator noise).
func leakVerdict(s []uint64) (string, bool) {
	skip := max(1, len(s)/6)
	if len(s)-skip < 6 {
		return fmt.Sprintf("only %d samples, need at least %d", len(s), skip+6), false
	}
	s = s[skip:]
	third := len(s) / 3
	maxOf := func(v []uint64) uint64 {
		var m uint64
		for _, x := range v {
			m = max(m, x)
		}
		return m
	}
	first, last := maxOf(s[:third]), maxOf(s[len(s)-third:])
	limit := max(first+first/10, first+16*mib)
	msg := fmt.Sprintf("max RSS first third %.1f MiB, last third %.1f MiB, limit %.1f MiB",
		float64(first)/mib, float64(last)/mib, float64(limit)/mib)
	return msg, last <= limit
}

// csvOut appends rows to the -out file, with a header when the file is new.
type csvOut struct {
	f *os.File
	w *csv.Writer
}

var csvHeader = []string{"groups", "clients_per_group", "payload", "ops_per_s", "p50_ms", "p99_ms", "errors",
	"rss_mb", "heap_mb", "cpu_pct", "fsyncs_per_s", "msgs_per_s", "fsyncs_per_instance", "cmds_per_instance", "procs", "load", "time"}

func openCSV(path string) (*csvOut, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	c := &csvOut{f: f, w: csv.NewWriter(f)}
	if st, err := f.Stat(); err == nil && st.Size() == 0 {
		_ = c.w.Write(csvHeader)
		c.w.Flush()
	}
	return c, nil
}

func (c *csvOut) write(r result, procs bool) error {
	_ = c.w.Write([]string{
		strconv.Itoa(r.Groups), strconv.Itoa(r.Clients), strconv.Itoa(r.Payload),
		fmt.Sprintf("%.0f", r.OpsPerSec), fmt.Sprintf("%.3f", ms(r.P50)), fmt.Sprintf("%.3f", ms(r.P99)),
		strconv.FormatUint(r.Errs, 10), fmt.Sprintf("%.1f", float64(r.RSS)/mib), fmt.Sprintf("%.1f", float64(r.Heap)/mib),
		fmt.Sprintf("%.1f", r.CPUPct), fmt.Sprintf("%.0f", r.fsyncsPerSec()), fmt.Sprintf("%.0f", r.msgsPerSec()),
		fmt.Sprintf("%.3f", r.fsyncsPerInstance()), fmt.Sprintf("%.2f", r.cmdsPerInstance()),
		strconv.FormatBool(procs), r.Load, time.Now().UTC().Format(time.RFC3339),
	})
	c.w.Flush()
	return c.w.Error()
}

func (c *csvOut) close() { c.f.Close() }

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.WriteHeapProfile(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	// The goroutines still alive show what holds the heap that outlived the runs.
	g, err := os.Create(path + ".goroutines")
	if err != nil {
		return err
	}
	if err := pprof.Lookup("goroutine").WriteTo(g, 1); err != nil {
		g.Close()
		return err
	}
	return g.Close()
}
