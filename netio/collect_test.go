package netio

import (
	"runtime"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/multipaxos/engine/ids"
)

// A closed transport must become garbage: an embedding program that stops and
// starts nodes (or a test suite, or the benchmark's runs) must not keep every old
// node reachable. gnet's process-global engine registry did exactly that until
// Close took the engine out of it.
func TestTCPTransportCollectedAfterClose(t *testing.T) {
	defer goleak.VerifyNone(t, leakOpts...)
	collected := make(chan ids.NodeID, 2)
	func() {
		c := newCluster(t, 2, nil)
		n1, n2 := c.start(1), c.start(2)
		c.waitConnected()
		if !n1.tr.Send(2, 1, 1, []byte("x")) {
			t.Fatal("send refused")
		}
		waitFor(t, "frame", func() bool { return n2.rec.count() == 1 })
		for _, n := range []*testNode{n1, n2} {
			// AddCleanup, not SetFinalizer: a transport is a cycle (peers point
			// back at it), and a finalizer on a cycle may never run.
			runtime.AddCleanup(n.tr, func(id ids.NodeID) { collected <- id }, n.id)
		}
		c.closeAll()
	}()
	got := map[ids.NodeID]bool{}
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < 2 && time.Now().Before(deadline) {
		runtime.GC()
		select {
		case id := <-collected:
			got[id] = true
		case <-time.After(20 * time.Millisecond):
		}
	}
	if len(got) < 2 {
		t.Fatalf("closed transports collected: %v of nodes 1 and 2; the others are still reachable", got)
	}
}
