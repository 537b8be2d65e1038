package group

import (
	"fmt"

	"github.com/multipaxos/engine/logstore"
	"testing"
	"time"

	"github.com/multipaxos/engine/ids"
)

func TestExecutedWindow(t *testing.T) {
	var w executedWindow
	w.reset(10)
	t0 := time.Unix(1000, 0)
	id := func(seq uint64) RequestID { return RequestID{Node: 2, Seq: seq} }

	// Nothing executed yet: a command not chosen below 10 is certainly new; one
	// that may have been chosen at 9 cannot be told.
	if ex, known := w.lookup(id(1), 10); ex || !known {
		t.Fatalf("empty window, since 10: executed %v known %v", ex, known)
	}
	if _, known := w.lookup(id(1), 9); known {
		t.Fatal("since 9 is below the floor but was known")
	}
	for i := uint64(0); i < 100; i++ {
		w.add(id(i), ids.InstanceID(10+i), t0.Add(time.Duration(i)*time.Millisecond))
	}
	if ex, _ := w.lookup(id(42), 0); !ex {
		t.Fatal("executed command not found")
	}
	if ex, known := w.lookup(id(500), 10); ex || !known {
		t.Fatalf("new command: executed %v known %v", ex, known)
	}

	// Within the horizon nothing goes; past it all but the newest executedKeepMin.
	w.expire(t0.Add(executedHorizon / 2))
	if w.len() != 100 || w.floor != 10 {
		t.Fatalf("expired within the horizon: %d left, floor %d", w.len(), w.floor)
	}
	w.expire(t0.Add(time.Hour))
	if w.len() != executedKeepMin {
		t.Fatalf("%d left after the horizon, want %d", w.len(), executedKeepMin)
	}
	first := uint64(100 - executedKeepMin) // oldest kept
	if w.floor != ids.InstanceID(10+first) {
		t.Fatalf("floor %d, want %d", w.floor, 10+first)
	}
	if ex, known := w.lookup(id(first-1), 10+ids.InstanceID(first)-1); ex || known {
		t.Fatalf("dropped command: executed %v known %v, want neither", ex, known)
	}
	if ex, _ := w.lookup(id(first), 0); !ex {
		t.Fatal("kept command not found")
	}
	if len(w.set) != w.len() {
		t.Fatalf("set %d, live %d", len(w.set), w.len())
	}

	// An installed image skips instances: what they held is unknown.
	w.skipTo(1000)
	if _, known := w.lookup(id(9999), 999); known {
		t.Fatal("since below a skipped range was known")
	}
	if _, known := w.lookup(id(9999), 1000); !known {
		t.Fatal("since at the skip point was not known")
	}
}

func TestExecutedWindowBounded(t *testing.T) {
	var w executedWindow
	now := time.Unix(1000, 0)
	for i := 0; i < executedIDsMax+1000; i++ {
		w.add(RequestID{Node: 1, Seq: uint64(i)}, ids.InstanceID(i), now)
	}
	if w.len() != executedIDsMax || len(w.set) != executedIDsMax || w.floor != 1000 {
		t.Fatalf("%d entries, %d in set, floor %d; want %d, %d, 1000", w.len(), len(w.set), w.floor, executedIDsMax, executedIDsMax)
	}
	w.expire(now.Add(time.Hour))
	if w.len() != executedKeepMin || cap(w.fifo) > 4*executedKeepMin+executedKeepMin {
		t.Fatalf("after a quiet hour: %d entries in a slice of %d", w.len(), cap(w.fifo))
	}
}

// TestForwardedCommandsExactlyOnce drives a one-member group with forwards from
// another member: a command chosen already is never proposed again, whether its
// copy arrives before or after it is executed, and a copy older than the executed
// window is refused (counted) rather than risked, while a new one goes through.
func TestForwardedCommandsExactlyOnce(t *testing.T) {
	store := logstore.NewMemStore()
	sm := &recSM{}
	now := time.Unix(1000, 0)
	r, err := New(Config{Group: 3, Self: 1, Members: []ids.NodeID{1}, Storage: store, Sender: &nopSender{},
		StateMachine: sm, Schedule: func(fn func()) { fn() }, Clock: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	settle := func() {
		for store.PendingCount() > 0 {
			store.Sync()
		}
	}
	executed := map[string]int{}
	count := func() {
		clear(executed)
		for _, b := range sm.batches {
			for _, c := range b {
				executed[c]++
			}
		}
	}
	forward := func(seq uint64, data string, since ids.InstanceID) {
		t.Helper()
		m := GroupMessage{Type: MsgForward, Hops: 1, Since: uint64(since),
			Commands: []Command{{ID: RequestID{Node: 2, Seq: seq}, Kind: KindApp, Data: []byte(data)}}}
		if err := r.StepGroup(2, m); err != nil {
			t.Fatal(err)
		}
		settle()
	}

	r.Propose(NewProposal(RequestID{Node: 1, Seq: 1}, []byte("local")))
	settle()
	forward(7, "f7", r.applied)
	forward(7, "f7", r.applied) // a retry after it was executed
	// A copy that arrives while the original is still queued behind an instance in
	// flight: both are in one batch or the second finds the first executed.
	r.Propose(NewProposal(RequestID{Node: 1, Seq: 2}, []byte("local2")))
	forward(8, "f8", r.applied)
	forward(8, "f8", r.applied)
	count()
	if executed["f7"] != 1 || executed["f8"] != 1 || executed["local"] != 1 || executed["local2"] != 1 {
		t.Fatalf("executed %v, want each once", executed)
	}

	// Enough traffic to fill the window beyond its minimum, then a quiet hour.
	for i := uint64(0); i < executedKeepMin+10; i++ {
		forward(100+i, fmt.Sprint("g", i), r.applied)
	}
	old := r.executed.floor
	now = now.Add(time.Hour)
	r.Tick()
	if r.executed.floor <= old {
		t.Fatalf("floor %d did not rise past %d after the horizon", r.executed.floor, old)
	}
	before := r.Stats().ForwardsTooOld
	forward(7, "f7", 0)   // chosen long ago, no longer in the window
	forward(9, "f9", old) // perhaps chosen in the instances the window forgot
	if got := r.Stats().ForwardsTooOld - before; got != 2 {
		t.Fatalf("ForwardsTooOld rose by %d, want 2", got)
	}
	forward(10, "f10", r.applied) // new: goes through
	count()
	if executed["f7"] != 1 || executed["f9"] != 0 || executed["f10"] != 1 {
		t.Fatalf("executed f7 %d, f9 %d, f10 %d times; want 1, 0, 1", executed["f7"], executed["f9"], executed["f10"])
	}
}
