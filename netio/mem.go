package netio

import (
	"bytes"
	"container/heap"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/multipaxos/engine/ids"
)

// MemNetwork is an in-memory network of Transport endpoints with injected faults: random
// loss, duplication and delay (unequal delays reorder frames), and directed
// partitions. It has two delivery modes:
//
//   - Deterministic (the default): nothing moves until the caller drives it. Each frame
//     gets a virtual delivery time, clock() + delay, where clock is set with SetClock
//     (the simulation's fake clock). DeliverDue and DeliverOne call the receivers'
//     Handlers synchronously on the caller's goroutine, in (delivery time, send
//     sequence) order. All randomness comes from one PCG seeded by the seed, so the
//     same seed and the same sequence of calls give the same deliveries.
//   - Real time: Start runs one pump goroutine that delivers each frame once its delay
//     has passed on the wall clock; Close stops it. Use the default clock (time.Now).
//
// Partitions are checked when a frame is sent and again when it is delivered, so a
// partition also cuts frames already in flight. A frame is delivered only to the
// endpoint incarnation that was registered for its destination when it was sent: a
// restarted endpoint does not receive its predecessor's traffic, as with TCP.
//
// Handlers get a private copy of the body, which is overwritten after the Handler
// returns, so a Handler that keeps the slice (breaking the Handler contract) fails
// loudly in tests instead of silently in production.
type MemNetwork struct {
	mu       sync.Mutex
	rng      *rand.Rand
	faults   Faults
	clock    func() time.Time
	eps      map[ids.NodeID]*memEndpoint // live incarnation per node
	all      []*memEndpoint              // every endpoint ever made, for Stats
	cut      map[link]bool               // directed links blocked by Partition*
	isolated map[ids.NodeID]bool
	q        frameQueue
	seq      uint64
	closed   bool

	running bool // the real-time pump is running
	wake    chan struct{}
	stop    chan struct{}
	done    chan struct{}
}

// Faults are the random faults applied to each frame as it is sent.
type Faults struct {
	DropRate      float64 // probability in [0, 1] that a frame is lost
	DuplicateRate float64 // probability in [0, 1] that a frame is delivered twice; the copy has its own delay
	// DelayMin and DelayMax bound a delay drawn uniformly per frame (and per copy).
	// Unequal delays reorder frames; both zero means delivery at the send time.
	DelayMin, DelayMax time.Duration
}

// ErrBadFaults is returned by SetFaults for out-of-range values.
var ErrBadFaults = errors.New("netio: invalid faults")

type link struct{ from, to ids.NodeID }

// NewMemNetwork returns an empty network in deterministic mode whose randomness is
// drawn from seed.
func NewMemNetwork(seed int64) *MemNetwork {
	return &MemNetwork{
		rng:      rand.New(rand.NewPCG(uint64(seed), 0x9e3779b97f4a7c15)),
		clock:    time.Now,
		eps:      make(map[ids.NodeID]*memEndpoint),
		cut:      make(map[link]bool),
		isolated: make(map[ids.NodeID]bool),
	}
}

// Endpoint registers node id with handler h and returns its Transport. An endpoint that
// was registered for id before is closed and replaced (a restart). h must not block;
// it runs on the goroutine that delivers (DeliverDue's caller or the pump).
func (n *MemNetwork) Endpoint(id ids.NodeID, h Handler) Transport {
	e := &memEndpoint{n: n, id: id, h: h}
	n.mu.Lock()
	defer n.mu.Unlock()
	if old := n.eps[id]; old != nil {
		old.closed = true
	}
	n.eps[id] = e
	n.all = append(n.all, e)
	return e
}

// SetClock sets the source of send times (nil restores time.Now). The clock is called
// under the network's lock: it must not call back into the network.
func (n *MemNetwork) SetClock(clock func() time.Time) {
	if clock == nil {
		clock = time.Now
	}
	n.mu.Lock()
	n.clock = clock
	n.mu.Unlock()
}

// SetFaults replaces the fault settings for frames sent from now on.
func (n *MemNetwork) SetFaults(f Faults) error {
	var p []string
	if !(f.DropRate >= 0 && f.DropRate <= 1) {
		p = append(p, fmt.Sprintf("DropRate %v not in [0, 1]", f.DropRate))
	}
	if !(f.DuplicateRate >= 0 && f.DuplicateRate <= 1) {
		p = append(p, fmt.Sprintf("DuplicateRate %v not in [0, 1]", f.DuplicateRate))
	}
	if f.DelayMin < 0 || f.DelayMax < f.DelayMin {
		p = append(p, fmt.Sprintf("delays must satisfy 0 <= DelayMin (%v) <= DelayMax (%v)", f.DelayMin, f.DelayMax))
	}
	if len(p) > 0 {
		return fmt.Errorf("%w: %v", ErrBadFaults, p)
	}
	n.mu.Lock()
	n.faults = f
	n.mu.Unlock()
	return nil
}

// Partition cuts the links between a and b in both directions.
func (n *MemNetwork) Partition(a, b ids.NodeID) {
	n.mu.Lock()
	n.cut[link{a, b}], n.cut[link{b, a}] = true, true
	n.mu.Unlock()
}

// PartitionOneWay cuts the link from `from` to `to` only.
func (n *MemNetwork) PartitionOneWay(from, to ids.NodeID) {
	n.mu.Lock()
	n.cut[link{from, to}] = true
	n.mu.Unlock()
}

// Heal restores both directions between a and b that Partition or PartitionOneWay cut.
// It does not undo Isolate.
func (n *MemNetwork) Heal(a, b ids.NodeID) {
	n.mu.Lock()
	delete(n.cut, link{a, b})
	delete(n.cut, link{b, a})
	n.mu.Unlock()
}

// Isolate cuts id from every other node, present and future, until Rejoin or HealAll.
func (n *MemNetwork) Isolate(id ids.NodeID) {
	n.mu.Lock()
	n.isolated[id] = true
	n.mu.Unlock()
}

// Rejoin undoes Isolate(id); links cut by Partition stay cut.
func (n *MemNetwork) Rejoin(id ids.NodeID) {
	n.mu.Lock()
	delete(n.isolated, id)
	n.mu.Unlock()
}

// HealAll removes every partition and isolation.
func (n *MemNetwork) HealAll() {
	n.mu.Lock()
	clear(n.cut)
	clear(n.isolated)
	n.mu.Unlock()
}

func (n *MemNetwork) blockedLocked(from, to ids.NodeID) bool {
	return n.cut[link{from, to}] || n.isolated[from] || n.isolated[to]
}

// NextDelivery returns the delivery time of the earliest frame in flight.
func (n *MemNetwork) NextDelivery() (time.Time, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.q) == 0 {
		return time.Time{}, false
	}
	return n.q[0].due, true
}

// InFlight returns the number of frames sent and not yet delivered or dropped.
func (n *MemNetwork) InFlight() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.q)
}

// DeliverDue delivers every frame due at or before now, in (delivery time, sequence)
// order, and returns how many reached a Handler. Frames that the Handlers send during
// the call wait for the next call even if already due: a request-reply loop with no
// delay cannot make one call run forever, and each call's work is fixed at its start.
func (n *MemNetwork) DeliverDue(now time.Time) int {
	n.mu.Lock()
	var batch []*memFrame
	for len(n.q) > 0 && !n.q[0].due.After(now) {
		batch = append(batch, heap.Pop(&n.q).(*memFrame))
	}
	n.mu.Unlock()
	delivered := 0
	for _, f := range batch {
		if n.deliver(f) {
			delivered++
		}
	}
	return delivered
}

// DeliverOne delivers the earliest frame if it is due at or before now. It reports
// whether a frame was taken off the network (delivered or dropped at delivery).
func (n *MemNetwork) DeliverOne(now time.Time) bool {
	n.mu.Lock()
	if len(n.q) == 0 || n.q[0].due.After(now) {
		n.mu.Unlock()
		return false
	}
	f := heap.Pop(&n.q).(*memFrame)
	n.mu.Unlock()
	n.deliver(f)
	return true
}

func (n *MemNetwork) deliver(f *memFrame) bool {
	n.mu.Lock()
	ep := n.eps[f.to]
	if ep == nil || ep != f.dst {
		n.mu.Unlock()
		f.src.stats.dropUnreachable.Add(1)
		return false
	}
	if n.blockedLocked(f.from, f.to) {
		n.mu.Unlock()
		f.src.stats.dropPartition.Add(1)
		return false
	}
	n.mu.Unlock()
	ep.stats.framesReceived.Add(1)
	ep.stats.bytesReceived.Add(uint64(FrameHeaderSize + len(f.body)))
	if ep.h != nil {
		ep.h(f.from, f.group, f.typ, f.body)
	}
	for i := range f.body {
		f.body[i] = 0xDB
	}
	return true
}

// Start switches to real-time delivery: one pump goroutine delivers frames when their
// delay has passed. Close stops it. Calling Start again is a no-op.
func (n *MemNetwork) Start() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.running || n.closed {
		return
	}
	n.running = true
	n.wake = make(chan struct{}, 1)
	n.stop = make(chan struct{})
	n.done = make(chan struct{})
	go n.pump(n.wake, n.stop, n.done)
}

func (n *MemNetwork) pump(wake, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		n.DeliverDue(time.Now())
		if next, ok := n.NextDelivery(); ok {
			d := time.Until(next)
			if d <= 0 {
				select {
				case <-stop:
					return
				default:
					continue
				}
			}
			timer.Reset(d)
		} else {
			timer.Stop()
		}
		select {
		case <-stop:
			return
		case <-wake:
		case <-timer.C:
		}
	}
}

// Close stops the real-time pump (waiting for it) and makes every later Send fail.
// Frames in flight are discarded. It must not be called from a Handler.
func (n *MemNetwork) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	running, stop, done := n.running, n.stop, n.done
	n.running = false
	n.q = nil
	n.mu.Unlock()
	if running {
		close(stop)
		<-done
	}
	return nil
}

// Stats sums the counters of every endpoint the network has had.
func (n *MemNetwork) Stats() Stats {
	n.mu.Lock()
	all := append([]*memEndpoint(nil), n.all...)
	n.mu.Unlock()
	var s Stats
	for _, e := range all {
		s = s.add(e.Stats())
	}
	return s
}

func (s Stats) add(o Stats) Stats {
	s.FramesSent += o.FramesSent
	s.BytesSent += o.BytesSent
	s.Writes += o.Writes
	s.FramesReceived += o.FramesReceived
	s.BytesReceived += o.BytesReceived
	s.Dropped.QueueFull += o.Dropped.QueueFull
	s.Dropped.Unreachable += o.Dropped.Unreachable
	s.Dropped.UnknownPeer += o.Dropped.UnknownPeer
	s.Dropped.TooLarge += o.Dropped.TooLarge
	s.Dropped.Closed += o.Dropped.Closed
	s.Dropped.Lost += o.Dropped.Lost
	s.Dropped.Fault += o.Dropped.Fault
	s.Dropped.Partition += o.Dropped.Partition
	s.Duplicated += o.Duplicated
	s.ConnsOpened += o.ConnsOpened
	s.ConnsRefused += o.ConnsRefused
	s.ConnsClosed += o.ConnsClosed
	s.DialFailures += o.DialFailures
	s.DecodeErrors += o.DecodeErrors
	return s
}

// memEndpoint is one node's Transport on a MemNetwork.
type memEndpoint struct {
	n      *MemNetwork
	id     ids.NodeID
	h      Handler
	closed bool // guarded by n.mu
	stats  counters
}

// Send implements Transport. It returns false for frames the sender could know are
// wrong (to self, typ 0, too large, closed endpoint or network); frames lost to faults,
// partitions or a missing receiver return true and are counted, as a network loses
// packets silently.
func (e *memEndpoint) Send(to ids.NodeID, group ids.GroupID, typ uint8, body []byte) bool {
	n := e.n
	if typ == TypeControl || to == e.id {
		e.stats.dropUnknownPeer.Add(1)
		return false
	}
	if len(body) > MaxBodyBytes(DefaultMaxFrameBytes) {
		e.stats.dropTooLarge.Add(1)
		return false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if e.closed || n.closed {
		e.stats.dropClosed.Add(1)
		return false
	}
	e.stats.framesSent.Add(1)
	e.stats.bytesSent.Add(uint64(FrameHeaderSize + len(body)))
	if n.blockedLocked(e.id, to) {
		e.stats.dropPartition.Add(1)
		return true
	}
	// The draws happen in a fixed order per Send so that the sequence of Sends alone
	// determines the random stream.
	f := n.faults
	if f.DropRate > 0 && n.rng.Float64() < f.DropRate {
		e.stats.dropFault.Add(1)
		return true
	}
	copies := 1
	if f.DuplicateRate > 0 && n.rng.Float64() < f.DuplicateRate {
		copies = 2
		e.stats.duplicated.Add(1)
	}
	now := n.clock()
	dst := n.eps[to]
	for range copies {
		delay := f.DelayMin
		if f.DelayMax > f.DelayMin {
			delay += time.Duration(n.rng.Int64N(int64(f.DelayMax-f.DelayMin) + 1))
		}
		n.seq++
		heap.Push(&n.q, &memFrame{
			due: now.Add(delay), seq: n.seq, src: e, dst: dst,
			from: e.id, to: to, group: group, typ: typ, body: bytes.Clone(body),
		})
	}
	if n.running {
		select {
		case n.wake <- struct{}{}:
		default:
		}
	}
	return true
}

// Stats implements Transport.
func (e *memEndpoint) Stats() Stats { return e.stats.snapshot() }

// Close implements Transport: the endpoint stops sending and receiving; frames in
// flight to it are dropped at delivery.
func (e *memEndpoint) Close() error {
	e.n.mu.Lock()
	e.closed = true
	if e.n.eps[e.id] == e {
		delete(e.n.eps, e.id)
	}
	e.n.mu.Unlock()
	return nil
}

type memFrame struct {
	due      time.Time
	seq      uint64
	src, dst *memEndpoint // sender; receiver incarnation at send time (nil if none)
	from, to ids.NodeID
	group    ids.GroupID
	typ      uint8
	body     []byte
}

// frameQueue is a min-heap by (due, seq): a total order, hence deterministic.
type frameQueue []*memFrame

func (q frameQueue) Len() int { return len(q) }
func (q frameQueue) Less(i, j int) bool {
	if !q[i].due.Equal(q[j].due) {
		return q[i].due.Before(q[j].due)
	}
	return q[i].seq < q[j].seq
}
func (q frameQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *frameQueue) Push(x any)   { *q = append(*q, x.(*memFrame)) }
func (q *frameQueue) Pop() any {
	old := *q
	f := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	return f
}
