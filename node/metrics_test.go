package node

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/multipaxos/engine/ids"
)

// gather scrapes a node's collector and returns each series' value (histograms:
// their sample count), the per-group ones under "name/group".
func gather(t *testing.T, n *Node) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(n.Collector()); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += "/" + l.GetValue()
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[key] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

func TestMetrics(t *testing.T) {
	const groups = 4
	tc := newTestCluster(t, 3, groups)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for g := 0; g < groups; g++ {
		for i := 0; i < 5; i++ {
			if _, err := tc.nodes[1].Propose(ctx, ids.GroupID(g), []byte("x")); err != nil {
				t.Fatal(err)
			}
		}
	}
	tc.waitConverged(10 * time.Second)
	m := gather(t, tc.nodes[1])
	for _, name := range []string{"paxos_instances_chosen_total", "paxos_instances_applied_total",
		"paxos_log_fsyncs_total", "paxos_log_writes_total", "paxos_net_frames_sent_total",
		"paxos_fast_rounds_total", "paxos_master_claims_total", "paxos_master_changes_total"} {
		if m[name] <= 0 {
			t.Errorf("%s = %v, want > 0", name, m[name])
		}
	}
	if got := m["paxos_propose_seconds"]; got != 4*5 {
		t.Errorf("propose latency histogram has %v samples, want 20", got)
	}
	if m["paxos_batch_commands"] == 0 {
		t.Error("no batch sizes observed")
	}
	if m["paxos_groups"] != groups {
		t.Errorf("paxos_groups = %v", m["paxos_groups"])
	}
	masters := 0.0
	for _, n := range tc.nodes {
		masters += gather(t, n)["paxos_masters_here"]
	}
	if masters > groups {
		t.Errorf("%v masters for %d groups", masters, groups)
	}
	if m["paxos_lag_max"] != 0 || m["paxos_without_master"] > groups {
		t.Errorf("lag %v, groups without master %v", m["paxos_lag_max"], m["paxos_without_master"])
	}
}

// TestMetricsRefusalsAndFsync: the refusal counters count ErrValueTooLarge and
// ErrBusy (a group whose queue is at PendingMax because its quorum is gone), the
// fsync histogram has timed the WAL's fsyncs, and paxos_log_failed is 0 on a
// healthy node (TestDiskFaultFailStop checks 1 on a failed one).
func TestMetricsRefusalsAndFsync(t *testing.T) {
	addrs := freeAddrs(t, 3)
	tc := &testCluster{t: t, members: map[ids.NodeID]string{}, dirs: map[ids.NodeID]string{}, groups: 1,
		nodes: map[ids.NodeID]*Node{}, sms: map[ids.NodeID][]*digestSM{}}
	for i, a := range addrs {
		tc.members[ids.NodeID(i+1)] = a
		tc.dirs[ids.NodeID(i+1)] = t.TempDir()
	}
	t.Cleanup(func() {
		for _, n := range tc.nodes {
			_ = n.Stop()
		}
	})
	const pending = 2
	// Only node 1 may be master, so that once alone it keeps proposals in its
	// own queue instead of forwarding them.
	tc.startWith(1, func(o *Options) { o.PendingMax = pending })
	for _, id := range []ids.NodeID{2, 3} {
		tc.startWith(id, func(o *Options) { o.MasterCandidate = func(ids.GroupID) bool { return false } })
	}
	n := tc.nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i, ok := 0, 0; ok < 3 || !n.IsMaster(0); i++ {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := n.Propose(pctx, 0, []byte(fmt.Sprint("x", i)))
		pcancel()
		if err == nil {
			ok++
		} else if ctx.Err() != nil {
			t.Fatalf("no progress through node 1: %v", err)
		}
	}
	if _, err := n.Propose(ctx, 0, make([]byte, 1<<20+1)); !errors.Is(err, ErrValueTooLarge) {
		t.Fatalf("too large: %v", err)
	}

	// Without a quorum nothing is chosen: the first proposal stays in flight,
	// the next ones fill the queue, and the one after them is refused.
	tc.stop(2)
	tc.stop(3)
	var wg sync.WaitGroup
	defer wg.Wait()
	stuck, unstick := context.WithCancel(context.Background())
	defer unstick()
	var busy atomic.Int64 // refused among these (if all queued before one was proposed)
	for i := range pending + 1 {
		wg.Go(func() {
			if _, err := n.Propose(stuck, 0, []byte(fmt.Sprint("stuck", i))); errors.Is(err, ErrBusy) {
				busy.Add(1)
			}
		})
	}
	for {
		st, err := n.GroupStats(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		if st.Queued == pending {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := n.Propose(ctx, 0, []byte("one too many")); !errors.Is(err, ErrBusy) {
		t.Fatalf("full queue: %v, want ErrBusy", err)
	}

	m := gather(t, n)
	if want := float64(1 + busy.Load()); m["paxos_propose_refused_total/busy"] != want || m["paxos_propose_refused_total/too_large"] != 1 {
		t.Errorf("refusals: busy %v, too_large %v; want %v and 1",
			m["paxos_propose_refused_total/busy"], m["paxos_propose_refused_total/too_large"], want)
	}
	if got, syncs := m["paxos_log_fsync_seconds"], n.Stats().Log.Syncs; got == 0 || got > float64(syncs) {
		t.Errorf("%v fsyncs timed, %d counted", got, syncs)
	}
	if m["paxos_log_failed"] != 0 {
		t.Errorf("paxos_log_failed = %v on a healthy node", m["paxos_log_failed"])
	}
}
