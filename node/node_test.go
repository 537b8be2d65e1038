package node

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/statemachine"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
)

// gnet keeps a process-wide goroutine pool (ants) started at package init; it is not
// the node's and outlives every Stop by design.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		childMain()
		return
	}
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/panjf2000/ants/v2.(*poolCommon).purgeStaleWorkers"),
		goleak.IgnoreTopFunction("github.com/panjf2000/ants/v2.(*poolCommon).ticktock"),
		goleak.IgnoreTopFunction("github.com/panjf2000/ants/v2.(*goWorker).run.func1"))
}

// digestSM folds every command into a running digest; safe to read from tests.
type digestSM struct {
	mu     sync.Mutex
	next   ids.InstanceID
	digest uint64
	seen   map[string]ids.InstanceID
}

func (s *digestSM) Applied() ids.InstanceID { return 0 }

func (s *digestSM) Execute(inst ids.InstanceID, cmds [][]byte) ([][]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if inst != s.next {
		return nil, fmt.Errorf("executed %d, expected %d", inst, s.next)
	}
	s.next++
	h := fnv.New64a()
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], s.digest)
	h.Write(b[:])
	out := make([][]byte, len(cmds))
	for i, c := range cmds {
		h.Write(c)
		if s.seen == nil {
			s.seen = map[string]ids.InstanceID{}
		}
		s.seen[string(c)] = inst
		out[i] = append([]byte("ok:"), c...)
	}
	s.digest = h.Sum64()
	return out, nil
}

func (s *digestSM) state() (ids.InstanceID, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.next, s.digest
}

// freeAddrs returns n distinct loopback addresses whose ports were free: every
// listener stays open until all are chosen, or the kernel may hand a port out
// twice.
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var addrs []string
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		addrs = append(addrs, l.Addr().String())
	}
	return addrs
}

type testCluster struct {
	t       *testing.T
	initial func(ids.GroupID) ([]ids.NodeID, []ids.NodeID)
	members map[ids.NodeID]string
	dirs    map[ids.NodeID]string
	groups  int
	nodes   map[ids.NodeID]*Node
	sms     map[ids.NodeID][]*digestSM
}

func newTestCluster(t *testing.T, size, groups int) *testCluster {
	return newTestClusterWith(t, size, groups, nil)
}

func newTestClusterWith(t *testing.T, size, groups int, initial func(ids.GroupID) ([]ids.NodeID, []ids.NodeID)) *testCluster {
	addrs := freeAddrs(t, size)
	tc := &testCluster{t: t, initial: initial, members: map[ids.NodeID]string{}, dirs: map[ids.NodeID]string{}, groups: groups,
		nodes: map[ids.NodeID]*Node{}, sms: map[ids.NodeID][]*digestSM{}}
	for i := 0; i < size; i++ {
		id := ids.NodeID(i + 1)
		tc.members[id] = addrs[i]
		tc.dirs[id] = t.TempDir()
	}
	for id := range tc.members {
		tc.start(id)
	}
	t.Cleanup(func() {
		for _, n := range tc.nodes {
			n.Stop()
		}
	})
	return tc
}

func (tc *testCluster) start(id ids.NodeID) {
	tc.t.Helper()
	sms := make([]*digestSM, tc.groups)
	n, err := Start(Options{
		NodeID: id, Members: tc.members, Groups: tc.groups, DataDir: tc.dirs[id],
		StateMachines: func(g ids.GroupID) statemachine.StateMachine {
			sms[g] = &digestSM{}
			return sms[g]
		},
		Logger:       zaptest.NewLogger(tc.t).Named(fmt.Sprint("n", id)),
		TickInterval: 10 * time.Millisecond, StatusInterval: 200 * time.Millisecond,
		InitialMembers: tc.initial,
	})
	if err != nil {
		tc.t.Fatal(err)
	}
	tc.nodes[id], tc.sms[id] = n, sms
}

func (tc *testCluster) stop(id ids.NodeID) {
	if err := tc.nodes[id].Stop(); err != nil {
		tc.t.Fatal(err)
	}
	delete(tc.nodes, id)
}

// waitConverged waits until every node executed the same instances with the same
// digest in every group.
func (tc *testCluster) waitConverged(timeout time.Duration) {
	tc.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		diff := ""
		for g := 0; g < tc.groups && diff == ""; g++ {
			n1, d1 := tc.sms[1][g].state()
			for id := range tc.nodes {
				if n, d := tc.sms[id][g].state(); n != n1 || d != d1 {
					diff = fmt.Sprintf("group %d: node 1 at %d/%x, node %d at %d/%x", g, n1, d1, id, n, d)
					break
				}
			}
		}
		if diff == "" {
			return
		}
		if time.Now().After(deadline) {
			tc.t.Fatalf("no convergence after %v: %s", timeout, diff)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestProposeSingleGroup(t *testing.T) {
	tc := newTestCluster(t, 3, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i := 0; i < 20; i++ {
		res, err := tc.nodes[ids.NodeID(i%3+1)].Propose(ctx, 0, []byte(fmt.Sprint("v", i)))
		if err != nil {
			t.Fatal(err)
		}
		if string(res.Value) != fmt.Sprint("ok:v", i) {
			t.Fatalf("result %q", res.Value)
		}
	}
	tc.waitConverged(10 * time.Second)
}

// TestProposeErrors: each refusal has its exact type. A canceled or expired
// context gives ErrCanceled when the proposal was still queued (group 1: node 1,
// cut off from its peers, cannot get its master claim chosen, so nothing of ours
// is proposed) and ErrUnknownOutcome when it was in an instance (group 0: node 1
// is master with a long lease and puts it into an instance at once, which cannot
// be chosen without the peers). Both wrap the context's error.
func TestProposeErrors(t *testing.T) {
	tc := newClusterWithOptions(t, 3, 2, func(_ ids.NodeID, o *Options) { o.Lease = time.Minute })
	n := tc.nodes[1]
	ctx := context.Background()
	if _, err := n.Propose(ctx, 2, []byte("x")); !errors.Is(err, ErrUnknownGroup) {
		t.Fatalf("unknown group: %v", err)
	}
	if _, err := n.Propose(ctx, 0, make([]byte, 1<<20+1)); !errors.Is(err, ErrValueTooLarge) {
		t.Fatalf("too large: %v", err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	if _, err := n.Propose(wctx, 0, []byte("warm")); err != nil { // elects node 1 in group 0
		t.Fatal(err)
	}
	if !n.IsMaster(0) {
		t.Fatal("node 1 is not master of group 0 after proposing there")
	}
	tc.stop(2)
	tc.stop(3)
	exactly := func(what string, err, want, notWant, ctxErr error) {
		t.Helper()
		if !errors.Is(err, want) || !errors.Is(err, ctxErr) || errors.Is(err, notWant) {
			t.Fatalf("%s: got %v, want %v wrapping %v (and not %v)", what, err, want, ctxErr, notWant)
		}
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err := n.Propose(cctx, 1, []byte("y"))
	exactly("canceled context, never proposed", err, ErrCanceled, ErrUnknownOutcome, context.Canceled)
	dctx, dcancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err = n.Propose(dctx, 1, []byte("z"))
	dcancel()
	exactly("deadline, never proposed", err, ErrCanceled, ErrUnknownOutcome, context.DeadlineExceeded)

	// Group 0: cancel once the proposal is in an instance (the group's count of
	// proposed values moved).
	before, err := n.GroupStats(wctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel = context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := n.Propose(cctx, 0, []byte("in flight"))
		errc <- err
	}()
	for {
		st, err := n.GroupStats(wctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		if st.Proposed > before.Proposed {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	exactly("canceled context, in flight", <-errc, ErrUnknownOutcome, ErrCanceled, context.Canceled)
}

// TestClusterRestartUnderLoad: 3 nodes over TCP with Pebble, 64 groups, proposals
// from many goroutines through every node, so that every node is master of some
// groups. The node that is master of the most groups is stopped mid-load and
// restarted. Every failed proposal fails with a typed error (ErrUnknownOutcome,
// ErrCanceled, ErrStopped or ErrNoMaster, nothing else); every member ends with
// the same per-group digest; and every acknowledged command is executed on every
// member at the instance its proposer reported. The phases wait for progress
// (acknowledgements), not for time.
func TestClusterRestartUnderLoad(t *testing.T) {
	const groups = 64
	tc := newTestCluster(t, 3, groups)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type ackd struct {
		g     ids.GroupID
		via   ids.NodeID
		cmd   string
		inst  ids.InstanceID
		phase int32 // the phase when the proposal was made (0 before the stop)
	}
	var (
		phase   atomic.Int32
		mu      sync.Mutex
		acks    []ackd
		kinds   = map[string]int{} // failures by type
		untyped []error
		failed  atomic.Int64
		wg      sync.WaitGroup
	)
	var nodesMu sync.RWMutex
	nodeOf := func(id ids.NodeID) *Node {
		nodesMu.RLock()
		defer nodesMu.RUnlock()
		return tc.nodes[id]
	}
	ackCount := func(via ids.NodeID) int { // via 0: all
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, a := range acks {
			if via == 0 || a.via == via {
				n++
			}
		}
		return n
	}
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				id := ids.NodeID(1 + (w+i)%3)
				n := nodeOf(id)
				if n == nil { // stopped: its callers go to the next node
					id = id%3 + 1
					n = nodeOf(id)
				}
				g := ids.GroupID((w*7 + i) % groups)
				cmd := fmt.Sprintf("w%d-%d", w, i)
				ph := phase.Load()
				pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
				res, err := n.Propose(pctx, g, []byte(cmd))
				pcancel()
				if err != nil {
					failed.Add(1)
				}
				mu.Lock()
				switch {
				case err == nil:
					acks = append(acks, ackd{g, id, cmd, res.Instance, ph})
				case errors.Is(err, ErrStopped):
					kinds["stopped"]++
				case errors.Is(err, ErrUnknownOutcome):
					kinds["unknown outcome"]++
				case errors.Is(err, ErrCanceled):
					kinds["canceled"]++
				case errors.Is(err, ErrNoMaster):
					kinds["no master"]++
				default:
					untyped = append(untyped, err)
				}
				mu.Unlock()
			}
		}(w)
	}
	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("no progress: %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// Load until every node is master of some group; pick the one with the most.
	var victim ids.NodeID
	var mastered map[ids.NodeID]int
	var masterOf map[ids.NodeID][]ids.GroupID
	waitUntil("every node master of a group, 300 acknowledged", func() bool {
		mastered, masterOf = map[ids.NodeID]int{}, map[ids.NodeID][]ids.GroupID{}
		for id, n := range tc.nodes {
			for g := 0; g < groups; g++ {
				if n.IsMaster(ids.GroupID(g)) {
					mastered[id]++
					masterOf[id] = append(masterOf[id], ids.GroupID(g))
				}
			}
		}
		return len(mastered) == 3 && ackCount(0) >= 300
	})
	for id, k := range mastered {
		if victim == 0 || k > mastered[victim] || (k == mastered[victim] && id < victim) {
			victim = id
		}
	}
	t.Logf("groups mastered before the stop: %v; stopping node %d", mastered, victim)

	nodesMu.Lock()
	n := tc.nodes[victim]
	delete(tc.nodes, victim)
	nodesMu.Unlock()
	if err := n.Stop(); err != nil {
		t.Fatal(err)
	}
	// Its groups are taken over once their lease runs out: wait for commands
	// acknowledged in every one of them without it.
	phase.Store(1)
	stoppedAt := ackCount(0)
	waitUntil("progress in every group the stopped node was master of", func() bool {
		mu.Lock()
		defer mu.Unlock()
		served := map[ids.GroupID]bool{}
		for _, a := range acks {
			if a.phase >= 1 { // proposed after the stop
				served[a.g] = true
			}
		}
		for _, g := range masterOf[victim] {
			if !served[g] {
				return false
			}
		}
		return len(acks) >= stoppedAt+300
	})
	nodesMu.Lock()
	tc.start(victim)
	nodesMu.Unlock()
	viaVictim := ackCount(victim)
	waitUntil("100 acknowledged through the restarted node", func() bool { return ackCount(victim) >= viaVictim+100 })
	cancel()
	wg.Wait()
	tc.waitConverged(30 * time.Second)

	mu.Lock()
	defer mu.Unlock()
	if len(untyped) > 0 {
		t.Fatalf("%d proposals failed with an untyped error, e.g. %v", len(untyped), untyped[0])
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
	var writes, syncs uint64
	for _, n := range tc.nodes {
		st := n.Stats().Log
		writes += st.Writes
		syncs += st.Syncs
	}
	t.Logf("acknowledged %d, failed %d %v; log writes %d, fsyncs %d (%.1f writes per fsync)",
		len(acks), failed.Load(), kinds, writes, syncs, float64(writes)/float64(max(syncs, 1)))
}
