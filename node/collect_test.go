package node

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/multipaxos/engine/ids"
)

// A stopped node must become garbage, groups, stores and all: a program that stops
// and starts nodes in one process (tests, the benchmark's runs, an embedding
// server that reopens a store) must not keep every old node in memory. gnet's
// process-global engine registry once kept them all reachable.
func TestStoppedNodeCollected(t *testing.T) {
	tc := newTestCluster(t, 3, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i := 0; i < 20; i++ {
		if _, err := tc.nodes[1].Propose(ctx, ids.GroupID(i%4), []byte(fmt.Sprint("v", i))); err != nil {
			t.Fatal(err)
		}
	}
	collected := make(chan ids.NodeID, 3)
	for id, n := range tc.nodes {
		// AddCleanup, not SetFinalizer: a node is full of cycles, and a finalizer
		// on a cycle may never run.
		runtime.AddCleanup(n, func(id ids.NodeID) { collected <- id }, id)
	}
	for id := ids.NodeID(1); id <= 3; id++ {
		tc.stop(id)
	}
	got := map[ids.NodeID]bool{}
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < 3 && time.Now().Before(deadline) {
		runtime.GC()
		select {
		case id := <-collected:
			got[id] = true
		case <-time.After(20 * time.Millisecond):
		}
	}
	if len(got) < 3 {
		t.Fatalf("stopped nodes collected: %v of 1, 2 and 3; the others are still reachable", got)
	}
}
