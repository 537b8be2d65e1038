package node

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/multipaxos/engine/ids"
)

// audit2bErrKind names the typed error a failed proposal under load may end with:
// the outcome is unknown, it was canceled before being proposed, the node stopped,
// or no master was reachable. "" for any other error.
func audit2bErrKind(err error) string {
	switch {
	case errors.Is(err, ErrStopped):
		return "stopped"
	case errors.Is(err, ErrUnknownOutcome):
		return "unknown outcome"
	case errors.Is(err, ErrCanceled):
		return "canceled"
	case errors.Is(err, ErrNoMaster):
		return "no master"
	}
	return ""
}

// TestKilledMasterUnderLoad: node 3 runs in its own process and is made
// master of half the groups (TransferMaster), so the load through nodes 1 and 2 is
// forwarded to it there. It is killed with SIGKILL mid-load and restarted on its
// data dir. Failed proposals fail only with typed errors; the groups it was master
// of make progress without it; every acknowledged command is executed at the
// instance its proposer reported on nodes 1 and 2; and every member, node 3
// included, ends with the same per-group digest (a chain over every command in
// order, so node 3 executed the same commands at the same instances). The phases
// wait for progress, not for time.
func TestKilledMasterUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	const groups = 16
	nodes, sms, env := startPairAndChildEnv(t, groups)
	c := startChild(t, env)
	defer func() { c.kill() }()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
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

	// Node 1 becomes master of every group, then hands the even ones to node 3.
	for g := ids.GroupID(0); g < groups; g++ {
		if _, err := nodes[0].Propose(ctx, g, []byte(fmt.Sprint("warm-", g))); err != nil {
			t.Fatalf("group %d: %v", g, err)
		}
		if g%2 != 0 {
			continue
		}
		waitUntil(fmt.Sprintf("group %d handed to node 3", g), func() bool {
			if m, _ := nodes[0].Master(g); m == 3 {
				return true
			}
			if !nodes[0].IsMaster(g) { // renewals and a failed transfer's lease wait
				_, _ = nodes[0].Propose(ctx, g, []byte(fmt.Sprint("again-", g)))
			}
			err := nodes[0].TransferMaster(ctx, g, 3)
			if err != nil {
				t.Logf("group %d: transfer to node 3: %v (retrying)", g, err)
			}
			return err == nil
		})
	}

	type ackd struct {
		g     ids.GroupID
		cmd   string
		inst  ids.InstanceID
		phase int32 // the phase when the proposal was made (0 before the kill)
	}
	var (
		phase   atomic.Int32
		mu      sync.Mutex
		acks    []ackd
		kinds   = map[string]int{}
		untyped []error
		wg      sync.WaitGroup
	)
	lctx, lcancel := context.WithCancel(ctx)
	defer lcancel()
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; lctx.Err() == nil; i++ {
				g := ids.GroupID((w + i) % groups)
				cmd := fmt.Sprintf("w%d-%d", w, i)
				ph := phase.Load()
				pctx, pcancel := context.WithTimeout(lctx, 3*time.Second)
				res, err := nodes[(w+i)%2].Propose(pctx, g, []byte(cmd))
				pcancel()
				mu.Lock()
				if err == nil {
					acks = append(acks, ackd{g, cmd, res.Instance, ph})
				} else if k := audit2bErrKind(err); k != "" {
					kinds[k]++
				} else {
					untyped = append(untyped, err)
				}
				mu.Unlock()
			}
		}(w)
	}
	ackCount := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acks)
	}
	// servedSince: every group in gs acknowledged a command proposed in phase ph
	// or later.
	servedSince := func(ph int32, gs []ids.GroupID) bool {
		mu.Lock()
		defer mu.Unlock()
		served := map[ids.GroupID]bool{}
		for _, a := range acks {
			if a.phase >= ph {
				served[a.g] = true
			}
		}
		for _, g := range gs {
			if !served[g] {
				return false
			}
		}
		return true
	}

	var byNode3 []ids.GroupID
	waitUntil("node 3 master of groups under load, 300 acknowledged", func() bool {
		byNode3 = nil
		for g := ids.GroupID(0); g < groups; g++ {
			if m, _ := nodes[0].Master(g); m == 3 {
				byNode3 = append(byNode3, g)
			}
		}
		return len(byNode3) > 0 && ackCount() >= 300 && servedSince(0, byNode3)
	})
	t.Logf("node 3 master of groups %v when killed", byNode3)
	c.kill()
	if exited, killed := c.exited(); !exited || !killed {
		t.Fatalf("node 3 exited=%v killed by SIGKILL=%v", exited, killed)
	}
	phase.Store(1)
	killedTime, killedAt := time.Now(), ackCount()
	waitUntil("progress without node 3 in the groups it was master of", func() bool {
		return servedSince(1, byNode3) && ackCount() >= killedAt+300
	})
	var after []ids.NodeID
	for _, g := range byNode3 {
		m, _ := nodes[0].Master(g)
		after = append(after, m)
	}
	t.Logf("%v after the kill: masters of those groups (node 1's view) %v", time.Since(killedTime), after)
	c = startChild(t, env)
	restartedAt := ackCount()
	waitUntil("300 acknowledged after the restart", func() bool { return ackCount() >= restartedAt+300 })
	lcancel()
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	if len(untyped) > 0 {
		t.Fatalf("%d proposals failed with an untyped error, e.g. %v", len(untyped), untyped[0])
	}
	// Converged: nodes 1 and 2 agree, and the restarted node 3 prints the same.
	var want, got string
	waitUntil("every member with the same per-group digest", func() bool {
		want = "state"
		for g := 0; g < groups; g++ {
			n1, d1 := sms[1][g].state()
			if n2, d2 := sms[2][g].state(); n1 != n2 || d1 != d2 {
				return false
			}
			want += fmt.Sprintf(" %d:%x", n1, d1)
		}
		c.mu.Lock()
		got = c.state
		c.mu.Unlock()
		return got == want
	})
	for _, a := range acks {
		for _, id := range []ids.NodeID{1, 2} {
			sm := sms[id][a.g]
			sm.mu.Lock()
			inst, ok := sm.seen[a.cmd]
			sm.mu.Unlock()
			if !ok || inst != a.inst {
				t.Fatalf("acknowledged %q (group %d, instance %d) on node %d: found=%v at %d", a.cmd, a.g, a.inst, id, ok, inst)
			}
		}
	}
	t.Logf("acknowledged %d, failed %v; converged at %.100s", len(acks), kinds, got)
}
