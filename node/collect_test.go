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

// A group that goes quiet gives back the memory of its executed window (group's
// executed.go) once its entries age out, although an idle group is not ticked: the
// status sweep visits it.
func TestQuietGroupGivesBackExecutedWindow(t *testing.T) {
	tc := newTestCluster(t, 3, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Node 1 becomes master; node 2's proposals are forwarded to it, and only
	// forwarded commands are recorded in the window.
	if _, err := tc.nodes[1].Propose(ctx, 0, []byte("first")); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 200)
	for i := 0; i < 200; i++ { // well over the window's minimum of 64
		go func() {
			_, err := tc.nodes[2].Propose(ctx, 0, []byte(fmt.Sprint("w", i)))
			errs <- err
		}()
	}
	for i := 0; i < 200; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	r := tc.nodes[3].groups[0] // it executes them shortly after the proposer does
	waitFor(t, ctx, r.wantSweep.Load)
	// Then nothing more happens in the group; the window's entries age out and the
	// status sweep gives them back although the group is not ticked. (waitFor's
	// context only keeps a broken run from hanging.)
	wctx, wcancel := context.WithTimeout(context.Background(), time.Minute)
	defer wcancel()
	waitFor(t, wctx, func() bool { return !r.wantSweep.Load() })
}
