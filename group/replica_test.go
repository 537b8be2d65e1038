package group

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/instance"
	"github.com/multipaxos/engine/logstore"
)

type nopSender struct{ sent []instance.Message }

func (s *nopSender) Send(to ids.NodeID, g ids.GroupID, m *instance.Message) {
	s.sent = append(s.sent, *m)
}

func (s *nopSender) SendGroup(ids.NodeID, ids.GroupID, *GroupMessage) {}

type recSM struct {
	batches [][]string
	fail    bool
}

func (s *recSM) Applied() ids.InstanceID { return 0 }
func (s *recSM) Execute(inst ids.InstanceID, cmds [][]byte) ([][]byte, error) {
	if s.fail {
		return nil, errors.New("disk full")
	}
	if len(cmds) == 0 {
		return nil, nil // an instance of engine-internal commands only
	}
	var b []string
	out := make([][]byte, len(cmds))
	for i, c := range cmds {
		b = append(b, string(c))
		out[i] = []byte(fmt.Sprintf("r%d.%d", inst, i))
	}
	s.batches = append(s.batches, b)
	return out, nil
}

func newSolo(t *testing.T, store *logstore.MemStore, sm *recSM) *Replica {
	t.Helper()
	r, err := New(Config{Group: 3, Self: 1, Members: []ids.NodeID{1}, Storage: store, Sender: &nopSender{},
		StateMachine: sm, Schedule: func(fn func()) { fn() }, BatchCountMax: 4})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestBatching: proposals queued while an instance is in flight are packed into the
// next instance, bounded by BatchCountMax, and every caller gets its own result.
func TestBatching(t *testing.T) {
	store := logstore.NewMemStore()
	sm := &recSM{}
	r := newSolo(t, store, sm)
	var ps []*Proposal
	for i := 0; i < 10; i++ {
		p := NewProposal(RequestID{Node: 1, Seq: uint64(i)}, []byte(fmt.Sprint("c", i)))
		ps = append(ps, p)
		r.Propose(p)
	}
	for store.PendingCount() > 0 {
		store.Sync()
	}
	// Instance 0 is the master claim; the proposals queued meanwhile follow in
	// batches of at most BatchCountMax.
	want := [][]string{{"c0", "c1", "c2", "c3"}, {"c4", "c5", "c6", "c7"}, {"c8", "c9"}}
	if fmt.Sprint(sm.batches) != fmt.Sprint(want) {
		t.Fatalf("batches %v, want %v", sm.batches, want)
	}
	for i, p := range ps {
		res, err := p.Wait(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		inst := 1 + i/4
		pos := i % 4
		if res.Instance != ids.InstanceID(inst) || string(res.Value) != fmt.Sprintf("r%d.%d", inst, pos) {
			t.Fatalf("proposal %d: %+v", i, res)
		}
	}
}

// TestRestartReplays: a replica reopened on the same store replays the chosen log into
// a fresh state machine and keeps its promise.
func TestRestartReplays(t *testing.T) {
	store := logstore.NewMemStore()
	r := newSolo(t, store, &recSM{})
	for i := 0; i < 5; i++ {
		r.Propose(NewProposal(RequestID{Node: 1, Seq: uint64(i)}, []byte(fmt.Sprint("c", i))))
		store.Sync()
	}
	promised := r.Core().Promised()
	for store.PendingCount() > 0 {
		store.Sync()
	}
	store.Crash() // nothing unsynced is left; the crash changes nothing
	sm := &recSM{}
	r2 := newSolo(t, store, sm)
	if r2.Core().Next() != r.Core().Next() || r2.Core().Promised() != promised {
		t.Fatalf("after restart next=%d promised=%v, before next=%d promised=%v",
			r2.Core().Next(), r2.Core().Promised(), r.Core().Next(), promised)
	}
	if fmt.Sprint(sm.batches) != "[[c0] [c1] [c2] [c3] [c4]]" && fmt.Sprint(sm.batches) != "[[c0] [c1 c2 c3 c4]]" {
		t.Fatalf("replayed %v", sm.batches)
	}
}

// TestStalledStateMachineRetries: an Execute error stalls the group and is retried on
// Tick; the instance is never skipped.
func TestStalledStateMachineRetries(t *testing.T) {
	store := logstore.NewMemStore()
	sm := &recSM{fail: true}
	r := newSolo(t, store, sm)
	p := NewProposal(RequestID{Node: 1, Seq: 1}, []byte("x"))
	r.Propose(p)
	store.Sync()
	r.Tick()
	if r.Stats().Applied != 0 || r.Stats().ApplyErrors == 0 {
		t.Fatalf("stats %+v", r.Stats())
	}
	sm.fail = false
	r.Tick()
	for store.PendingCount() > 0 {
		store.Sync()
	}
	if res, err := p.Wait(context.Background()); err != nil || res.Instance != 1 {
		t.Fatalf("%+v %v", res, err)
	}
}

// TestCanceledBeforeProposed: a proposal withdrawn while queued is never executed.
func TestCanceledBeforeProposed(t *testing.T) {
	store := logstore.NewMemStore()
	sm := &recSM{}
	r := newSolo(t, store, sm)
	warm := NewProposal(RequestID{Node: 1, Seq: 0}, []byte("w")) // makes the replica master
	r.Propose(warm)
	for store.PendingCount() > 0 {
		store.Sync()
	}
	first := NewProposal(RequestID{Node: 1, Seq: 1}, []byte("a"))
	r.Propose(first) // in flight until the store syncs
	second := NewProposal(RequestID{Node: 1, Seq: 2}, []byte("b"))
	r.Propose(second)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := second.Wait(ctx); !errors.Is(err, ErrCanceled) || !errors.Is(err, context.Canceled) {
		t.Fatalf("queued proposal: %v", err)
	}
	if _, err := first.Wait(ctx); !errors.Is(err, ErrUnknownOutcome) {
		t.Fatalf("in-flight proposal: %v", err)
	}
	for store.PendingCount() > 0 {
		store.Sync()
	}
	if fmt.Sprint(sm.batches) != "[[w] [a]]" {
		t.Fatalf("executed %v", sm.batches)
	}
}

func TestValueCodec(t *testing.T) {
	cmds := []Command{{ID: RequestID{1, 2}, Data: []byte("x")}, {ID: RequestID{3, 1 << 60}, Data: nil}}
	got, err := decodeValue(encodeValue(cmds))
	if err != nil || len(got) != 2 || got[0].ID != cmds[0].ID || string(got[0].Data) != "x" || got[1].ID != cmds[1].ID {
		t.Fatalf("%+v %v", got, err)
	}
	v := encodeValue(cmds)
	for i := 0; i < len(v); i++ {
		if _, err := decodeValue(v[:i]); err == nil {
			t.Fatalf("truncated value at %d accepted", i)
		}
	}
}

// fwdSender records the forward messages a replica sends.
type fwdSender struct {
	nopSender
	fwd []GroupMessage
}

func (s *fwdSender) SendGroup(to ids.NodeID, g ids.GroupID, m *GroupMessage) {
	if m.Type == MsgForward {
		s.fwd = append(s.fwd, *m)
	}
}

// TestForwardRespectsBatchBytesMax: a member forwarding its queue to another member
// splits it by BatchBytesMax as well as BatchCountMax (one ~21 MiB forward of 24
// large proposals is dropped by the transport as too large); a single command
// larger than the limit still goes, alone.
func TestForwardRespectsBatchBytesMax(t *testing.T) {
	snd := &fwdSender{}
	r, err := New(Config{Group: 3, Self: 1, Members: []ids.NodeID{1, 2, 3}, Storage: logstore.NewMemStore(),
		Sender: snd, StateMachine: &recSM{}, Schedule: func(fn func()) { fn() },
		NotCandidate: true, Abstain: true, BatchCountMax: 4, BatchBytesMax: 250})
	if err != nil {
		t.Fatal(err)
	}
	sizes := []int{100, 100, 100, 100, 1000, 100, 100, 100, 100, 100, 250, 1}
	for i, n := range sizes {
		data := make([]byte, n)
		data[0] = byte(i)
		r.Propose(NewProposal(RequestID{Node: 1, Seq: uint64(i)}, data))
	}
	if len(snd.fwd) != 0 {
		t.Fatalf("an abstaining member forwarded %d messages", len(snd.fwd))
	}
	r.SetAbstain(false) // nobody is master and we may not claim: forward to member 2
	var got [][]int
	seq := uint64(0)
	for _, m := range snd.fwd {
		var b []int
		bytes := 0
		for _, c := range m.Commands {
			if c.ID.Seq != seq {
				t.Fatalf("forwarded out of order: %d, want %d", c.ID.Seq, seq)
			}
			seq++
			b = append(b, len(c.Data))
			bytes += len(c.Data)
		}
		got = append(got, b)
		if len(m.Commands) > 4 || (len(m.Commands) > 1 && bytes > 250) {
			t.Errorf("forward of %d commands, %d bytes exceeds the limits (4, 250 B)", len(m.Commands), bytes)
		}
	}
	if seq != uint64(len(sizes)) {
		t.Fatalf("forwarded %d commands, want %d: %v", seq, len(sizes), got)
	}
	want := [][]int{{100, 100}, {100, 100}, {1000}, {100, 100}, {100, 100}, {100}, {250}, {1}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("forward batches %v, want %v", got, want)
	}
}

// TestBatchingBytes: the master's batches are bounded by BatchBytesMax too; a
// command larger than the limit is proposed alone.
func TestBatchingBytes(t *testing.T) {
	store := logstore.NewMemStore()
	sm := &recSM{}
	r, err := New(Config{Group: 3, Self: 1, Members: []ids.NodeID{1}, Storage: store, Sender: &nopSender{},
		StateMachine: sm, Schedule: func(fn func()) { fn() }, BatchCountMax: 4, BatchBytesMax: 250})
	if err != nil {
		t.Fatal(err)
	}
	var ps []*Proposal
	for i := 0; i < 12; i++ {
		n := 100
		if i == 5 {
			n = 1000
		}
		data := []byte(fmt.Sprint("c", i, ":"))
		data = append(data, make([]byte, n-len(data))...)
		p := NewProposal(RequestID{Node: 1, Seq: uint64(i)}, data)
		ps = append(ps, p)
		r.Propose(p)
	}
	for store.PendingCount() > 0 {
		store.Sync()
	}
	var got [][]string
	for _, b := range sm.batches {
		var names []string
		bytes := 0
		for _, c := range b {
			name, _, _ := strings.Cut(c, ":")
			names = append(names, name)
			bytes += len(c)
		}
		got = append(got, names)
		if len(b) > 1 && bytes > 250 {
			t.Errorf("batch %v: %d bytes over the 250 B limit", names, bytes)
		}
	}
	// Instance 0 is the master claim; c0 waits for it.
	want := [][]string{{"c0", "c1"}, {"c2", "c3"}, {"c4"}, {"c5"}, {"c6", "c7"}, {"c8", "c9"}, {"c10", "c11"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("batches %v, want %v", got, want)
	}
	for i, p := range ps {
		if _, err := p.Wait(context.Background()); err != nil {
			t.Fatalf("proposal %d: %v", i, err)
		}
	}
}
