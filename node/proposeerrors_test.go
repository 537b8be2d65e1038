package node

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/netio"
	"github.com/multipaxos/engine/statemachine"
	"go.uber.org/zap/zaptest"
)

// audit2bMemCluster starts size nodes on an in-memory network delivering in real
// time, each with its options edited by edit (nil: none).
func audit2bMemCluster(t *testing.T, size, groups int, edit func(*Options)) (*netio.MemNetwork, []*Node) {
	t.Helper()
	net := netio.NewMemNetwork(1)
	net.Start()
	members := map[ids.NodeID]string{}
	for i := 1; i <= size; i++ {
		members[ids.NodeID(i)] = fmt.Sprint("mem:", i)
	}
	var nodes []*Node
	t.Cleanup(func() {
		for _, n := range nodes {
			_ = n.Stop()
		}
		_ = net.Close()
	})
	for i := 1; i <= size; i++ {
		id := ids.NodeID(i)
		o := Options{
			NodeID: id, Members: members, Groups: groups, DataDir: t.TempDir(),
			StateMachines: func(ids.GroupID) statemachine.StateMachine { return &digestSM{} },
			Transport:     func(h netio.Handler) (netio.Transport, error) { return net.Endpoint(id, h), nil },
			Logger:        zaptest.NewLogger(t).Named(fmt.Sprint("n", id)),
			TickInterval:  10 * time.Millisecond,
		}
		if edit != nil {
			edit(&o)
		}
		n, err := Start(o)
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	return net, nodes
}

// TestProposeDeadlineTyped: a proposal whose context deadline passes while
// it is in an instance that cannot be chosen (its master is cut off from every
// peer) fails with ErrUnknownOutcome wrapping context.DeadlineExceeded; one that
// was never proposed (no master reachable: the cut-off node's own master claim
// cannot be chosen, so nothing else of its is proposed) fails with ErrCanceled
// wrapping context.DeadlineExceeded. Neither is the other.
func TestProposeDeadlineTyped(t *testing.T) {
	// A long lease: node 1 stays master of group 0 (by its own clock) for the whole
	// test, so it proposes at once and never needs a renewal claim first.
	net, nodes := audit2bMemCluster(t, 3, 2, func(o *Options) { o.Lease = time.Minute })
	n1 := nodes[0]
	deadline := func(d time.Duration, g ids.GroupID, cmd string) error {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		_, err := n1.Propose(ctx, g, []byte(cmd))
		return err
	}

	// Never proposed: group 1 has no master; node 1, cut off, claims mastership
	// and that claim is all it can put into an instance.
	net.Isolate(1)
	err := deadline(300*time.Millisecond, 1, "no master")
	if !errors.Is(err, ErrCanceled) || !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrUnknownOutcome) {
		t.Fatalf("never proposed: %v, want ErrCanceled wrapping context.DeadlineExceeded", err)
	}
	net.Rejoin(1)

	// In flight: node 1 becomes master of group 0, then is cut off.
	if err := deadline(20*time.Second, 0, "warm"); err != nil {
		t.Fatal(err)
	}
	if !n1.IsMaster(0) {
		t.Fatal("node 1 is not master of group 0 after proposing there")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	before, err := n1.GroupStats(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	net.Isolate(1)
	err = deadline(300*time.Millisecond, 0, "in flight")
	if !errors.Is(err, ErrUnknownOutcome) || !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrCanceled) {
		t.Fatalf("in flight: %v, want ErrUnknownOutcome wrapping context.DeadlineExceeded", err)
	}
	after, err := n1.GroupStats(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if after.Proposed != before.Proposed+1 {
		t.Fatalf("node 1 proposed %d values in group 0 while cut off, want 1 (the one that timed out)", after.Proposed-before.Proposed)
	}
	if after.Next != before.Next {
		t.Fatalf("group 0 moved from instance %d to %d on node 1 while it was cut off", before.Next, after.Next)
	}
	net.Rejoin(1)
}
