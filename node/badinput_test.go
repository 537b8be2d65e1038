package node

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/instance"
	"github.com/multipaxos/engine/netio"
	"github.com/multipaxos/engine/statemachine"
	"go.uber.org/zap/zaptest"
)

// memCluster starts size nodes on an in-memory network delivering in real time.
func memCluster(t *testing.T, size, groups int) (*netio.MemNetwork, []*Node) {
	t.Helper()
	net := netio.NewMemNetwork(1)
	net.Start()
	members := map[ids.NodeID]string{}
	for i := 1; i <= size; i++ {
		members[ids.NodeID(i)] = fmt.Sprint("mem:", i)
	}
	var nodes []*Node
	for i := 1; i <= size; i++ {
		id := ids.NodeID(i)
		n, err := Start(Options{
			NodeID: id, Members: members, Groups: groups, DataDir: t.TempDir(),
			StateMachines: func(ids.GroupID) statemachine.StateMachine { return &digestSM{} },
			Transport:     func(h netio.Handler) (netio.Transport, error) { return net.Endpoint(id, h), nil },
			Logger:        zaptest.NewLogger(t).Named(fmt.Sprint("n", id)),
		})
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	t.Cleanup(func() {
		for _, n := range nodes {
			n.Stop()
		}
		net.Close()
	})
	return net, nodes
}

// TestBadInputIsDropped: frames for an unknown group, of an unknown type, with a
// garbled or truncated body, or from a non-member are dropped with a log line; the
// node keeps serving.
func TestBadInputIsDropped(t *testing.T) {
	net, nodes := memCluster(t, 3, 2)
	rogue := net.Endpoint(99, func(ids.NodeID, ids.GroupID, uint8, []byte) {})
	c := instance.NewCodec()
	good := append([]byte(nil), c.Encode(&instance.Message{Type: instance.MsgPrepare, Ballot: ids.Ballot{Number: 1 << 40, Node: 99}})...)
	for _, f := range []struct {
		g    ids.GroupID
		typ  uint8
		body []byte
	}{
		{7, uint8(instance.MsgPrepare), good},        // unknown group
		{0, 200, good},                               // unknown message type
		{0, uint8(instance.MsgAccept), []byte{0xc1}}, // garbled body
		{0, uint8(instance.MsgAccept), good[:3]},     // truncated body
		{1, uint8(instance.MsgPrepare), good},        // a stranger's (node 99) prepare
	} {
		rogue.Send(1, f.g, f.typ, f.body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for g := ids.GroupID(0); g < 2; g++ {
		if _, err := nodes[0].Propose(ctx, g, []byte("still serving")); err != nil {
			t.Fatal(err)
		}
	}
	// The stranger's huge ballot must not have been promised.
	st, err := nodes[0].GroupStats(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if st.Promised.Number >= 1<<40 {
		t.Fatalf("the stranger's prepare reached the acceptor: promised %v", st.Promised)
	}
}

// TestManyGroupsStartStop: a node with 4096 groups starts, serves and stops without
// leaving a goroutine behind (goleak in TestMain).
func TestManyGroupsStartStop(t *testing.T) {
	_, nodes := memCluster(t, 3, 4096)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, g := range []ids.GroupID{0, 1, 2047, 4095} {
		if _, err := nodes[int(g)%3].Propose(ctx, g, []byte("x")); err != nil {
			t.Fatalf("group %d: %v", g, err)
		}
	}
}
