package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/node"
)

// settings are the knobs shared by every run of one invocation.
type settings struct {
	dir          string        // parent of the runs' temp data dirs
	procs        bool          // three replica processes instead of one process
	batchCount   int           // node.Options.BatchCountMax (0 = default)
	batchBytes   int           // node.Options.BatchBytesMax (0 = default)
	timeout      time.Duration // per-proposal timeout
	setupTimeout time.Duration
	cpuProfile   string // -procs: each child writes <cpuProfile>.node<i>
	memProfile   string // in-process: heap at the end of the last window (.live) and after it stopped
	verbose      bool
}

// params is one run: G groups x C clients of P-byte proposals for D after W.
// Clients == 0 is an idle run (no load at all during the window).
type params struct {
	Groups, Clients, Payload int
	Duration, Warmup         time.Duration
}

// result is one run's aggregate.
type result struct {
	params
	Ops        uint64
	Errs       uint64
	OpsPerSec  float64
	P50, P99   time.Duration
	Elapsed    time.Duration // mean window length over the members
	CPUPct     float64       // CPU time of all benchmark processes over the window, % of one core
	Syncs      uint64        // WAL fsyncs of all three nodes in the window
	LogWrites  uint64
	Frames     uint64 // frames sent by all three nodes
	NetWrites  uint64 // socket writes of all three nodes
	Instances  uint64 // instance values proposed (by every group's proposer)
	NotMaster  int    // groups whose proposer was not their master when the window opened
	RSS, Heap  uint64 // summed over processes
	Load       string // load average at the end of the window
	ErrKinds   []string
	RSSSamples []uint64 // -leak: summed RSS every sample interval
}

func (r result) line() string {
	return fmt.Sprintf("groups=%d clients_per_group=%d payload=%d ops/s=%.0f p50_ms=%.3f p99_ms=%.3f errors=%d",
		r.Groups, r.Clients, r.Payload, r.OpsPerSec, ms(r.P50), ms(r.P99), r.Errs)
}

func (r result) memLine() string {
	return fmt.Sprintf("mem rss_mb=%.1f heap_mb=%.1f", float64(r.RSS)/mib, float64(r.Heap)/mib)
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

func (r result) secs() float64 { return r.Elapsed.Seconds() }

func (r result) fsyncsPerSec() float64 { return perSec(r.Syncs, r.Elapsed) }
func (r result) msgsPerSec() float64   { return perSec(r.Frames, r.Elapsed) }

// fsyncsPerInstance: the fsyncs of all three nodes per instance chosen; a
// steady-state instance on the fast path needs one per member (3), and group
// commit across groups brings it below that.
func (r result) fsyncsPerInstance() float64 { return ratio(r.Syncs, r.Instances) }

// cmdsPerInstance is the batching factor of the proposers.
func (r result) cmdsPerInstance() float64 { return ratio(r.Ops, r.Instances) }

func perSec(n uint64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

func ratio(a, b uint64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// currentDir is the data dir of the run in progress, removed on SIGINT.
var currentDir atomic.Value

// leakSampler, when set, replaces the plain sleep of the window: it is called with
// the members and the window length and returns the RSS samples it took.
type leakSampler func(ms []member, d time.Duration) ([]uint64, error)

// runOnce starts a fresh cluster, runs p on it and tears it down.
func runOnce(p params, s settings, sample leakSampler) (res result, err error) {
	res.params = p
	runtime.GC()
	debug.FreeOSMemory() // the previous run's garbage must not count in this run's RSS
	dir, err := os.MkdirTemp(s.dir, "paxosbench-")
	if err != nil {
		return res, err
	}
	currentDir.Store(dir)
	defer func() {
		os.RemoveAll(dir)
		currentDir.Store("")
	}()
	addrs, err := freeAddrs(numNodes)
	if err != nil {
		return res, err
	}
	spec := clusterSpec{Members: map[ids.NodeID]string{}, Groups: p.Groups, Dir: dir,
		BatchCount: s.batchCount, BatchBytes: s.batchBytes}
	for i, a := range addrs {
		spec.Members[ids.NodeID(i+1)] = a
	}

	var members []member
	defer func() {
		var errs []error
		for _, m := range members {
			errs = append(errs, m.close())
		}
		if cerr := errors.Join(errs...); cerr != nil && err == nil {
			err = fmt.Errorf("stop: %w", cerr)
		}
	}()
	t0 := time.Now()
	if s.procs {
		ms := make([]member, numNodes)
		err := each(numNodes, func(i int) error {
			prof := ""
			if s.cpuProfile != "" {
				prof = fmt.Sprintf("%s.node%d", s.cpuProfile, i+1)
			}
			pm, err := startProcMember(childSpec{Cluster: spec, NodeID: ids.NodeID(i + 1), Clients: p.Clients,
				Payload: p.Payload, TimeoutNs: int64(s.timeout), CPUProfile: prof})
			if err == nil {
				ms[i] = pm
			}
			return err
		})
		for _, m := range ms {
			if m != nil {
				members = append(members, m)
			}
		}
		if err != nil {
			return res, err
		}
	} else {
		nodes := map[ids.NodeID]*node.Node{}
		var errs []error
		for id := ids.NodeID(1); id <= numNodes; id++ {
			n, err := startNode(spec, id)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			nodes[id] = n
		}
		members = append(members, newLocalMember(nodes, p.Groups, p.Clients, p.Payload, s.timeout))
		if err := errors.Join(errs...); err != nil {
			return res, err
		}
	}
	all := func(f func(m member) error) error {
		return each(len(members), func(i int) error { return f(members[i]) })
	}
	if err := all(func(m member) error { return m.setup(s.setupTimeout) }); err != nil {
		return res, err
	}
	if s.verbose {
		fmt.Fprintf(os.Stderr, "# %dx%dx%d: setup %v (dir %s)\n", p.Groups, p.Clients, p.Payload,
			time.Since(t0).Round(time.Millisecond), dir)
	}
	if err := all(func(m member) error { return m.start() }); err != nil {
		return res, err
	}
	time.Sleep(p.Warmup)
	if err := all(func(m member) error { return m.measure() }); err != nil {
		return res, err
	}
	if sample != nil {
		res.RSSSamples, err = sample(members, p.Duration)
		if err != nil {
			return res, err
		}
	} else {
		time.Sleep(p.Duration)
	}
	if s.memProfile != "" && !s.procs {
		// The live heap of the cluster under load, overwritten by each run: what
		// the last run held at the end of its window.
		if err := writeHeapProfile(s.memProfile + ".live"); err != nil {
			return res, err
		}
	}
	parts := make([]partial, len(members))
	if err := each(len(members), func(i int) (err error) {
		parts[i], err = members[i].stop()
		return err
	}); err != nil {
		return res, err
	}
	res.Load = loadAvg()
	aggregate(&res, parts)
	return res, nil
}

func aggregate(res *result, parts []partial) {
	h := &Histogram{}
	var elapsed, cpu time.Duration
	kinds := map[string]bool{}
	for _, p := range parts {
		res.Ops += p.Ops
		res.Errs += p.Errs
		if p.ElapsedNs > 0 {
			res.OpsPerSec += float64(p.Ops) / time.Duration(p.ElapsedNs).Seconds()
		}
		elapsed += time.Duration(p.ElapsedNs)
		cpu += time.Duration(p.CPUNs)
		res.Syncs += p.Syncs
		res.LogWrites += p.LogWrites
		res.Frames += p.Frames
		res.NetWrites += p.NetWrites
		res.Instances += p.Instances
		res.NotMaster += p.NotMaster
		res.RSS += p.RSS
		res.Heap += p.Heap
		h.AddSparse(p.Hist)
		for _, k := range p.ErrKinds {
			kinds[k] = true
		}
	}
	if len(parts) > 0 {
		res.Elapsed = elapsed / time.Duration(len(parts))
	}
	if res.Elapsed > 0 {
		res.CPUPct = 100 * cpu.Seconds() / res.Elapsed.Seconds()
	}
	res.P50, res.P99 = h.Quantile(0.50), h.Quantile(0.99)
	for k := range kinds {
		res.ErrKinds = append(res.ErrKinds, k)
	}
}

// each runs f(0..n-1) concurrently and joins the errors.
func each(n int, f func(i int) error) error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs[i] = f(i)
		}(i)
	}
	wg.Wait()
	return errors.Join(errs...)
}

// dataDirBase is where the temp dirs go: s.dir, or $TMPDIR.
func dataDirBase(dir string) string {
	if dir != "" {
		return dir
	}
	return filepath.Clean(os.TempDir())
}
