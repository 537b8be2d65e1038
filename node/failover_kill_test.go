package node

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/statemachine"
)

// TestFailoverKilledMaster: three members over TCP, node 3 in a child
// process (childMain) and master of all 64 groups under load, is killed with
// SIGKILL. Every group must get a new master - node 1 or 2, holding a valid lease -
// within 4 leases of the kill (the issue asks for "a few lease lengths"), and no
// acknowledged command may be lost: each is executed on both survivors at the
// instance its acknowledgement named. The failover times (per group, from the
// kill to the first survivor holding the lease) are logged: maximum and median.
func TestFailoverKilledMaster(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	const (
		groups = 64
		lease  = time.Second // Options' default: childMain sets none
		bound  = 4 * lease
	)
	addrs := freeAddrs(t, 3)
	members := map[ids.NodeID]string{1: addrs[0], 2: addrs[1], 3: addrs[2]}
	sms := map[ids.NodeID][]*digestSM{}
	nodes := map[ids.NodeID]*Node{}
	for _, id := range []ids.NodeID{1, 2} {
		s := make([]*digestSM, groups)
		sms[id] = s
		// Not candidates at first, so that node 3 becomes master of every group.
		n, err := Start(Options{NodeID: id, Members: members, Groups: groups, DataDir: t.TempDir(),
			TickInterval: 10 * time.Millisecond, StatusInterval: 200 * time.Millisecond, Lease: lease,
			MasterCandidate: func(ids.GroupID) bool { return false },
			StateMachines:   func(g ids.GroupID) statemachine.StateMachine { s[g] = &digestSM{}; return s[g] }})
		if err != nil {
			t.Fatal(err)
		}
		nodes[id] = n
		defer n.Stop()
	}
	c := startChild(t, fmt.Sprintf("id=3 dir=%s groups=%d 1=%s 2=%s 3=%s", t.TempDir(), groups, addrs[0], addrs[1], addrs[2]))
	defer c.kill()

	// Load: a client per (group, survivor), through nodes 1 and 2 (forwarded to
	// the master); each acknowledgement is recorded with its instance.
	type acked struct {
		g    ids.GroupID
		cmd  string
		inst ids.InstanceID
	}
	var (
		mu   sync.Mutex
		acks []acked
		per  [groups]atomic.Int64
		wg   sync.WaitGroup
	)
	ctx, cancel := context.WithCancel(context.Background())
	stopLoad := sync.OnceFunc(func() { cancel(); wg.Wait() })
	defer stopLoad()
	for g := ids.GroupID(0); g < groups; g++ {
		for _, n := range []*Node{nodes[1], nodes[2]} {
			wg.Go(func() {
				for i := 0; ctx.Err() == nil; i++ {
					cmd := fmt.Sprintf("fo.g%d.n%d.%d", g, n.ID(), i)
					pctx, pcancel := context.WithTimeout(ctx, 1500*time.Millisecond)
					res, err := n.Propose(pctx, g, []byte(cmd))
					pcancel()
					if err != nil {
						if ctx.Err() == nil {
							time.Sleep(10 * time.Millisecond) // busy, no master yet, ...: back off
						}
						continue
					}
					mu.Lock()
					acks = append(acks, acked{g: g, cmd: cmd, inst: res.Instance})
					mu.Unlock()
					per[g].Add(1)
				}
			})
		}
	}
	waitUntil(t, 30*time.Second, "node 3 did not become master of every group", func() bool {
		for g := ids.GroupID(0); g < groups; g++ {
			if m, _ := nodes[1].Master(g); m != 3 || per[g].Load() == 0 {
				return false
			}
		}
		return true
	})
	// Now the survivors may take over; node 3 keeps renewing under the load.
	for _, n := range nodes {
		for g := ids.GroupID(0); g < groups; g++ {
			if err := n.SetMasterCandidate(g, true); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Run the load for a lease and a half, so that node 3 renews its leases
	// (at half a lease) at least once and the kill finds them at arbitrary
	// points of their terms, not all freshly claimed.
	time.Sleep(3 * lease / 2)
	var mark [groups]int64
	for g := range mark {
		mark[g] = per[g].Load()
	}
	waitUntil(t, 30*time.Second, "the load did not progress in every group", func() bool {
		for g := range mark {
			if per[g].Load() < mark[g]+3 {
				return false
			}
		}
		return true
	})
	for g := ids.GroupID(0); g < groups; g++ {
		if m, _ := nodes[1].Master(g); m != 3 {
			t.Fatalf("group %d: master %d before the kill, want 3", g, m)
		}
	}
	mu.Lock()
	before := len(acks)
	mu.Unlock()

	killAt := time.Now()
	c.kill() // SIGKILL, and reaped
	failover := make([]time.Duration, groups)
	newMaster := make([]ids.NodeID, groups)
	left := groups
	for left > 0 && time.Since(killAt) < bound {
		for g := ids.GroupID(0); g < groups; g++ {
			if newMaster[g] != 0 {
				continue
			}
			for _, id := range []ids.NodeID{1, 2} {
				if nodes[id].IsMaster(g) {
					newMaster[g], failover[g] = id, time.Since(killAt)
					left--
					break
				}
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	if left > 0 {
		var missing []ids.GroupID
		for g := ids.GroupID(0); g < groups; g++ {
			if newMaster[g] == 0 {
				m1, _ := nodes[1].Master(g)
				m2, _ := nodes[2].Master(g)
				t.Logf("group %d: no new master; node 1 sees %d, node 2 sees %d", g, m1, m2)
				missing = append(missing, g)
			}
		}
		t.Fatalf("%d groups had no new master within %v (4 leases) of the kill: %v", left, bound, missing)
	}
	sorted := slices.Clone(failover)
	slices.Sort(sorted)
	by := map[ids.NodeID]int{}
	for _, m := range newMaster {
		by[m]++
	}
	t.Logf("failover of %d groups after SIGKILL of their master (lease %v): max %v, median %v, min %v; new masters: node 1 of %d groups, node 2 of %d",
		groups, lease, sorted[groups-1].Round(time.Millisecond), sorted[groups/2].Round(time.Millisecond), sorted[0].Round(time.Millisecond), by[1], by[2])

	// More load on the new masters, then stop it and let the survivors converge.
	for g := range mark {
		mark[g] = per[g].Load()
	}
	waitUntil(t, 30*time.Second, "the load did not progress in every group after the failover", func() bool {
		for g := range mark {
			if per[g].Load() < mark[g]+3 {
				return false
			}
		}
		return true
	})
	stopLoad()
	waitUntil(t, 30*time.Second, "nodes 1 and 2 did not converge", func() bool {
		for g := 0; g < groups; g++ {
			n1, d1 := sms[1][g].state()
			if n2, d2 := sms[2][g].state(); n1 != n2 || d1 != d2 {
				return false
			}
		}
		return true
	})
	lost := 0
	for _, id := range []ids.NodeID{1, 2} {
		for _, a := range acks {
			sm := sms[id][a.g]
			sm.mu.Lock()
			inst, ok := sm.seen[a.cmd]
			sm.mu.Unlock()
			if !ok || inst != a.inst {
				if lost++; lost <= 10 {
					t.Errorf("node %d group %d: acknowledged %q at instance %d: executed %v at %d", id, a.g, a.cmd, a.inst, ok, inst)
				}
			}
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d acknowledged commands lost or misplaced on the survivors", lost, len(acks))
	}
	t.Logf("%d commands acknowledged (%d before the kill), all executed at their instances on both survivors", len(acks), before)
}
