package node

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/logstore"
	"github.com/multipaxos/engine/statemachine"
)

// diskFault fails one kind of operation on the WAL files (NNNNNN.log) of one
// node's log store once armed: the disk of that node going bad under it.
type diskFault struct {
	armed atomic.Bool
	hit   func(op errorfs.Op) bool
	cause error
}

func (f *diskFault) fs() vfs.FS {
	return errorfs.Wrap(vfs.Default, errorfs.InjectorFunc(func(op errorfs.Op) error {
		if f.armed.Load() && strings.HasSuffix(op.Path, ".log") && f.hit(op) {
			return f.cause
		}
		return nil
	}))
}

// startWith is testCluster.start with the options edited by edit (nil: none).
func (tc *testCluster) startWith(id ids.NodeID, edit func(*Options)) {
	tc.t.Helper()
	sms := make([]*digestSM, tc.groups)
	opts := Options{
		NodeID: id, Members: tc.members, Groups: tc.groups, DataDir: tc.dirs[id],
		StateMachines: func(g ids.GroupID) statemachine.StateMachine {
			sms[g] = &digestSM{}
			return sms[g]
		},
		Logger:       zaptest.NewLogger(tc.t).Named(fmt.Sprint("n", id)),
		TickInterval: 10 * time.Millisecond, StatusInterval: 200 * time.Millisecond,
		InitialMembers: tc.initial,
	}
	if edit != nil {
		edit(&opts)
	}
	n, err := Start(opts)
	if err != nil {
		tc.t.Fatal(err)
	}
	tc.nodes[id], tc.sms[id] = n, sms
}

// TestDiskFaultFailStop (issue 7 item 6): in a real 3-node cluster (TCP on
// loopback, Pebble on disk), node 1's WAL fsync - or a WAL write, with ENOSPC -
// starts failing while node 1 masters every group. Node 1 must fail-stop: a
// typed error for what was in flight, Failed closed, Err naming the cause, every
// later call refused, an error-level log line, paxos_log_failed = 1. Nodes 2 and
// 3 must go on serving every group under a new master. Then node 1's disk is
// "replaced" (restarted on its data dir with a healthy file system): it rejoins,
// every member converges to the same digests, and no command acknowledged by
// any node, before or after the fault, is lost.
func TestDiskFaultFailStop(t *testing.T) {
	for _, tc := range []struct {
		name  string
		hit   func(op errorfs.Op) bool
		cause error
	}{
		{"fsync", func(op errorfs.Op) bool {
			return op.Kind == errorfs.OpFileSync || op.Kind == errorfs.OpFileSyncData
		}, errorfs.ErrInjected},
		{"enospc", func(op errorfs.Op) bool { return op.Kind == errorfs.OpFileWrite }, syscall.ENOSPC},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runDiskFault(t, &diskFault{hit: tc.hit, cause: tc.cause})
		})
	}
}

func runDiskFault(t *testing.T, fault *diskFault) {
	const groups = 4
	addrs := freeAddrs(t, 3)
	tc := &testCluster{t: t, members: map[ids.NodeID]string{}, dirs: map[ids.NodeID]string{}, groups: groups,
		nodes: map[ids.NodeID]*Node{}, sms: map[ids.NodeID][]*digestSM{}}
	for i, a := range addrs {
		tc.members[ids.NodeID(i+1)] = a
		tc.dirs[ids.NodeID(i+1)] = t.TempDir()
	}
	var nodesMu sync.Mutex // tc.nodes changes when node 1 restarts
	t.Cleanup(func() {
		nodesMu.Lock()
		defer nodesMu.Unlock()
		for _, n := range tc.nodes {
			_ = n.Stop() // node 1's may report its failure
		}
	})
	obsCore, logs := observer.New(zapcore.ErrorLevel)
	tc.startWith(1, func(o *Options) {
		o.logFS = fault.fs()
		o.Logger = zap.New(zapcore.NewTee(zaptest.NewLogger(t).Core(), obsCore)).Named("n1")
	})
	// Until node 1 masters every group, it is the only candidate.
	for _, id := range []ids.NodeID{2, 3} {
		tc.startWith(id, func(o *Options) { o.MasterCandidate = func(ids.GroupID) bool { return false } })
	}

	type ack struct {
		g    ids.GroupID
		cmd  string
		inst ids.InstanceID
	}
	var (
		acks []ack
		seq  int
	)
	propose := func(id ids.NodeID, g ids.GroupID, timeout time.Duration) error {
		seq++
		cmd := fmt.Sprintf("n%d-g%d-%d", id, g, seq)
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		res, err := tc.nodes[id].Propose(ctx, g, []byte(cmd))
		if err == nil {
			acks = append(acks, ack{g, cmd, res.Instance})
		}
		return err
	}
	// retry proposes through id until one succeeds and done (nil: none) holds.
	retry := func(id ids.NodeID, g ids.GroupID, what string, done func() bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			err := propose(id, g, 2*time.Second)
			if err == nil && (done == nil || done()) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("group %d: %s: no success through node %d in 15s (last error %v)", g, what, id, err)
			}
			if err != nil && !isTyped(err) {
				t.Fatalf("group %d: node %d: untyped error %v", g, id, err)
			}
		}
	}

	// Node 1 masters every group, with acknowledged commands in each.
	n1 := tc.nodes[1]
	for g := range ids.GroupID(groups) {
		for range 3 {
			retry(1, g, "before the fault", nil)
		}
		if !n1.IsMaster(g) {
			t.Fatalf("group %d: node 1 proposed and is not master", g)
		}
		for _, id := range []ids.NodeID{2, 3} {
			if err := tc.nodes[id].SetMasterCandidate(g, true); err != nil {
				t.Fatal(err)
			}
		}
	}
	before := len(acks)

	// The disk goes bad. What node 1 had in flight may still be chosen through
	// nodes 2 and 3 (then it is acknowledged, and checked below like the rest);
	// the first write node 1 cannot make durable stops it.
	fault.armed.Store(true)
	for i := 0; ; i++ {
		err := propose(1, 0, 5*time.Second)
		if err != nil {
			if !errors.Is(err, ErrStorage) && !errors.Is(err, ErrStopped) {
				t.Fatalf("node 1 under the fault: %v, want ErrStorage or ErrStopped", err)
			}
			t.Logf("node 1's proposal under the fault: %v", err)
			break
		}
		if i == 20 {
			t.Fatal("node 1 keeps acknowledging under a failing disk")
		}
	}
	select {
	case <-n1.Failed():
	case <-time.After(10 * time.Second):
		t.Fatal("node 1 did not fail-stop")
	}
	cause := n1.Err()
	if !errors.Is(cause, logstore.ErrFatal) || !errors.Is(cause, ErrStorage) || !errors.Is(cause, fault.cause) {
		t.Fatalf("node 1 Err = %v, want ErrStorage and logstore.ErrFatal wrapping %v", cause, fault.cause)
	}
	refused := func() {
		t.Helper()
		for g := range ids.GroupID(groups) {
			if _, err := n1.Propose(context.Background(), g, []byte("after")); !errors.Is(err, ErrStopped) || !errors.Is(err, logstore.ErrFatal) {
				t.Fatalf("group %d: Propose on the failed node: %v, want ErrStopped wrapping logstore.ErrFatal", g, err)
			}
			if err := n1.ReadBarrier(context.Background(), g); !errors.Is(err, ErrStopped) {
				t.Fatalf("group %d: ReadBarrier on the failed node: %v, want ErrStopped", g, err)
			}
		}
	}
	refused()

	// The fail-stop is logged at error level: by the store, once, and by the node
	// (asynchronously, so wait for it).
	deadline := time.Now().Add(5 * time.Second)
	for logs.FilterMessageSnippet("node fail-stopped").Len() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no node fail-stop log line; error lines: %v", logs.All())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := logs.FilterMessage("WAL write or fsync failed; store stopped (fail-stop), restart to recover").Len(); got != 1 {
		t.Fatalf("%d store fail-stop lines, want 1", got)
	}
	if line := logs.FilterMessageSnippet("node fail-stopped").All()[0]; line.Level != zapcore.ErrorLevel ||
		!strings.Contains(fmt.Sprint(line.ContextMap()["error"]), fault.cause.Error()) {
		t.Fatalf("node fail-stop line %+v: want error level naming %q", line, fault.cause)
	}
	if m := gather(t, n1); m["paxos_log_failed"] != 1 {
		t.Fatalf("paxos_log_failed = %v on the failed node", m["paxos_log_failed"])
	}
	if m := gather(t, tc.nodes[2]); m["paxos_log_failed"] != 0 || m["paxos_log_fsync_seconds"] == 0 {
		t.Fatalf("healthy node: paxos_log_failed = %v, %v fsyncs timed", m["paxos_log_failed"], m["paxos_log_fsync_seconds"])
	}

	// Nodes 2 and 3 serve every group node 1 mastered, under a new master.
	for g := range ids.GroupID(groups) {
		for _, id := range []ids.NodeID{2, 3} {
			retry(id, g, "after the fault", func() bool {
				m, _ := tc.nodes[id].Master(g)
				return m != 0 && m != 1
			})
		}
		m, _ := tc.nodes[2].Master(g)
		t.Logf("group %d: master now %d", g, m)
	}
	refused() // still failed: nothing healed it behind the operator's back
	t.Logf("acknowledged %d before the fault, %d after", before, len(acks)-before)

	// Replace the disk: restart node 1 on its data dir with a healthy file
	// system. Stop reports the failure.
	nodesMu.Lock()
	if err := n1.Stop(); !errors.Is(err, logstore.ErrFatal) {
		t.Errorf("Stop of the failed node: %v, want logstore.ErrFatal", err)
	}
	delete(tc.nodes, 1)
	tc.startWith(1, nil)
	nodesMu.Unlock()
	n1 = tc.nodes[1]
	if err := n1.Err(); err != nil {
		t.Fatalf("restarted node 1: Err = %v", err)
	}
	for g := range ids.GroupID(groups) {
		retry(1, g, "after the restart", nil)
		retry(2, g, "after the restart", nil)
	}
	tc.waitConverged(20 * time.Second)
	select {
	case <-n1.Failed():
		t.Fatal("restarted node 1 reports a fail-stop")
	default:
	}

	for _, a := range acks {
		for id := range tc.nodes {
			sm := tc.sms[id][a.g]
			sm.mu.Lock()
			inst, ok := sm.seen[a.cmd]
			sm.mu.Unlock()
			if !ok || inst != a.inst {
				t.Fatalf("acknowledged %q (group %d, instance %d) on node %d: found=%v at %d", a.cmd, a.g, a.inst, id, ok, inst)
			}
		}
	}
	t.Logf("%d acknowledged commands on every member after the rejoin", len(acks))
}

// isTyped reports whether err is one of the errors Propose documents.
func isTyped(err error) bool {
	for _, e := range []error{ErrStopped, ErrCanceled, ErrUnknownOutcome, ErrBusy, ErrStorage, ErrNoMaster, ErrNotMaster} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
