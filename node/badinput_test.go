package node

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/multipaxos/engine/group"
	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/instance"
	"github.com/multipaxos/engine/netio"
	"github.com/multipaxos/engine/statemachine"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
)

// memCluster starts size nodes on an in-memory network delivering in real time.
func memCluster(t *testing.T, size, groups int) (*netio.MemNetwork, []*Node) {
	t.Helper()
	net, nodes, _ := memClusterObserved(t, size, groups)
	return net, nodes
}

// memClusterObserved is memCluster that also records every node's log, debug
// lines included, for tests to check what was logged.
func memClusterObserved(t *testing.T, size, groups int) (*netio.MemNetwork, []*Node, []*observer.ObservedLogs) {
	t.Helper()
	var logs []*observer.ObservedLogs
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
			Logger:        observedLogger(t, &logs).Named(fmt.Sprint("n", id)),
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
	return net, nodes, logs
}

// observedLogger logs to the test and to a new observer, appended to logs.
func observedLogger(t *testing.T, logs *[]*observer.ObservedLogs) *zap.Logger {
	core, obs := observer.New(zapcore.DebugLevel)
	*logs = append(*logs, obs)
	return zap.New(zapcore.NewTee(zaptest.NewLogger(t).Core(), core))
}

// waitLogged waits until logs holds a line with message msg for group g whose
// error mentions errPart ("" matches any), and fails the test after a deadline.
func waitLogged(t *testing.T, logs *observer.ObservedLogs, msg string, g ids.GroupID, errPart string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, e := range logs.FilterMessage(msg).FilterField(zap.Uint32("group", uint32(g))).All() {
			if errPart == "" || strings.Contains(fmt.Sprint(e.ContextMap()["error"]), errPart) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q logged for group %d (error containing %q) within 10s", msg, g, errPart)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestBadInputIsDropped: frames for an unknown group, of an unknown type, with a
// garbled or truncated body, or from a non-member are dropped with a log line; the
// node keeps serving.
func TestBadInputIsDropped(t *testing.T) {
	const groups = 5
	net, nodes, logs := memClusterObserved(t, 3, groups)
	rogue := net.Endpoint(99, func(ids.NodeID, ids.GroupID, uint8, []byte) {})
	c := instance.NewCodec()
	good := append([]byte(nil), c.Encode(&instance.Message{Type: instance.MsgPrepare, Ballot: ids.Ballot{Number: 1 << 40, Node: 99}})...)
	// Each bad frame goes to its own group, so that each log line it must cause
	// can be told from the others.
	for _, f := range []struct {
		name    string
		g       ids.GroupID
		typ     uint8
		body    []byte
		msg     string // the line node 1 must log
		errPart string // in the line's error
	}{
		{"unknown group", 7, uint8(instance.MsgPrepare), good, "frame for unknown group dropped", ""},
		{"unknown message type", 0, 200, good, "undecodable message dropped", "unknown type 200"},
		{"garbled body", 1, uint8(instance.MsgAccept), []byte{0xc1}, "undecodable message dropped", ""},
		{"truncated body", 2, uint8(instance.MsgAccept), good[:3], "undecodable message dropped", ""},
		{"a stranger's (node 99) prepare", 3, uint8(instance.MsgPrepare), good, "message refused", "from node 99"},
		{"garbled group message", 4, group.MsgForward, []byte{0xc1}, "undecodable group message dropped", ""},
	} {
		if !rogue.Send(1, f.g, f.typ, f.body) {
			t.Fatalf("%s: the network refused the frame", f.name)
		}
		waitLogged(t, logs[0], f.msg, f.g, f.errPart)
	}
	if n := logs[0].FilterMessage("frame for unknown group dropped").FilterField(zap.Uint32("group", 7)).Len(); n != 1 {
		t.Fatalf("unknown group logged %d times, want 1", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for g := ids.GroupID(0); g < groups; g++ {
		if _, err := nodes[0].Propose(ctx, g, []byte("still serving")); err != nil {
			t.Fatal(err)
		}
	}
	// The stranger's huge ballot must not have been promised.
	st, err := nodes[0].GroupStats(ctx, 3)
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
