package netio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/multipaxos/engine/ids"
)

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// fakeClock is a simulation clock the test advances by hand.
type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time { return c.now }

// memSim wires n endpoints on one network and logs deliveries as text.
type memSim struct {
	net   *MemNetwork
	clock *fakeClock
	eps   map[ids.NodeID]Transport
	mu    sync.Mutex
	log   []string
	got   map[ids.NodeID][]rxFrame
}

func newMemSim(seed int64, n int) *memSim {
	s := &memSim{net: NewMemNetwork(seed), clock: &fakeClock{now: epoch}, eps: map[ids.NodeID]Transport{},
		got: map[ids.NodeID][]rxFrame{}}
	s.net.SetClock(s.clock.Now)
	for i := 1; i <= n; i++ {
		id := ids.NodeID(i)
		s.eps[id] = s.net.Endpoint(id, func(from ids.NodeID, g ids.GroupID, typ uint8, body []byte) {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.log = append(s.log, fmt.Sprintf("%v %d->%d g%d t%d %x", s.clock.now.Sub(epoch), from, id, g, typ, body))
			s.got[id] = append(s.got[id], rxFrame{from, g, typ, bytes.Clone(body)})
		})
	}
	return s
}

func seqBody(seq uint32) []byte { return binary.BigEndian.AppendUint32(nil, seq) }

// runAll advances the fake clock from delivery to delivery until nothing is in flight.
func (s *memSim) runAll() {
	for {
		next, ok := s.net.NextDelivery()
		if !ok {
			return
		}
		if next.After(s.clock.now) {
			s.clock.now = next
		}
		s.net.DeliverDue(s.clock.now)
	}
}

func TestMemDeliversCopiesInOrder(t *testing.T) {
	s := newMemSim(1, 2)
	body := []byte("abc")
	for i := 0; i < 100; i++ {
		if !s.eps[1].Send(2, 3, 4, seqBody(uint32(i))) {
			t.Fatal("send refused")
		}
	}
	if !s.eps[1].Send(2, 3, 4, body) {
		t.Fatal("send refused")
	}
	copy(body, "xyz") // the network must have its own copy
	if s.net.InFlight() != 101 {
		t.Fatalf("in flight %d", s.net.InFlight())
	}
	if n := len(s.got[2]); n != 0 {
		t.Fatalf("%d frames delivered before the caller drove the network", n)
	}
	if got := s.net.DeliverDue(s.clock.now); got != 101 {
		t.Fatalf("delivered %d", got)
	}
	for i, f := range s.got[2][:100] {
		if binary.BigEndian.Uint32(f.body) != uint32(i) || f.from != 1 || f.group != 3 || f.typ != 4 {
			t.Fatalf("frame %d: %+v", i, f)
		}
	}
	if string(s.got[2][100].body) != "abc" {
		t.Fatalf("body aliased the sender's buffer: %q", s.got[2][100].body)
	}
	st := s.eps[2].Stats()
	if st.FramesReceived != 101 || s.eps[1].Stats().FramesSent != 101 {
		t.Fatalf("stats %+v / %+v", s.eps[1].Stats(), st)
	}
	// Refusals the sender can know about.
	if s.eps[1].Send(1, 0, 1, nil) || s.eps[1].Send(2, 0, TypeControl, nil) ||
		s.eps[1].Send(2, 0, 1, make([]byte, MaxBodyBytes(DefaultMaxFrameBytes)+1)) {
		t.Fatal("invalid send accepted")
	}
}

func TestMemFaultRates(t *testing.T) {
	const n = 20000
	s := newMemSim(7, 2)
	if err := s.net.SetFaults(Faults{DropRate: 0.2, DuplicateRate: 0.1, DelayMin: time.Millisecond, DelayMax: 50 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		s.eps[1].Send(2, 0, 1, seqBody(uint32(i)))
		s.clock.now = s.clock.now.Add(100 * time.Microsecond) // sends spread over 2 s
	}
	s.runAll()
	st := s.net.Stats()
	dropped, dups, recv := st.Dropped.Fault, st.Duplicated, st.FramesReceived
	// Binomial spreads are about 1% of n here; the bounds are 5 standard deviations wide.
	if dropped < n*18/100 || dropped > n*22/100 {
		t.Fatalf("dropped %d of %d, want about 20%%", dropped, n)
	}
	if dups < (n-dropped)*8/100 || dups > (n-dropped)*12/100 {
		t.Fatalf("duplicated %d of %d, want about 10%%", dups, n-dropped)
	}
	if recv != n-dropped+dups || st.FramesSent != n {
		t.Fatalf("received %d, want %d (sent %d)", recv, n-dropped+dups, st.FramesSent)
	}
	// Random delays reorder: count inversions; a duplicate shows up as a repeated seq.
	seen := map[uint32]int{}
	inversions := 0
	var prev uint32
	for i, f := range s.got[2] {
		seq := binary.BigEndian.Uint32(f.body)
		seen[seq]++
		if i > 0 && seq < prev {
			inversions++
		}
		prev = seq
	}
	if inversions == 0 {
		t.Fatal("random delays did not reorder anything")
	}
	for seq, c := range seen {
		if c > 2 {
			t.Fatalf("seq %d delivered %d times", seq, c)
		}
	}
	if s.net.InFlight() != 0 {
		t.Fatalf("%d frames left in flight", s.net.InFlight())
	}
	if err := s.net.SetFaults(Faults{DropRate: 1.5, DelayMin: 2, DelayMax: 1}); !errors.Is(err, ErrBadFaults) {
		t.Fatalf("bad faults accepted: %v", err)
	}
}

func TestMemPartitions(t *testing.T) {
	s := newMemSim(3, 3)
	deliveredTo := func(to ids.NodeID, from ids.NodeID) int {
		c := 0
		for _, f := range s.got[to] {
			if f.from == from {
				c++
			}
		}
		return c
	}
	sendAll := func() {
		for a := ids.NodeID(1); a <= 3; a++ {
			for b := ids.NodeID(1); b <= 3; b++ {
				if a != b {
					s.eps[a].Send(b, 0, 1, nil)
				}
			}
		}
		s.runAll()
	}
	reset := func() { s.got = map[ids.NodeID][]rxFrame{} }
	links := func() string { // which directed links carried a frame
		var out []string
		for a := ids.NodeID(1); a <= 3; a++ {
			for b := ids.NodeID(1); b <= 3; b++ {
				if a != b && deliveredTo(b, a) > 0 {
					out = append(out, fmt.Sprintf("%d>%d", a, b))
				}
			}
		}
		return strings.Join(out, " ")
	}
	steps := []struct {
		do   func()
		want string
	}{
		{func() {}, "1>2 1>3 2>1 2>3 3>1 3>2"},
		{func() { s.net.Partition(1, 2) }, "1>3 2>3 3>1 3>2"},
		{func() { s.net.Heal(1, 2) }, "1>2 1>3 2>1 2>3 3>1 3>2"},
		{func() { s.net.PartitionOneWay(1, 3) }, "1>2 2>1 2>3 3>1 3>2"},
		{func() { s.net.Isolate(2) }, "3>1"},
		{func() { s.net.Heal(1, 3) }, "1>3 3>1"},
		{func() { s.net.Rejoin(2) }, "1>2 1>3 2>1 2>3 3>1 3>2"},
		{func() { s.net.Partition(2, 3); s.net.Isolate(1) }, ""},
		{func() { s.net.HealAll() }, "1>2 1>3 2>1 2>3 3>1 3>2"},
	}
	for i, st := range steps {
		reset()
		st.do()
		sendAll()
		if got := links(); got != st.want {
			t.Fatalf("step %d: links %q, want %q", i, got, st.want)
		}
	}

	// A partition also cuts frames already in flight.
	reset()
	s.eps[1].Send(2, 0, 1, nil)
	s.net.Partition(1, 2)
	s.runAll()
	if deliveredTo(2, 1) != 0 {
		t.Fatal("in-flight frame crossed a new partition")
	}
	if s.net.Stats().Dropped.Partition == 0 {
		t.Fatal("partition drops not counted")
	}
}

func TestMemRestartedEndpointGetsNoOldTraffic(t *testing.T) {
	s := newMemSim(5, 2)
	s.eps[1].Send(2, 0, 1, []byte("old"))
	_ = s.eps[2].Close()
	s.eps[1].Send(2, 0, 1, []byte("while down"))
	var got []string
	s.net.Endpoint(2, func(_ ids.NodeID, _ ids.GroupID, _ uint8, body []byte) { got = append(got, string(body)) })
	s.eps[1].Send(2, 0, 1, []byte("new"))
	s.runAll()
	if strings.Join(got, ",") != "new" {
		t.Fatalf("restarted endpoint got %q", got)
	}
	if d := s.eps[1].Stats().Dropped.Unreachable; d != 2 {
		t.Fatalf("unreachable drops %d, want 2", d)
	}
	if s.eps[2].Send(1, 0, 1, nil) {
		t.Fatal("closed endpoint sent")
	}
}

// Deterministic mode: the same seed and calls give the same deliveries, including
// the replies Handlers send from inside DeliverDue.
func TestMemDeterministicReplay(t *testing.T) {
	run := func(seed int64) []string {
		s := newMemSim(seed, 3)
		_ = s.net.SetFaults(Faults{DropRate: 0.1, DuplicateRate: 0.1, DelayMax: 20 * time.Millisecond})
		// Node 3 (replacing the plain recorder) echoes everything back to its sender
		// until the hop count runs out.
		var echo Transport
		echo = s.net.Endpoint(3, func(from ids.NodeID, g ids.GroupID, typ uint8, body []byte) {
			s.mu.Lock()
			s.log = append(s.log, fmt.Sprintf("%v %d->3 g%d %x", s.clock.now.Sub(epoch), from, g, body))
			s.mu.Unlock()
			if hops := body[0]; hops > 0 {
				echo.Send(from, g, typ, append([]byte{hops - 1}, body[1:]...))
			}
		})
		for i := 0; i < 300; i++ {
			from := ids.NodeID(1 + i%2)
			s.eps[from].Send(3, ids.GroupID(i%7), 1, []byte{3, byte(i)})
			if i%10 == 0 {
				s.clock.now = s.clock.now.Add(3 * time.Millisecond)
				s.net.DeliverDue(s.clock.now)
			}
		}
		s.runAll()
		return s.log
	}
	a, b := run(42), run(42)
	if len(a) < 300 {
		t.Fatalf("only %d deliveries", len(a))
	}
	if strings.Join(a, "\n") != strings.Join(b, "\n") {
		t.Fatal("same seed, different deliveries")
	}
	if strings.Join(a, "\n") == strings.Join(run(43), "\n") {
		t.Fatal("different seeds, identical deliveries: faults are not drawn from the seed")
	}
}

func TestMemDeliverOneAndNextDelivery(t *testing.T) {
	s := newMemSim(9, 2)
	_ = s.net.SetFaults(Faults{DelayMin: 10 * time.Millisecond, DelayMax: 10 * time.Millisecond})
	s.eps[1].Send(2, 0, 1, []byte{1})
	s.clock.now = s.clock.now.Add(time.Millisecond)
	s.eps[1].Send(2, 0, 1, []byte{2})
	next, ok := s.net.NextDelivery()
	if !ok || !next.Equal(epoch.Add(10*time.Millisecond)) {
		t.Fatalf("next delivery %v %v", next, ok)
	}
	if s.net.DeliverOne(epoch.Add(9 * time.Millisecond)) {
		t.Fatal("delivered a frame before it was due")
	}
	if !s.net.DeliverOne(next) || len(s.got[2]) != 1 || s.got[2][0].body[0] != 1 {
		t.Fatalf("DeliverOne: %+v", s.got[2])
	}
	if s.net.DeliverDue(next) != 0 || s.net.InFlight() != 1 {
		t.Fatal("second frame delivered early")
	}
	if s.net.DeliverDue(epoch.Add(11*time.Millisecond)) != 1 {
		t.Fatal("second frame not delivered")
	}
	if _, ok := s.net.NextDelivery(); ok {
		t.Fatal("network not empty")
	}
}

// Frames sent by Handlers during DeliverDue wait for the next call, so a zero-delay
// ping-pong cannot make one call run forever.
func TestMemDeliverDueIsBounded(t *testing.T) {
	n := NewMemNetwork(1)
	n.SetClock(func() time.Time { return epoch })
	var a, b Transport
	a = n.Endpoint(1, func(ids.NodeID, ids.GroupID, uint8, []byte) { a.Send(2, 0, 1, nil) })
	b = n.Endpoint(2, func(ids.NodeID, ids.GroupID, uint8, []byte) { b.Send(1, 0, 1, nil) })
	a.Send(2, 0, 1, nil)
	for i := 0; i < 10; i++ {
		if got := n.DeliverDue(epoch); got != 1 {
			t.Fatalf("call %d delivered %d", i, got)
		}
	}
}

func TestMemRealTime(t *testing.T) {
	n := NewMemNetwork(11)
	_ = n.SetFaults(Faults{DelayMin: time.Millisecond, DelayMax: 5 * time.Millisecond})
	var mu sync.Mutex
	got := map[uint32]bool{}
	done := make(chan struct{})
	var echo Transport
	echo = n.Endpoint(2, func(from ids.NodeID, g ids.GroupID, typ uint8, body []byte) {
		echo.Send(from, g, typ, body) // reply from the pump goroutine
	})
	a := n.Endpoint(1, func(_ ids.NodeID, _ ids.GroupID, _ uint8, body []byte) {
		mu.Lock()
		defer mu.Unlock()
		got[binary.BigEndian.Uint32(body)] = true
		if len(got) == 200 {
			close(done)
		}
	})
	n.Start()
	n.Start() // no-op
	for i := 0; i < 200; i++ {
		a.Send(2, 0, 1, seqBody(uint32(i)))
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("echoes did not arrive")
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if a.Send(2, 0, 1, nil) {
		t.Fatal("send after network close accepted")
	}
	if st := n.Stats(); st.FramesReceived != 400 || st.Dropped.Closed != 1 {
		t.Fatalf("stats %+v", st)
	}
}
