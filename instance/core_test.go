package instance

import (
	"bytes"
	"flag"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/multipaxos/engine/ids"
)

var seedFlag = flag.Uint64("seed", 0, "replay one seed of the random-order property tests")

func newCore(t *testing.T, self ids.NodeID, members []ids.NodeID, knobs Knobs) *Core {
	t.Helper()
	c, err := New(Config{Self: self, Members: members, Seed: uint64(self), Knobs: knobs, StatusIntervalTicks: -1}, Recovered{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestSingleMemberChoosesOwnValue: with one member, phase 1 and 2 complete locally
// once the persisted self-reply comes back.
func TestSingleMemberChoosesOwnValue(t *testing.T) {
	c := newCore(t, 1, []ids.NodeID{1}, Knobs{})
	if err := c.Propose([]byte("a")); err != nil {
		t.Fatal(err)
	}
	rd := c.Ready()
	if rd.HardState == nil || rd.HardState.Promised.IsZero() {
		t.Fatalf("phase 1 must persist the own promise: %+v", rd)
	}
	if len(rd.Entries) != 1 || len(rd.Committed) != 0 {
		t.Fatalf("accept must be persisted before it counts: %+v", rd)
	}
	for _, m := range rd.Messages {
		if err := c.Step(m); err != nil {
			t.Fatal(err)
		}
	}
	rd = c.Ready()
	if len(rd.Committed) != 1 || string(rd.Committed[0].Value) != "a" || c.Next() != 1 {
		t.Fatalf("not chosen: %+v next=%d", rd, c.Next())
	}
	if !c.FastPath() {
		t.Fatal("a won instance keeps the fast path")
	}
	// Fast path: the second proposal sends no Prepare and persists no new promise.
	if err := c.Propose([]byte("b")); err != nil {
		t.Fatal(err)
	}
	if got := c.Stats(); got.PreparesStarted != 1 || got.FastAccepts != 1 {
		t.Fatalf("stats %+v", got)
	}
}

// TestAcceptorRules covers DESIGN 5.2: promise strictly above, accept at or above,
// the promise carried over to the next instance and never lowered by learning.
func TestAcceptorRules(t *testing.T) {
	c := newCore(t, 3, []ids.NodeID{1, 2, 3}, Knobs{})
	b1, b2 := ids.Ballot{Number: 1, Node: 1}, ids.Ballot{Number: 1, Node: 2}
	step := func(m Message) Ready {
		t.Helper()
		if err := c.Step(m); err != nil {
			t.Fatal(err)
		}
		return c.Ready()
	}
	rd := step(Message{Type: MsgPrepare, From: 2, Instance: 0, Ballot: b2})
	if len(rd.Messages) != 1 || rd.Messages[0].Reject || rd.HardState == nil || rd.HardState.Promised != b2 {
		t.Fatalf("promise b2: %+v", rd)
	}
	rd = step(Message{Type: MsgPrepare, From: 2, Instance: 0, Ballot: b2})
	if !rd.Messages[0].Reject {
		t.Fatal("a prepare at the promised ballot is not promised again (strict >)")
	}
	rd = step(Message{Type: MsgAccept, From: 1, Instance: 0, Ballot: b1, Value: []byte("x")})
	if !rd.Messages[0].Reject || rd.Messages[0].Promised != b2 || len(rd.Entries) != 0 {
		t.Fatalf("accept below the promise must be rejected: %+v", rd)
	}
	rd = step(Message{Type: MsgAccept, From: 2, Instance: 0, Ballot: b2, Value: []byte("y")})
	if rd.Messages[0].Reject || len(rd.Entries) != 1 {
		t.Fatalf("accept at the promise: %+v", rd)
	}
	// Learn instance 0 with a lower ballot from a teacher: the promise stays b2.
	rd = step(Message{Type: MsgLearnValues, From: 1, Next: 1, Entries: []Entry{{Instance: 0, Ballot: b1, Value: []byte("x")}}})
	if c.Next() != 1 || c.Promised() != b2 || rd.HardState.Promised != b2 {
		t.Fatalf("learning lowered the promise: next=%d promised=%v", c.Next(), c.Promised())
	}
	// The promise carries over: Accept(1, b1) is rejected without any Prepare at 1.
	rd = step(Message{Type: MsgAccept, From: 1, Next: 1, Instance: 1, Ballot: b1, Value: []byte("z")})
	if !rd.Messages[0].Reject {
		t.Fatal("promise did not carry over to instance 1")
	}
}

// TestChosenNeedsMatchingAccept: Chosen marks only with the same ballot and value
// checksum; otherwise the member asks to learn.
func TestChosenNeedsMatchingAccept(t *testing.T) {
	c := newCore(t, 3, []ids.NodeID{1, 2, 3}, Knobs{})
	b := ids.Ballot{Number: 1, Node: 1}
	_ = c.Step(Message{Type: MsgAccept, From: 1, Ballot: b, Value: []byte("v")})
	c.Ready()
	_ = c.Step(Message{Type: MsgChosen, From: 1, Next: 1, Ballot: b, Checksum: Checksum([]byte("other"))})
	rd := c.Ready()
	if c.Next() != 0 || len(rd.SendNow) == 0 || rd.SendNow[0].Type != MsgLearnReq {
		t.Fatalf("checksum mismatch must not mark chosen: %+v", rd)
	}
	_ = c.Step(Message{Type: MsgChosen, From: 1, Next: 1, Ballot: b, Checksum: Checksum([]byte("v"))})
	rd = c.Ready()
	if c.Next() != 1 || len(rd.Entries) != 0 || len(rd.Committed) != 1 {
		t.Fatalf("matching Chosen must mark without rewriting the value: %+v", rd)
	}
}

// TestNoInferenceFromNextInstance: an Accept for i+1 with the ballot accepted at i
// does not mark i chosen (the PhxPaxos shortcut), unless the bug knob is set.
func TestNoInferenceFromNextInstance(t *testing.T) {
	for _, knob := range []bool{false, true} {
		c := newCore(t, 3, []ids.NodeID{1, 2, 3}, Knobs{InferChosenFromNext: knob})
		b := ids.Ballot{Number: 1, Node: 1}
		_ = c.Step(Message{Type: MsgAccept, From: 1, Ballot: b, Value: []byte("v")})
		_ = c.Step(Message{Type: MsgAccept, From: 1, Next: 1, Instance: 1, Ballot: b, Value: []byte("w")})
		if got := c.Next() == 1; got != knob {
			t.Fatalf("knob=%v: instance 0 marked chosen=%v", knob, got)
		}
	}
}

// ---- property test: random message orders over a pure in-memory cluster ----

type pureCluster struct {
	rng     *rand.Rand
	cores   []*Core
	flight  []Message
	chosen  map[ids.InstanceID][]byte
	values  map[string]bool // every value ever proposed
	pending [][]byte        // per core: value in flight
	seq     int
	t       *testing.T
	failed  error
}

func (pc *pureCluster) violation(format string, args ...any) {
	if pc.failed == nil {
		pc.failed = fmt.Errorf(format, args...)
	}
}

func (pc *pureCluster) drain(i int) {
	c := pc.cores[i]
	for c.HasReady() {
		rd := c.Ready()
		pc.flight = append(pc.flight, rd.SendNow...)
		pc.flight = append(pc.flight, rd.Messages...) // persistence is instant here
		for _, e := range rd.Committed {
			if prev, ok := pc.chosen[e.Instance]; ok && !bytes.Equal(prev, e.Value) {
				pc.violation("agreement: instance %d chose %q and %q", e.Instance, prev, e.Value)
			}
			if !pc.values[string(e.Value)] {
				pc.violation("validity: instance %d chose %q, never proposed", e.Instance, e.Value)
			}
			pc.chosen[e.Instance] = e.Value
		}
		for _, tr := range rd.Teach {
			var es []Entry
			for in := tr.From; in < c.Next() && len(es) < 3; in++ {
				es = append(es, Entry{Instance: in, Value: pc.chosen[in]})
			}
			pc.flight = append(pc.flight, Message{Type: MsgLearnValues, From: c.Self(), To: tr.To, Next: c.Next(), Entries: es})
		}
	}
}

func runPure(t *testing.T, seed uint64, n int, steps int, knobs Knobs) (instances int, violation error) {
	pc := &pureCluster{rng: rand.New(rand.NewPCG(seed, 7)), chosen: map[ids.InstanceID][]byte{}, values: map[string]bool{}, t: t}
	var members []ids.NodeID
	for i := 1; i <= n; i++ {
		members = append(members, ids.NodeID(i))
	}
	for i := range members {
		c, err := New(Config{Self: members[i], Members: members, Seed: seed + uint64(i), StatusIntervalTicks: 7, Knobs: knobs}, Recovered{})
		if err != nil {
			t.Fatal(err)
		}
		pc.cores = append(pc.cores, c)
	}
	codec := NewCodec()
	for s := 0; s < steps; s++ {
		i := pc.rng.IntN(n)
		c := pc.cores[i]
		switch r := pc.rng.IntN(100); {
		case r < 10 && c.ProposerIdle():
			pc.seq++
			v := []byte(fmt.Sprintf("n%d-v%d", i+1, pc.seq))
			pc.values[string(v)] = true
			if err := c.Propose(v); err != nil {
				t.Fatal(err)
			}
		case r < 20:
			c.Tick()
		case len(pc.flight) > 0:
			k := pc.rng.IntN(len(pc.flight))
			m := pc.flight[k]
			if pc.rng.IntN(10) != 0 { // 10%: duplicate (leave it in flight)
				pc.flight[k] = pc.flight[len(pc.flight)-1]
				pc.flight = pc.flight[:len(pc.flight)-1]
			}
			if pc.rng.IntN(20) == 0 {
				continue // 5%: lost
			}
			// Round-trip through the codec so the wire format is exercised too.
			got, err := codec.Decode(m.Type, codec.Encode(&m))
			if err != nil {
				t.Fatal(err)
			}
			got.From, got.To = m.From, m.To
			if err := pc.cores[m.To-1].Step(got); err != nil {
				t.Fatal(err)
			}
			pc.drain(int(m.To - 1))
		}
		pc.drain(i)
		if pc.failed != nil {
			return len(pc.chosen), pc.failed
		}
		for _, c := range pc.cores {
			if c.accepted.IsZero() == false && c.hs.Promised.Less(c.accepted) {
				t.Fatalf("node %d: accepted %v above promise %v", c.Self(), c.accepted, c.hs.Promised)
			}
		}
	}
	return len(pc.chosen), nil
}

// TestPropertyRandomOrders: agreement and validity over random interleavings with
// loss and duplication, several proposers at once (DESIGN 5.1-5.3).
func TestPropertyRandomOrders(t *testing.T) {
	seeds := []uint64{}
	if *seedFlag != 0 {
		seeds = append(seeds, *seedFlag)
	} else {
		for s := uint64(1); s <= 300; s++ {
			seeds = append(seeds, s)
		}
	}
	total := 0
	for _, seed := range seeds {
		n := 3 + 2*int(seed%2)
		ok := t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			k, err := runPure(t, seed, n, 3000, Knobs{})
			if err != nil {
				t.Fatal(err)
			}
			total += k
		})
		if !ok {
			t.Fatalf("replay with: go test ./instance -run TestPropertyRandomOrders -seed %d", seed)
		}
	}
	if total == 0 {
		t.Fatal("no instance was ever chosen: the property test is vacuous")
	}
	t.Logf("%d seeds, %d instances chosen", len(seeds), total)
}

// TestPropertyFindsInferenceBug: the same checker finds the planted PhxPaxos
// inference (Knobs.InferChosenFromNext) within its seed budget, so it can bite.
func TestPropertyFindsInferenceBug(t *testing.T) {
	for seed := uint64(1); seed <= 2000; seed++ {
		if _, err := runPure(t, seed, 3, 3000, Knobs{InferChosenFromNext: true}); err != nil {
			t.Logf("seed %d: %v", seed, err)
			return
		}
	}
	t.Fatal("2000 seeds and the planted inference bug was not found")
}

// TestFollowerAndMembershipChange: a follower takes Accepts and Chosen without
// voting; SetMembers changes the quorum and drops the fast path.
func TestFollowerAndMembershipChange(t *testing.T) {
	f, err := New(Config{Self: 4, Members: []ids.NodeID{1, 2, 3}, Followers: []ids.NodeID{4}}, Recovered{})
	if err != nil {
		t.Fatal(err)
	}
	b := ids.Ballot{Number: 1, Node: 1}
	if err := f.Step(Message{Type: MsgAccept, From: 1, Ballot: b, Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	rd := f.Ready()
	if len(rd.Entries) != 1 || len(rd.Messages) != 0 {
		t.Fatalf("a follower stores the accept and does not vote: %+v", rd)
	}
	_ = f.Step(Message{Type: MsgChosen, From: 1, Next: 1, Ballot: b, Checksum: Checksum([]byte("v"))})
	if f.Next() != 1 {
		t.Fatal("follower did not mark the chosen value")
	}
	if err := f.Propose([]byte("x")); err != ErrNotMember {
		t.Fatalf("a follower proposed: %v", err)
	}

	c := newCore(t, 1, []ids.NodeID{1}, Knobs{})
	_ = c.Propose([]byte("a"))
	for _, m := range c.Ready().Messages {
		_ = c.Step(m)
	}
	c.Ready()
	if !c.FastPath() {
		t.Fatal("no fast path after a won instance")
	}
	if err := c.SetMembers([]ids.NodeID{1, 2, 3}, nil); err != nil {
		t.Fatal(err)
	}
	if c.FastPath() {
		t.Fatal("the fast path survived a membership change")
	}
	_ = c.Propose([]byte("b"))
	rd = c.Ready()
	prepares := 0
	for _, m := range rd.Messages {
		if m.Type == MsgPrepare {
			prepares++
		}
	}
	if prepares != 2 {
		t.Fatalf("phase 1 under the new configuration must reach both new voters, got %d prepares", prepares)
	}
	if err := c.SetMembers(nil, nil); err == nil {
		t.Fatal("an empty voter set was accepted")
	}
}

func TestAbstainingMemberNeitherVotesNorProposes(t *testing.T) {
	c := newCore(t, 3, []ids.NodeID{1, 2, 3}, Knobs{})
	c.SetAbstain(true)
	b := ids.Ballot{Number: 1, Node: 1}
	if err := c.Step(Message{Type: MsgPrepare, From: 1, Ballot: b}); err == nil {
		t.Fatal("an abstaining member took a prepare")
	}
	if err := c.Step(Message{Type: MsgAccept, From: 1, Ballot: b, Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	rd := c.Ready()
	if len(rd.Messages) != 0 || len(rd.Entries) != 1 {
		t.Fatalf("an abstaining member keeps the value like a follower and does not vote: %+v", rd)
	}
	if err := c.Propose([]byte("x")); err != ErrNotMember {
		t.Fatalf("an abstaining member proposed: %v", err)
	}
	if c.IsMember(3) || !c.IsMember(1) {
		t.Fatal("abstaining changes only this member's own vote")
	}
	c.SetAbstain(false)
	b2 := ids.Ballot{Number: 2, Node: 2}
	if err := c.Step(Message{Type: MsgPrepare, From: 2, Ballot: b2}); err != nil {
		t.Fatal(err)
	}
	rd = c.Ready()
	if len(rd.Messages) != 1 || rd.Messages[0].Type != MsgPromise || rd.Messages[0].Reject ||
		rd.Messages[0].AcceptedBallot != b || string(rd.Messages[0].Value) != "v" {
		t.Fatalf("after abstaining, the promise reports what was kept: %+v", rd.Messages)
	}
}

// TestNonVoterRepliesMakeNoQuorum (audit 3, G8): a follower's Promise or Accepted
// never counts toward the proposer's quorum - neither through Step, which refuses
// it, nor in onPromise/onAccepted themselves.
func TestNonVoterRepliesMakeNoQuorum(t *testing.T) {
	c, err := New(Config{Self: 1, Members: []ids.NodeID{1, 2, 3}, Followers: []ids.NodeID{4, 5}, StatusIntervalTicks: -1}, Recovered{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Propose([]byte("a")); err != nil {
		t.Fatal(err)
	}
	for _, m := range c.Ready().Messages {
		if m.To == 1 { // the own promise, once persisted
			if err := c.Step(m); err != nil {
				t.Fatal(err)
			}
		}
	}
	sends := func(typ MsgType) int {
		rd := c.Ready()
		n := 0
		for _, m := range append(rd.SendNow, rd.Messages...) {
			if m.Type == typ && m.To != 1 {
				n++
			}
		}
		return n
	}
	b := c.Ballot()
	for _, f := range []ids.NodeID{4, 5} {
		promise := Message{Type: MsgPromise, From: f, To: 1, Instance: 0, Ballot: b}
		if err := c.Step(promise); err == nil {
			t.Fatalf("Step took a promise from follower %d", f)
		}
		c.onPromise(promise)
	}
	if n := sends(MsgAccept); n != 0 {
		t.Fatalf("phase 1 completed with the followers' promises: %d accepts sent", n)
	}
	if err := c.Step(Message{Type: MsgPromise, From: 2, To: 1, Instance: 0, Ballot: b}); err != nil {
		t.Fatal(err)
	}
	rd := c.Ready()
	accepts := 0
	for _, m := range rd.SendNow {
		if m.Type == MsgAccept {
			accepts++
		}
	}
	if accepts == 0 {
		t.Fatalf("no accepts after a voters' quorum of promises: %+v", rd)
	}
	for _, m := range rd.Messages {
		if m.To == 1 { // the own Accepted, once persisted
			if err := c.Step(m); err != nil {
				t.Fatal(err)
			}
		}
	}
	c.Ready()
	for _, f := range []ids.NodeID{4, 5} {
		accepted := Message{Type: MsgAccepted, From: f, To: 1, Instance: 0, Ballot: b}
		if err := c.Step(accepted); err == nil {
			t.Fatalf("Step took an Accepted from follower %d", f)
		}
		c.onAccepted(accepted)
	}
	if c.Next() != 0 || sends(MsgChosen) != 0 {
		t.Fatalf("chosen with the followers' votes: next=%d", c.Next())
	}
	if err := c.Step(Message{Type: MsgAccepted, From: 3, To: 1, Instance: 0, Ballot: b}); err != nil {
		t.Fatal(err)
	}
	c.Ready()
	if c.Next() != 1 {
		t.Fatalf("not chosen with a voters' quorum: next=%d", c.Next())
	}
}

// TestChosenCarriesNoValueOnFastPath (DESIGN 5.3): in a fast-path instance (no
// phase 1, the master's ballot unchallenged) every member that accepted the ballot
// learns the value from a Chosen with no value, only the checksum; it marks the
// instance chosen from the value it accepted and writes nothing again. On the wire
// the Chosen is a few bytes whatever the value's size.
func TestChosenCarriesNoValueOnFastPath(t *testing.T) {
	members := []ids.NodeID{1, 2, 3}
	var cores []*Core
	for _, id := range members {
		cores = append(cores, newCore(t, id, members, Knobs{}))
	}
	codec := NewCodec()
	var sent []Message // every message, in the order it was sent
	committed := map[ids.NodeID][]Entry{}
	rewritten := map[ids.NodeID]int{} // entries persisted after the receiver's Accepted
	var queue []Message
	drain := func(c *Core) {
		for c.HasReady() {
			rd := c.Ready()
			for _, m := range append(append([]Message(nil), rd.SendNow...), rd.Messages...) {
				m.From = c.Self()
				sent = append(sent, m)
				queue = append(queue, m) // persistence is instant here
			}
			committed[c.Self()] = append(committed[c.Self()], rd.Committed...)
			if len(rd.Committed) > 0 {
				rewritten[c.Self()] += len(rd.Entries)
			}
		}
	}
	run := func() {
		for len(queue) > 0 { // FIFO: a fault-free, in-order network
			m := queue[0]
			queue = queue[1:]
			got, err := codec.Decode(m.Type, codec.Encode(&m))
			if err != nil {
				t.Fatal(err)
			}
			got.From, got.To = m.From, m.To
			c := cores[m.To-1]
			if err := c.Step(got); err != nil {
				t.Fatal(err)
			}
			drain(c)
		}
	}
	propose := func(v []byte) {
		t.Helper()
		if err := cores[0].Propose(v); err != nil {
			t.Fatal(err)
		}
		drain(cores[0])
		run()
	}

	propose([]byte("first")) // instance 0: phase 1 and 2; node 1's ballot now stands
	if !cores[0].FastPath() {
		t.Fatal("node 1 did not keep the fast path after winning instance 0")
	}
	value := bytes.Repeat([]byte("payload-"), 512) // 4 KiB
	before := cores[0].Stats()
	sent, committed, rewritten = nil, map[ids.NodeID][]Entry{}, map[ids.NodeID]int{}
	propose(value) // instance 1: fast path
	if st := cores[0].Stats(); st.PreparesStarted != before.PreparesStarted || st.FastAccepts != before.FastAccepts+1 {
		t.Fatalf("instance 1 was not a fast-path instance: stats %+v, before %+v", st, before)
	}

	var chosen, accepts int
	var ballot ids.Ballot
	for _, m := range sent {
		switch m.Type {
		case MsgPrepare, MsgPromise, MsgLearnReq, MsgLearnValues:
			t.Fatalf("fast-path instance sent %v: %+v", m.Type, m)
		case MsgAccept:
			accepts++
			ballot = m.Ballot
		case MsgChosen:
			if m.From != 1 {
				continue
			}
			chosen++
			if len(m.Value) != 0 || len(m.Entries) != 0 {
				t.Fatalf("Chosen to node %d carries the value (%d bytes, %d entries)", m.To, len(m.Value), len(m.Entries))
			}
			if m.Instance != 1 || m.Ballot != ballot || m.Checksum != Checksum(value) {
				t.Fatalf("Chosen %+v, want instance 1, ballot %v, checksum %#x", m, ballot, Checksum(value))
			}
			if n := len(codec.Encode(&m)); n >= 64 {
				t.Fatalf("Chosen encodes to %d bytes for a %d-byte value, want a few", n, len(value))
			}
		}
	}
	if accepts == 0 || chosen != len(members)-1 {
		t.Fatalf("%d Accepts and %d Chosen to peers, want Accepts and %d Chosen", accepts, chosen, len(members)-1)
	}
	for _, c := range cores {
		got := committed[c.Self()]
		if c.Next() != 2 || len(got) != 1 || got[0].Instance != 1 || !bytes.Equal(got[0].Value, value) {
			t.Fatalf("node %d: next %d, committed %d entries, want instance 1 with the value", c.Self(), c.Next(), len(got))
		}
		if c.Self() != 1 && rewritten[c.Self()] != 0 {
			t.Fatalf("node %d persisted %d entries along with the Chosen: the value was written again", c.Self(), rewritten[c.Self()])
		}
	}
}
