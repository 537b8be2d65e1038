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

func TestProposeErrors(t *testing.T) {
	tc := newTestCluster(t, 3, 2)
	n := tc.nodes[1]
	ctx := context.Background()
	if _, err := n.Propose(ctx, 2, []byte("x")); !errors.Is(err, ErrUnknownGroup) {
		t.Fatalf("unknown group: %v", err)
	}
	if _, err := n.Propose(ctx, 0, make([]byte, 1<<20+1)); !errors.Is(err, ErrValueTooLarge) {
		t.Fatalf("too large: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err := n.Propose(cctx, 0, []byte("y"))
	if !errors.Is(err, context.Canceled) || !(errors.Is(err, ErrCanceled) || errors.Is(err, ErrUnknownOutcome)) {
		t.Fatalf("canceled context: %v", err)
	}
}

// TestClusterRestartUnderLoad: 3 nodes over TCP with Pebble, 64 groups, proposals
// from many goroutines; one node is stopped and restarted mid-load. Every member
// ends with the same per-group digest and every acknowledged command is executed
// everywhere at the instance its proposer reported.
func TestClusterRestartUnderLoad(t *testing.T) {
	const groups = 64
	tc := newTestCluster(t, 3, groups)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type ackd struct {
		g    ids.GroupID
		cmd  string
		inst ids.InstanceID
	}
	var (
		mu    sync.Mutex
		acks  []ackd
		fails atomic.Int64
		wg    sync.WaitGroup
	)
	var nodesMu sync.RWMutex
	nodeOf := func(id ids.NodeID) *Node {
		nodesMu.RLock()
		defer nodesMu.RUnlock()
		return tc.nodes[id]
	}
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				id := ids.NodeID(1 + (w+i)%2) // nodes 1 and 2 take load; node 3 restarts
				n := nodeOf(id)
				g := ids.GroupID((w*7 + i) % groups)
				cmd := fmt.Sprintf("w%d-%d", w, i)
				pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
				res, err := n.Propose(pctx, g, []byte(cmd))
				pcancel()
				if err != nil {
					fails.Add(1)
					continue
				}
				mu.Lock()
				acks = append(acks, ackd{g, cmd, res.Instance})
				mu.Unlock()
			}
		}(w)
	}
	time.Sleep(1 * time.Second)
	nodesMu.Lock()
	tc.stop(3)
	nodesMu.Unlock()
	time.Sleep(1 * time.Second)
	nodesMu.Lock()
	tc.start(3)
	nodesMu.Unlock()
	time.Sleep(1 * time.Second)
	cancel()
	wg.Wait()
	tc.waitConverged(30 * time.Second)

	mu.Lock()
	defer mu.Unlock()
	if len(acks) == 0 {
		t.Fatal("no proposal was acknowledged")
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
	t.Logf("acknowledged %d, failed %d; log writes %d, fsyncs %d (%.1f writes per fsync)",
		len(acks), fails.Load(), writes, syncs, float64(writes)/float64(max(syncs, 1)))
}
