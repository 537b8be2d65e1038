package group

import (
	"context"
	"errors"
	"testing"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/logstore"
)

// audit3Sender records where a replica forwards proposals.
type audit3Sender struct {
	nopSender
	to []ids.NodeID
}

func (s *audit3Sender) SendGroup(to ids.NodeID, g ids.GroupID, m *GroupMessage) {
	if m.Type == MsgForward {
		s.to = append(s.to, to)
	}
}

// TestNotCandidateResendsForwarded (audit 3, G2): a member that may not
// become master forwards its proposals to the next member while nobody is master;
// if they stay unsettled for forwardRetryTicks with still no master known, it
// sends them to the next voter in turn (never itself), round and round, and stops
// once the caller gives up.
func TestNotCandidateResendsForwarded(t *testing.T) {
	snd := &audit3Sender{}
	r, err := New(Config{Group: 3, Self: 2, Members: []ids.NodeID{1, 2, 3}, Storage: logstore.NewMemStore(),
		Sender: snd, StateMachine: &recSM{}, Schedule: func(fn func()) { fn() }, NotCandidate: true})
	if err != nil {
		t.Fatal(err)
	}
	p := NewProposal(RequestID{Node: 2, Seq: 1}, []byte("x"))
	r.Propose(p)
	if len(snd.to) != 1 || snd.to[0] != 3 {
		t.Fatalf("first forward went to %v, want [3]", snd.to)
	}
	wait := r.forwardRetryTicks()
	for i := 0; i < wait-1; i++ {
		r.Tick()
	}
	if len(snd.to) != 1 {
		t.Fatalf("re-sent before the timeout: %v", snd.to)
	}
	for i := 0; i < 3*wait; i++ {
		r.Tick()
	}
	want := []ids.NodeID{3, 1, 3, 1}
	if len(snd.to) != len(want) {
		t.Fatalf("forwards went to %v, want %v", snd.to, want)
	}
	for i := range want {
		if snd.to[i] != want[i] {
			t.Fatalf("forwards went to %v, want %v", snd.to, want)
		}
	}
	select {
	case <-p.Done():
		t.Fatalf("proposal finished without being executed: %v", p.err)
	default:
	}
	if !r.NeedsTick() {
		t.Fatal("a member with unsettled forwarded proposals needs ticks for the retry")
	}
	// The caller gives up: nothing more is sent.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.Wait(ctx); !errors.Is(err, ErrUnknownOutcome) {
		t.Fatalf("abandoned forwarded proposal: %v", err)
	}
	for i := 0; i < 2*wait; i++ {
		r.Tick()
	}
	if len(snd.to) != len(want) {
		t.Fatalf("an abandoned proposal was sent again: %v", snd.to)
	}
}

// TestCandidateDoesNotResend (audit 3, G2): a member that may become master
// does not pass forwarded proposals around; it claims mastership itself.
func TestCandidateDoesNotResend(t *testing.T) {
	snd := &audit3Sender{}
	r, err := New(Config{Group: 3, Self: 2, Members: []ids.NodeID{1, 2, 3}, Storage: logstore.NewMemStore(),
		Sender: snd, StateMachine: &recSM{}, Schedule: func(fn func()) { fn() }})
	if err != nil {
		t.Fatal(err)
	}
	r.Propose(NewProposal(RequestID{Node: 2, Seq: 1}, []byte("x")))
	for i := 0; i < 3*r.forwardRetryTicks(); i++ {
		r.Tick()
	}
	if len(snd.to) != 0 {
		t.Fatalf("a candidate forwarded to %v", snd.to)
	}
}

// TestLeaseReadWaitsForStalledApply (audit 3, G6): a lease read on the master
// does not run while an instance the master has chosen is not yet executed (its
// state machine stalls); it runs once that instance is, and sees it.
func TestLeaseReadWaitsForStalledApply(t *testing.T) {
	store := logstore.NewMemStore()
	sm := &recSM{}
	r := newSolo(t, store, sm)
	warm := NewProposal(RequestID{Node: 1, Seq: 0}, []byte("w")) // makes the replica master
	r.Propose(warm)
	for store.PendingCount() > 0 {
		store.Sync()
	}
	if _, err := warm.Wait(context.Background()); err != nil || !r.Master().IsSelf {
		t.Fatalf("warm-up: %v, master %+v", err, r.Master())
	}
	sm.fail = true
	p := NewProposal(RequestID{Node: 1, Seq: 1}, []byte("x"))
	r.Propose(p)
	for store.PendingCount() > 0 {
		store.Sync()
	}
	st := r.Stats()
	if st.Next != st.Applied+1 || st.ApplyErrors == 0 {
		t.Fatalf("want one chosen instance stalled: next %d applied %d errors %d", st.Next, st.Applied, st.ApplyErrors)
	}
	ran, seen := false, 0
	var readErr error
	done := false
	r.LeaseRead(func() error { ran, seen = true, len(sm.batches); return nil }, func(err error) { done, readErr = true, err })
	r.Tick() // the state machine still fails
	if ran || done {
		t.Fatalf("lease read ran (%v) or ended (%v: %v) before the chosen instance was executed", ran, done, readErr)
	}
	if !r.Master().IsSelf {
		t.Fatal("the master lost its lease during the test: it is a timing-free test only while the lease holds (1 s)")
	}
	sm.fail = false
	r.Tick()
	if !ran || !done || readErr != nil {
		t.Fatalf("lease read after the stall cleared: ran=%v done=%v err=%v", ran, done, readErr)
	}
	if seen != 2 { // [w] and [x]
		t.Fatalf("lease read saw %d batches, want 2 (the stalled instance included)", seen)
	}
	if res, err := p.Wait(context.Background()); err != nil || res.Instance != 2 {
		t.Fatalf("%+v %v", res, err)
	}
}

// TestRetakePassedOnForward (audit 3, G2): a member that took a forwarded
// command and passed it on takes it again when its proposer re-sends it (it no
// longer holds it), but drops a duplicate while it still holds the command.
func TestRetakePassedOnForward(t *testing.T) {
	x := GroupMessage{Type: MsgForward, Hops: 1, Commands: []Command{{ID: RequestID{Node: 2, Seq: 7}, Data: []byte("x")}}}
	snd := &audit3Sender{}
	r, err := New(Config{Group: 3, Self: 3, Members: []ids.NodeID{1, 2, 3}, Storage: logstore.NewMemStore(),
		Sender: snd, StateMachine: &recSM{}, Schedule: func(fn func()) { fn() }, NotCandidate: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 2; i++ {
		if err := r.StepGroup(2, x); err != nil {
			t.Fatal(err)
		}
		if len(snd.to) != i || snd.to[i-1] != 1 {
			t.Fatalf("after %d forwards of the command, passed on to %v", i, snd.to)
		}
	}
	held, err := New(Config{Group: 3, Self: 3, Members: []ids.NodeID{1, 2, 3}, Storage: logstore.NewMemStore(),
		Sender: &audit3Sender{}, StateMachine: &recSM{}, Schedule: func(fn func()) { fn() }, NotCandidate: true, Abstain: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := held.StepGroup(2, x); err != nil {
			t.Fatal(err)
		}
	}
	if q := held.Stats().Queued; q != 1 {
		t.Fatalf("a member holding the command queued %d copies of it", q)
	}
}
