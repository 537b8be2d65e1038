package node

import (
	"context"
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
