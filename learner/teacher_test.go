package learner

import (
	"flag"
	"math/rand/v2"
	"testing"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/instance"
)

var seedFlag = flag.Uint64("learner.seed", 0, "seed of TestStreamUnderFaults (0: random)")

// memLog is a log of chosen values [min, next) with values of a fixed size.
type memLog struct {
	min, next ids.InstanceID
	size      int
	reads     int
}

func (l *memLog) Entries(from ids.InstanceID, maxCount, maxBytes int) ([]instance.Entry, error) {
	l.reads++
	var out []instance.Entry
	bytes := 0
	for i := from; i < l.next && i >= l.min && len(out) < maxCount; i++ {
		if len(out) > 0 && bytes+l.size > maxBytes {
			break
		}
		bytes += l.size
		out = append(out, instance.Entry{Instance: i, Value: valueOf(i, l.size)})
	}
	return out, nil
}

func valueOf(i ids.InstanceID, size int) []byte {
	v := make([]byte, size)
	for k := range v {
		v[k] = byte(uint64(i) + uint64(k))
	}
	return v
}

type sent struct {
	to ids.NodeID
	es []instance.Entry
}

func collect(out *[]sent) func(ids.NodeID, []instance.Entry) {
	return func(to ids.NodeID, es []instance.Entry) { *out = append(*out, sent{to, es}) }
}

func TestWindowBoundsWhatIsInFlight(t *testing.T) {
	log := &memLog{next: 10_000, size: 100}
	tc := New(Config{WindowCount: 64, WindowBytes: 1 << 20, MessageCount: 16})
	tc.Request(2, 0)
	var out []sent
	if _, err := tc.Pump(log.next, 0, log, nil, collect(&out)); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, s := range out {
		n += len(s.es)
		if len(s.es) > 16 {
			t.Fatalf("message of %d values, limit 16", len(s.es))
		}
	}
	if n != 64 {
		t.Fatalf("sent %d values unacked, window 64", n)
	}
	// Pumping again sends nothing until an ack.
	out = nil
	tc.Pump(log.next, 0, log, nil, collect(&out))
	if len(out) != 0 {
		t.Fatalf("sent %d messages beyond the window", len(out))
	}
	// An ack of 20 opens 20 more.
	tc.Request(2, 20)
	tc.Pump(log.next, 0, log, nil, collect(&out))
	n = 0
	for _, s := range out {
		n += len(s.es)
	}
	if n != 20 || out[0].es[0].Instance != 64 {
		t.Fatalf("after ack of 20: sent %d from %d", n, out[0].es[0].Instance)
	}

	// The byte window binds too.
	tb := New(Config{WindowCount: 1000, WindowBytes: 1000, MessageCount: 4})
	tb.Request(3, 0)
	out = nil
	tb.Pump(log.next, 0, log, nil, collect(&out))
	n = 0
	for _, s := range out {
		n += len(s.es)
	}
	if n*log.size > 1000 || n == 0 {
		t.Fatalf("sent %d values of %d bytes with a 1000-byte window", n, log.size)
	}
}

func TestGoBackAfterSilence(t *testing.T) {
	log := &memLog{next: 100, size: 10}
	tc := New(Config{WindowCount: 8, ResendTicks: 3})
	tc.Request(2, 5)
	var out []sent
	tc.Pump(log.next, 0, log, nil, collect(&out))
	if len(out) == 0 || out[0].es[0].Instance != 5 {
		t.Fatalf("first send: %+v", out)
	}
	for range 3 {
		tc.Tick()
	}
	out = nil
	tc.Pump(log.next, 0, log, nil, collect(&out))
	if len(out) == 0 || out[0].es[0].Instance != 5 || tc.Stats().Resends != 1 {
		t.Fatalf("after the timeout it must resend from the ack: %+v, %+v", out, tc.Stats())
	}
}

func TestSessionEndsWhenCaughtUpOrSilent(t *testing.T) {
	log := &memLog{next: 50, size: 10}
	tc := New(Config{IdleTicks: 10})
	tc.Request(2, 0)
	tc.Pump(log.next, 0, log, nil, func(ids.NodeID, []instance.Entry) {})
	tc.Request(2, 50)
	tc.Pump(log.next, 0, log, nil, func(ids.NodeID, []instance.Entry) {})
	if tc.Active() {
		t.Fatal("session open after the learner caught up")
	}
	tc.Request(3, 10)
	for range 10 {
		tc.Tick()
	}
	if tc.Active() {
		t.Fatal("session open after the learner went silent")
	}
}

// TestSilentSessionsEndWhileOthersGoOn: sessions ending in one Tick, before and
// between live ones (a Tick that removes entries while it walks them).
func TestSilentSessionsEndWhileOthersGoOn(t *testing.T) {
	tc := New(Config{IdleTicks: 5})
	for n := ids.NodeID(1); n <= 6; n++ {
		tc.Request(n, 0)
	}
	for range 5 {
		tc.Request(3, 0)
		tc.Request(6, 0)
		tc.Tick()
	}
	if len(tc.sessions) != 2 || tc.sessions[3] == nil || tc.sessions[6] == nil || len(tc.order) != 2 {
		t.Fatalf("sessions left: %v", tc.order)
	}
}

func TestLearnerThatWentBackRestartsTheStream(t *testing.T) {
	log := &memLog{next: 500, size: 10}
	tc := New(Config{WindowCount: 32})
	tc.Request(2, 100)
	tc.Pump(log.next, 0, log, nil, func(ids.NodeID, []instance.Entry) {})
	tc.Request(2, 40) // restarted, lost what it had not synced
	var out []sent
	tc.Pump(log.next, 0, log, nil, collect(&out))
	if len(out) == 0 || out[0].es[0].Instance != 40 {
		t.Fatalf("stream did not restart at 40: %+v", out)
	}
}

func TestTrimmedInstancesNeedACheckpoint(t *testing.T) {
	log := &memLog{min: 1000, next: 5000, size: 10}
	tc := New(Config{})
	tc.Request(2, 10)
	tc.Request(3, 2000)
	var out []sent
	need, err := tc.Pump(log.next, log.min, log, nil, collect(&out))
	if err != nil || len(need) != 1 || need[0] != 2 {
		t.Fatalf("need %v, %v", need, err)
	}
	for _, s := range out {
		if s.to == 2 {
			t.Fatal("streamed to a learner that needs a checkpoint")
		}
	}
	// It is reported once, and again only after it asks again.
	if need, _ := tc.Pump(log.next, log.min, log, nil, collect(&out)); len(need) != 0 {
		t.Fatalf("reported twice: %v", need)
	}
	tc.Request(2, 10)
	if need, _ := tc.Pump(log.next, log.min, log, nil, collect(&out)); len(need) != 1 {
		t.Fatalf("not reported after a new request: %v", need)
	}
	// Installed a checkpoint at 1500: the stream goes on from the log.
	tc.Request(2, 1500)
	out = nil
	tc.Pump(log.next, log.min, log, nil, collect(&out))
	if len(out) == 0 || out[0].to != 2 || out[0].es[0].Instance != 1500 {
		t.Fatalf("after the checkpoint: %+v", out)
	}
}

type budget struct{ left int }

func (b *budget) Take(n int) bool {
	if n > b.left {
		return false
	}
	b.left -= n
	return true
}

func TestBudgetSharesBandwidth(t *testing.T) {
	log := &memLog{next: 100_000, size: 100}
	b := &budget{left: 5000}
	tc := New(Config{})
	tc.Request(2, 0)
	tc.Request(3, 0)
	var out []sent
	tc.Pump(log.next, 0, log, b, collect(&out))
	bytes := 0
	for _, s := range out {
		bytes += len(s.es) * log.size
	}
	if bytes > 5000 || tc.Stats().BudgetWaits != 1 {
		t.Fatalf("sent %d bytes on a 5000-byte budget, %d waits", bytes, tc.Stats().BudgetWaits)
	}
}

func TestSessionsBounded(t *testing.T) {
	tc := New(Config{SessionsMax: 2})
	for n := ids.NodeID(1); n <= 5; n++ {
		tc.Request(n, 0)
	}
	if len(tc.sessions) != 2 {
		t.Fatalf("%d sessions, limit 2", len(tc.sessions))
	}
}

// TestStreamUnderFaults runs a teacher and a learner over a channel that loses,
// duplicates and reorders messages and acks; the learner must end with every value
// in order, each exactly once.
func TestStreamUnderFaults(t *testing.T) {
	seed := *seedFlag
	if seed == 0 {
		seed = rand.Uint64()
	}
	t.Logf("seed %d (replay: go test ./learner -run TestStreamUnderFaults -args -learner.seed %d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	const total = 3000
	log := &memLog{next: total, size: 50}
	tc := New(Config{WindowCount: 100, WindowBytes: 1 << 20, MessageCount: 10, ResendTicks: 5})

	type pkt struct {
		at  int
		es  []instance.Entry
		ack ids.InstanceID
	}
	var toLearner, toTeacher []pkt
	var next ids.InstanceID // the learner's
	applied := 0
	deliver := func(q *[]pkt, now int, fn func(pkt)) {
		var keep []pkt
		for _, p := range *q {
			if p.at <= now {
				fn(p)
			} else {
				keep = append(keep, p)
			}
		}
		*q = keep
	}
	lossy := func(q *[]pkt, p pkt, now int) {
		if rng.IntN(100) < 10 {
			return // lost
		}
		p.at = now + rng.IntN(4)
		*q = append(*q, p)
		if rng.IntN(100) < 5 {
			p.at = now + rng.IntN(6)
			*q = append(*q, p) // duplicated
		}
	}
	tc.Request(2, 0)
	for now := 0; now < 100_000 && next < total; now++ {
		tc.Tick()
		if now%3 == 0 {
			tc.Request(2, next) // the learner's retry timer (also an ack)
		}
		if _, err := tc.Pump(log.next, 0, log, nil, func(_ ids.NodeID, es []instance.Entry) {
			lossy(&toLearner, pkt{es: es}, now)
		}); err != nil {
			t.Fatal(err)
		}
		deliver(&toLearner, now, func(p pkt) {
			progressed := false
			for _, e := range p.es {
				if e.Instance < next {
					continue
				}
				if e.Instance > next {
					break
				}
				if string(e.Value) != string(valueOf(e.Instance, log.size)) {
					t.Fatalf("instance %d: wrong value", e.Instance)
				}
				next++
				applied++
				progressed = true
			}
			if progressed {
				lossy(&toTeacher, pkt{ack: next}, now)
			}
		})
		deliver(&toTeacher, now, func(p pkt) { tc.Request(2, p.ack) })
	}
	if next != total || applied != total {
		t.Fatalf("learner at %d, applied %d; want %d", next, applied, total)
	}
	t.Logf("%+v", tc.Stats())
}
