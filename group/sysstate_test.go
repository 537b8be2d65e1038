package group

import (
	"fmt"
	"testing"
	"time"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/logstore"
)

// TestSysStateAtReplaysTheLog: the replica keeps a SystemState point only every
// sysPointEvery instances (lease renewals change the state all the time), and
// sysStateAt rebuilds the state at any instance of the log from the nearest point
// and the log: it must equal the fold of every system command from the start.
func TestSysStateAtReplaysTheLog(t *testing.T) {
	store := logstore.NewMemStore()
	now := time.Unix(1000, 0)
	r, err := New(Config{Group: 3, Self: 1, Members: []ids.NodeID{1}, Storage: store, Sender: &nopSender{},
		StateMachine: &recSM{}, Schedule: func(fn func()) { fn() }, Clock: func() time.Time { return now },
		Lease: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3*sysPointEvery; i++ {
		r.Propose(NewProposal(RequestID{Node: 1, Seq: uint64(i)}, []byte(fmt.Sprint("c", i))))
		for store.PendingCount() > 0 {
			store.Sync()
		}
		now = now.Add(100 * time.Millisecond) // a renewal every few instances
	}
	if r.stats.MasterClaims < 100 {
		t.Fatalf("only %d claims: the test needs many system-state changes", r.stats.MasterClaims)
	}
	if n := len(r.sysHistory); n > 4 {
		t.Fatalf("%d points of system state for %d instances and %d claims", n, r.sysApplied, r.stats.MasterClaims)
	}
	// The reference: every system command folded from the start.
	es, err := store.Entries(3, 0, int(r.sysApplied), 1<<30)
	if err != nil || len(es) != int(r.sysApplied) {
		t.Fatalf("log: %d entries, %v", len(es), err)
	}
	ref := r.sysHistory[0].state.clone()
	for inst := ids.InstanceID(0); inst <= r.sysApplied; inst++ {
		if inst%97 == 0 || inst == r.sysApplied || inst%sysPointEvery < 2 {
			got, ok := r.sysStateAt(inst)
			if !ok {
				t.Fatalf("no state at %d", inst)
			}
			if sysStateKey(got) != sysStateKey(ref) {
				t.Fatalf("state at %d: %+v, want %+v", inst, got, ref)
			}
		}
		if inst < r.sysApplied {
			ref.applyValue(inst, es[inst].Value)
		}
	}
}

func sysStateKey(s SystemState) string { return string(EncodeSystemState(s)) }
