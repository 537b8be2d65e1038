package node

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/multipaxos/engine/ids"
)

// TestFastPathCounts: in steady state a master's instance costs one round trip and
// one fsync per member, and no Prepare (DESIGN 5.3). The counts are structural, not
// timings.
func TestFastPathCounts(t *testing.T) {
	tc := newTestCluster(t, 3, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n1 := tc.nodes[1]
	if _, err := n1.Propose(ctx, 0, []byte("warm")); err != nil { // elects node 1
		t.Fatal(err)
	}
	if !n1.IsMaster(0) {
		t.Fatal("node 1 is not master after proposing")
	}
	before, _ := n1.GroupStats(ctx, 0)
	var syncs0, frames0, prepares0 [4]uint64
	for id, n := range tc.nodes {
		syncs0[id], frames0[id] = n.Stats().Log.Syncs, n.Stats().Transport.FramesSent
		st, err := n.GroupStats(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		prepares0[id] = st.Core.PreparesStarted
	}
	const k = 200
	for i := 0; i < k; i++ {
		if _, err := n1.Propose(ctx, 0, []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	after, _ := n1.GroupStats(ctx, 0)
	inst := float64(after.Next - before.Next)
	for id, n := range tc.nodes { // no member runs phase 1, not only the master
		st, err := n.GroupStats(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		if d := st.Core.PreparesStarted - prepares0[id]; d != 0 {
			t.Fatalf("node %d: %d prepares started in steady state", id, d)
		}
	}
	if inst < k || inst > k+5 {
		t.Fatalf("%v instances for %d sequential proposals", inst, k)
	}
	// At most one fsync per instance on every member. The master and at least
	// one acceptor - a quorum - make about one each; a lagging acceptor may
	// share one fsync between two instances' Accepts (fewer is fine there).
	quorumSyncs := 0
	for id, n := range tc.nodes {
		syncs := float64(n.Stats().Log.Syncs-syncs0[id]) / inst
		frames := float64(n.Stats().Transport.FramesSent-frames0[id]) / inst
		t.Logf("node %d: %.2f fsyncs and %.2f frames sent per instance", id, syncs, frames)
		if syncs > 1.2 {
			t.Errorf("node %d: %.2f fsyncs per instance, want at most 1", id, syncs)
		}
		if syncs >= 0.8 {
			quorumSyncs++
		} else if id == 1 {
			t.Errorf("master: %.2f fsyncs per instance, want 1", syncs)
		}
		// Master: Accept and Chosen to each of two peers; others: one Accepted.
		want := 1.0
		if id == 1 {
			want = 4
		}
		if frames > want+0.5 {
			t.Errorf("node %d: %.2f frames per instance, want %v", id, frames, want)
		}
	}
	if quorumSyncs < 2 {
		t.Errorf("only %d members made about one fsync per instance; a quorum (2) must", quorumSyncs)
	}
}

// TestReadsAndTransfer covers LeaseRead, ReadBarrier, Master and TransferMaster.
func TestReadsAndTransfer(t *testing.T) {
	tc := newTestCluster(t, 3, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := tc.nodes[2].Propose(ctx, 0, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if m, exp := tc.nodes[2].Master(0); m != 2 || time.Until(exp) <= 0 {
		t.Fatalf("master %d until %v", m, exp)
	}
	ran := false
	if err := tc.nodes[2].LeaseRead(ctx, 0, func() error { ran = true; return nil }); err != nil || !ran {
		t.Fatalf("lease read on the master: %v ran=%v", err, ran)
	}
	// Node 1 learns of the master when the claim reaches it (the Chosen is async).
	deadline := time.Now().Add(5 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		err = tc.nodes[1].LeaseRead(ctx, 0, func() error { return nil })
		var nm *NotMasterError
		if errors.As(err, &nm) && nm.Master == 2 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	var nm *NotMasterError
	if !errors.As(err, &nm) || nm.Master != 2 || !errors.Is(err, ErrNotMaster) {
		t.Fatalf("lease read on a follower: %v", err)
	}
	// A write acknowledged on node 2 is visible on node 3 after a read barrier.
	res, err := tc.nodes[2].Propose(ctx, 0, []byte("y"))
	if err != nil {
		t.Fatal(err)
	}
	if err := tc.nodes[3].ReadBarrier(ctx, 0); err != nil {
		t.Fatal(err)
	}
	sm := tc.sms[3][0]
	sm.mu.Lock()
	inst, ok := sm.seen["y"]
	sm.mu.Unlock()
	if !ok || inst != res.Instance {
		t.Fatalf("after the barrier node 3 has y=%v at %d, want %d", ok, inst, res.Instance)
	}
	// Hand mastership to node 3.
	if err := tc.nodes[2].TransferMaster(ctx, 0, 3); err != nil {
		t.Fatal(err)
	}
	for !tc.nodes[3].IsMaster(0) {
		if ctx.Err() != nil {
			t.Fatal("node 3 never became master after the transfer")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if tc.nodes[2].IsMaster(0) {
		t.Fatal("node 2 still master after transferring")
	}
	if _, err := tc.nodes[1].Propose(ctx, 0, []byte("z")); err != nil {
		t.Fatal(err)
	}
}

// TestMasterFailover: node 3 is master of 64 groups under load through nodes 1 and
// 2 and is stopped; every group gets a new master within a few lease lengths and no
// acknowledged write is lost.
func TestMasterFailover(t *testing.T) {
	const groups = 64
	tc := newTestCluster(t, 3, groups)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for g := 0; g < groups; g++ {
		if _, err := tc.nodes[3].Propose(ctx, ids.GroupID(g), []byte("mine")); err != nil {
			t.Fatal(err)
		}
	}
	n1, n2 := tc.nodes[1], tc.nodes[2]
	var (
		mu   sync.Mutex
		acks = map[string]ids.InstanceID{}
		wg   sync.WaitGroup
	)
	load, stopLoad := context.WithCancel(ctx)
	// A client per group: a group elects a new master when work waits in it, so
	// clients that cycled through groups would serialize the failovers.
	for w := 0; w < groups; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; load.Err() == nil; i++ {
				n := []*Node{n1, n2}[(w+i)%2]
				cmd := fmt.Sprintf("w%d-%d", w, i)
				pctx, pcancel := context.WithTimeout(load, 3*time.Second)
				res, err := n.Propose(pctx, ids.GroupID(w), []byte(cmd))
				pcancel()
				if err == nil {
					mu.Lock()
					acks[cmd] = res.Instance
					mu.Unlock()
				}
			}
		}(w)
	}
	time.Sleep(500 * time.Millisecond)
	stopped := time.Now()
	tc.stop(3)
	var failover time.Duration
	firstSeen := map[int]time.Duration{}
	for {
		all := true
		for g := 0; g < groups; g++ {
			if m, _ := n1.Master(ids.GroupID(g)); m == 0 || m == 3 {
				all = false
			} else if _, ok := firstSeen[g]; !ok {
				firstSeen[g] = time.Since(stopped)
			}
		}
		if all {
			failover = time.Since(stopped)
			break
		}
		// A liveness bound (ten leases), not a speed goal: the failover time is
		// logged above and measured by benchmarks.
		if !time.Now().Before(stopped.Add(10 * time.Second)) {
			t.Fatal("not every group has a new master 10 leases after the master stopped")
		}
		time.Sleep(10 * time.Millisecond)
	}
	var fastest, slowest time.Duration = time.Hour, 0
	for _, d := range firstSeen {
		fastest, slowest = min(fastest, d), max(slowest, d)
	}
	t.Logf("new masters seen by node 1 between %v and %v after the stop", fastest, slowest)
	time.Sleep(300 * time.Millisecond)
	stopLoad()
	wg.Wait()
	t.Logf("every group had a new master %v after the old one stopped (lease %v); %d writes acknowledged", failover, time.Second, len(acks))
	tc.waitConverged(20 * time.Second)
	mu.Lock()
	defer mu.Unlock()
	for cmd, inst := range acks {
		for _, id := range []ids.NodeID{1, 2} {
			found := false
			for g := 0; g < groups && !found; g++ {
				sm := tc.sms[id][g]
				sm.mu.Lock()
				at, ok := sm.seen[cmd]
				sm.mu.Unlock()
				found = ok && at == inst
			}
			if !found {
				t.Fatalf("acknowledged %q (instance %d) lost on node %d", cmd, inst, id)
			}
		}
	}
}

// TestIdleGroupsQuiesce: once leases lapse, 4096 idle groups cost no fsync and no
// per-group message: only the node-wide status frame remains.
func TestIdleGroupsQuiesce(t *testing.T) {
	const groups = 4096
	_, nodes := memCluster(t, 3, groups)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for g := 0; g < groups; g += 64 {
		if _, err := nodes[g%3].Propose(ctx, ids.GroupID(g), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(2500 * time.Millisecond) // leases (1 s) lapse; nothing renews them
	var syncs, frames [3]uint64
	for i, n := range nodes {
		syncs[i], frames[i] = n.Stats().Log.Syncs, n.Stats().Transport.FramesSent
	}
	const window = 2 * time.Second
	time.Sleep(window)
	for i, n := range nodes {
		ds, df := n.Stats().Log.Syncs-syncs[i], n.Stats().Transport.FramesSent-frames[i]
		t.Logf("node %d idle for %v: %d fsyncs, %d frames", i+1, window, ds, df)
		if ds != 0 {
			t.Errorf("node %d: %d fsyncs while idle", i+1, ds)
		}
		if df > 4 { // one status frame per peer per 2 s, give or take one period
			t.Errorf("node %d: %d frames while idle", i+1, df)
		}
	}
}
