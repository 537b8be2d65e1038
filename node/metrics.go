package node

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/multipaxos/engine/group"
	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/logstore"
)

// Metrics of a node, for Prometheus. Counters and gauges are read from the node's
// and its groups' Stats at scrape time (a scrape asks every group for its counters
// in the group's own context, so it costs one small message per group); the two
// histograms are filled as proposals complete and instances are proposed.
//
// Every group-level metric is the sum (or, for gauges where a sum means nothing,
// the maximum) over the node's groups; with Options.MetricsPerGroup they are also
// exported per group with a "group" label, which is 10-20 series per group.
type metrics struct {
	proposeLatency prometheus.Histogram
	batchSize      prometheus.Histogram
	// refused counts proposals refused at once, by reason; the two children
	// are its only label values.
	refused         *prometheus.CounterVec
	refusedBusy     prometheus.Counter
	refusedTooLarge prometheus.Counter
}

// noteProposeError counts a Propose error that is a refusal (back-pressure).
func (m *metrics) noteProposeError(err error) {
	if err != nil && errors.Is(err, ErrBusy) {
		m.refusedBusy.Inc()
	}
}

func newMetrics() *metrics {
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "paxos", Name: "propose_refused_total",
		Help: "Proposals refused at once, by reason: busy (the group's queue was at PendingMax, ErrBusy), " +
			"too_large (over ValueBytesMax, ErrValueTooLarge).",
	}, []string{"reason"})
	return &metrics{
		refused:         refused,
		refusedBusy:     refused.WithLabelValues("busy"),
		refusedTooLarge: refused.WithLabelValues("too_large"),
		proposeLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "paxos", Name: "propose_seconds",
			Help:    "Time from Propose to the command executed on this node (successful proposals).",
			Buckets: prometheus.ExponentialBuckets(100e-6, 2, 16), // 0.1 ms .. 3.3 s
		}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "paxos", Name: "batch_commands",
			Help:    "Commands per instance value proposed by this node.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 12), // 1 .. 2048
		}),
	}
}

// Collector returns the node's metrics as a prometheus.Collector; register it
// with a prometheus.Registry and serve that registry (promhttp).
func (n *Node) Collector() prometheus.Collector { return (*collector)(n) }

type collector Node

var (
	nodeDescs = map[string]*prometheus.Desc{}
	groupDesc = map[string]*prometheus.Desc{}
)

func desc(m map[string]*prometheus.Desc, name, help string, labels ...string) *prometheus.Desc {
	d := prometheus.NewDesc("paxos_"+name, help, labels, nil)
	m[name] = d
	return d
}

// The node-wide series: the log store's and the transport's counters.
var (
	descLogBatches   = desc(nodeDescs, "log_batches_total", "Storage batches committed (all groups).")
	descLogWrites    = desc(nodeDescs, "log_writes_total", "Group writes committed (several per batch under group commit).")
	descLogSyncs     = desc(nodeDescs, "log_fsyncs_total", "WAL fsyncs.")
	descLogBytes     = desc(nodeDescs, "log_bytes_total", "Bytes committed to the log.")
	descFramesSent   = desc(nodeDescs, "net_frames_sent_total", "Frames handed to peer connections.")
	descBytesSent    = desc(nodeDescs, "net_bytes_sent_total", "Bytes sent to peers.")
	descFramesRecv   = desc(nodeDescs, "net_frames_received_total", "Frames received from peers.")
	descBytesRecv    = desc(nodeDescs, "net_bytes_received_total", "Bytes received from peers.")
	descFramesDrop   = desc(nodeDescs, "net_frames_dropped_total", "Frames dropped, by reason.", "reason")
	descConns        = desc(nodeDescs, "net_connections_total", "Peer connection events, by event.", "event")
	descDecodeErrors = desc(nodeDescs, "net_decode_errors_total", "Frames that failed a check (each closed its connection).")
	descGroups       = desc(nodeDescs, "groups", "Groups on this node.")
	descLogFailed    = desc(nodeDescs, "log_failed", "1 once the log store has fail-stopped (a WAL write or fsync failed): "+
		"the node refuses all work until the process restarts.")
	descSyncSeconds = desc(nodeDescs, "log_fsync_seconds", "Duration of each WAL fsync, timed at the file system.")
)

// groupCounter and groupGauge name a group-level series and how to read it.
type groupSeries struct {
	desc    *prometheus.Desc
	perG    *prometheus.Desc // with a group label
	gauge   bool
	useMax  bool
	extract func(*group.Stats) float64
}

func series(name, help string, gauge, useMax bool, extract func(*group.Stats) float64) groupSeries {
	return groupSeries{
		desc:    desc(groupDesc, name, help),
		perG:    prometheus.NewDesc("paxos_group_"+name, help+" Per group.", []string{"group"}, nil),
		gauge:   gauge,
		useMax:  useMax,
		extract: extract,
	}
}

var groupSeriesList = []groupSeries{
	series("instances_chosen_total", "Instances known chosen (sum of every group's Next).", false, false,
		func(s *group.Stats) float64 { return float64(s.Next) }),
	series("instances_applied_total", "Instances executed by the state machine.", false, false,
		func(s *group.Stats) float64 { return float64(s.Applied) }),
	series("proposals_total", "Instance values this node proposed.", false, false,
		func(s *group.Stats) float64 { return float64(s.Proposed) }),
	series("commands_total", "This node's own commands executed.", false, false,
		func(s *group.Stats) float64 { return float64(s.Commands) }),
	series("forwarded_total", "Commands forwarded to another member's master.", false, false,
		func(s *group.Stats) float64 { return float64(s.Forwarded) }),
	series("prepare_rounds_total", "Phase 1 rounds begun (elections, takeovers, lost fast paths).", false, false,
		func(s *group.Stats) float64 { return float64(s.Core.PreparesStarted) }),
	series("fast_rounds_total", "Phase 2 rounds begun without phase 1 (the Multi-Paxos fast path).", false, false,
		func(s *group.Stats) float64 { return float64(s.Core.FastAccepts) }),
	series("rejections_total", "Rejections this node's proposers received.", false, false,
		func(s *group.Stats) float64 { return float64(s.Core.Rejections) }),
	series("master_claims_total", "Master claims this node proposed (elections and renewals).", false, false,
		func(s *group.Stats) float64 { return float64(s.MasterClaims) }),
	series("master_changes_total", "Executed claims that changed the master.", false, false,
		func(s *group.Stats) float64 { return float64(s.MasterChanges) }),
	series("synced_writes_total", "Storage batches that waited for an fsync.", false, false,
		func(s *group.Stats) float64 { return float64(s.SyncedWrites) }),
	series("lazy_writes_total", "Storage batches written without fsync (chosen marks, learned values).", false, false,
		func(s *group.Stats) float64 { return float64(s.LazyWrites) }),
	series("apply_errors_total", "State machine Execute errors (the group stalls and retries).", false, false,
		func(s *group.Stats) float64 { return float64(s.ApplyErrors) }),
	series("learned_total", "Instances learned from a teacher.", false, false,
		func(s *group.Stats) float64 { return float64(s.Core.Learned) }),
	series("taught_values_total", "Values sent to learners (resends included).", false, false,
		func(s *group.Stats) float64 { return float64(s.Teacher.Values) }),
	series("taught_bytes_total", "Value bytes sent to learners.", false, false,
		func(s *group.Stats) float64 { return float64(s.Teacher.Bytes) }),
	series("teach_resends_total", "Teaching streams that went back to the last ack.", false, false,
		func(s *group.Stats) float64 { return float64(s.Teacher.Resends) }),
	series("images_total", "Checkpoint images made or installed.", false, false,
		func(s *group.Stats) float64 { return float64(s.Images) }),
	series("trims_total", "Log trims.", false, false,
		func(s *group.Stats) float64 { return float64(s.Trims) }),
	series("image_installs_total", "Checkpoint images received from a peer and installed.", false, false,
		func(s *group.Stats) float64 { return float64(s.Installs) }),
	series("image_chunks_sent_total", "Checkpoint chunks sent to learners.", false, false,
		func(s *group.Stats) float64 { return float64(s.ChunksSent) }),
	series("image_chunks_received_total", "Checkpoint chunks received.", false, false,
		func(s *group.Stats) float64 { return float64(s.ChunksReceived) }),
	series("queued_max", "Proposals waiting for an instance, in the group with the most.", true, true,
		func(s *group.Stats) float64 { return float64(s.Queued) }),
	series("lag_max", "Instances behind the most advanced member, in the group furthest behind (catch-up progress).", true, true,
		func(s *group.Stats) float64 {
			if s.HighestSeen > s.Next {
				return float64(s.HighestSeen - s.Next)
			}
			return 0
		}),
	series("retained_instances_max", "Instances kept in the log, in the group that keeps the most.", true, true,
		func(s *group.Stats) float64 { return float64(s.Next - min(s.Next, s.MinRetained)) }),
	series("masters_here", "Groups whose master is this node.", true, false,
		func(s *group.Stats) float64 { return b2f(s.IsMaster) }),
	series("without_master", "Groups in which this node sees no valid master.", true, false,
		func(s *group.Stats) float64 { return b2f(s.Master == 0) }),
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range nodeDescs {
		ch <- d
	}
	for _, s := range groupSeriesList {
		ch <- s.desc
		if c.opts.MetricsPerGroup {
			ch <- s.perG
		}
	}
	c.metrics.proposeLatency.Describe(ch)
	c.metrics.batchSize.Describe(ch)
	c.metrics.refused.Describe(ch)
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	n := (*Node)(c)
	st := n.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(descLogBatches, st.Log.Batches)
	counter(descLogWrites, st.Log.Writes)
	counter(descLogSyncs, st.Log.Syncs)
	counter(descLogBytes, st.Log.Bytes)
	counter(descFramesSent, st.Transport.FramesSent)
	counter(descBytesSent, st.Transport.BytesSent)
	counter(descFramesRecv, st.Transport.FramesReceived)
	counter(descBytesRecv, st.Transport.BytesReceived)
	d := st.Transport.Dropped
	for reason, v := range map[string]uint64{"queue_full": d.QueueFull, "unreachable": d.Unreachable,
		"unknown_peer": d.UnknownPeer, "too_large": d.TooLarge, "closed": d.Closed, "lost": d.Lost} {
		counter(descFramesDrop, v, reason)
	}
	for event, v := range map[string]uint64{"opened": st.Transport.ConnsOpened, "refused": st.Transport.ConnsRefused,
		"auth_failed": st.Transport.AuthFailures, "closed": st.Transport.ConnsClosed, "dial_failed": st.Transport.DialFailures} {
		counter(descConns, v, event)
	}
	counter(descDecodeErrors, st.Transport.DecodeErrors)
	ch <- prometheus.MustNewConstMetric(descGroups, prometheus.GaugeValue, float64(len(n.groups)))
	ch <- prometheus.MustNewConstMetric(descLogFailed, prometheus.GaugeValue, b2f(n.store.Err() != nil))
	ch <- syncHistogram(n.store.SyncLatency())
	n.metrics.refused.Collect(ch)

	agg := make([]float64, len(groupSeriesList))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for g := range n.groups {
		gs, err := n.GroupStats(ctx, ids.GroupID(g))
		if err != nil {
			return // stopped or too slow: a partial scrape would look like counters going back
		}
		for i, s := range groupSeriesList {
			v := s.extract(&gs)
			if s.useMax {
				agg[i] = max(agg[i], v)
			} else {
				agg[i] += v
			}
			if n.opts.MetricsPerGroup {
				typ := prometheus.CounterValue
				if s.gauge {
					typ = prometheus.GaugeValue
				}
				ch <- prometheus.MustNewConstMetric(s.perG, typ, v, strconv.Itoa(g))
			}
		}
	}
	for i, s := range groupSeriesList {
		typ := prometheus.CounterValue
		if s.gauge {
			typ = prometheus.GaugeValue
		}
		ch <- prometheus.MustNewConstMetric(s.desc, typ, agg[i])
	}
	n.metrics.proposeLatency.Collect(ch)
	n.metrics.batchSize.Collect(ch)
}

// syncHistogram is the log store's fsync latencies as a Prometheus histogram.
func syncHistogram(l logstore.SyncLatency) prometheus.Metric {
	buckets := make(map[float64]uint64, len(l.Cumulative))
	for i, c := range l.Cumulative {
		buckets[logstore.SyncLatencyBounds[i].Seconds()] = c
	}
	return prometheus.MustNewConstHistogram(descSyncSeconds, l.Count, l.Sum.Seconds(), buckets)
}
