package group

import (
	"time"

	"github.com/multipaxos/engine/ids"
)

// leaseRead is a LeaseRead waiting for this member to become master or to apply
// everything it has chosen.
type leaseRead struct {
	fn   func() error
	done func(error)
}

// LeaseRead runs fn on this member if it is the master, its lease holds, and it has
// applied every instance it knows chosen: then no other value can have been chosen
// that fn would miss (only the master proposes while its lease holds), so fn reads
// linearizably without a round trip. fn runs in the replica's context and must be
// short. If another master is valid, done gets a *NotMasterError naming it; if no
// master is, this member claims mastership (if it may) and serves the read once it
// holds the lease. done is called exactly once, in the replica's context.
func (r *Replica) LeaseRead(fn func() error, done func(error)) {
	if r.failed != nil {
		done(ErrStopped)
		return
	}
	r.lease.active = true
	r.leaseReads = append(r.leaseReads, &leaseRead{fn: fn, done: done})
	r.drive()
	r.flush()
}

// serveLeaseReads runs the waiting lease reads if this member may serve them now.
func (r *Replica) serveLeaseReads(now time.Time) {
	if len(r.leaseReads) == 0 || r.applied != r.core.Next() || len(r.applyQueue) > 0 {
		return
	}
	if !r.lease.isMaster(now) && !r.cfg.Protocol.Knobs.LeaseReadAnywhere {
		return
	}
	reads := r.leaseReads
	r.leaseReads = nil
	for _, lr := range reads {
		lr.done(lr.fn())
	}
}

func (r *Replica) rejectLeaseReads(hint ids.NodeID) {
	reads := r.leaseReads
	r.leaseReads = nil
	for _, lr := range reads {
		lr.done(&NotMasterError{Master: hint})
	}
}

// barrier is a ReadBarrier in progress.
//
// Membership changes make the quorum a moving target: a majority of a configuration
// we have not learned yet, or of one whose members stopped learning, proves nothing.
// So every reply carries the responder's membership version, and a round counts
// only replies with the barrier's own version, which must still be ours when the
// round completes; anything else starts a new round (after learning, if a responder
// was ahead). Why that suffices: a write acknowledged before the barrier was chosen
// at some instance i. If the configuration we hold (version v) was in force at i,
// our majority meets i's accept quorum. If a change we do not know was chosen at
// k < i, a majority of our configuration accepted k, so one of our responders
// reports an index past k; we learn k, our version moves and the round restarts. If
// a change we know was chosen at k >= i, every responder that reports version v has
// applied k, so it knows i.
type barrier struct {
	version uint64 // membership version the round counts in
	acks    []ids.NodeID
	target  ids.InstanceID // read index: apply everything below it
	quorum  bool
	started uint64 // tick of the last round
	done    func(error)
}

// barrierRetryTicks: a read-index round unanswered for this long is sent again; a
// barrier that has its quorum but waits this long for an undecided instance makes
// this member drive the instance to a decision (by claiming mastership).
const barrierRetryTicks = 10

// readIndex is the point a read barrier must reach: every instance this member knows
// chosen, plus the one it has accepted a value in, which may be chosen already
// without its knowing. A write acknowledged to anyone was accepted by a majority, so
// any majority's largest read index covers it.
func (r *Replica) readIndex() ids.InstanceID {
	next := r.core.Next()
	if r.core.AcceptedAtNext() {
		next++
	}
	return next
}

// ReadBarrier gives a linearizable read point without relying on clocks: it asks a
// majority of members for their read index, then waits until this member has
// applied up to the largest. done(nil) means the state machine now reflects every
// write acknowledged before ReadBarrier was called; read it then. Usable on any
// member. done is called exactly once, in the replica's context.
func (r *Replica) ReadBarrier(done func(error)) {
	if r.failed != nil {
		done(ErrStopped)
		return
	}
	r.barrierSeq++
	b := &barrier{done: done}
	r.barriers[r.barrierSeq] = b
	r.startRound(r.barrierSeq, b)
}

// startRound (re)starts a barrier's quorum round under the current membership.
func (r *Replica) startRound(id uint64, b *barrier) {
	b.version, b.acks, b.quorum, b.target, b.started = r.members.Version, b.acks[:0], false, 0, r.ticks
	r.sendReadIndex(id, b)
	if r.core.IsMember(r.cfg.Self) {
		r.onReadIndexReply(r.cfg.Self, id, r.readIndex(), r.members.Version)
	}
}

func (r *Replica) sendReadIndex(id uint64, b *barrier) {
	for _, m := range r.core.Members() {
		if m != r.cfg.Self && !hasNode(b.acks, m) {
			r.cfg.Sender.SendGroup(m, r.cfg.Group, &GroupMessage{Type: MsgReadIndex, ID: id})
		}
	}
}

func (r *Replica) onReadIndexReply(from ids.NodeID, id uint64, index ids.InstanceID, version uint64) {
	b := r.barriers[id]
	if b == nil || !r.core.IsMember(from) {
		return // only voters' read indexes make a quorum
	}
	if version != b.version {
		if version > b.version && index > r.core.Next() {
			r.core.Step(statusFrom(from, index)) // it knows a newer membership: learn it
		}
		return // a round counts replies of one configuration only (see barrier)
	}
	if !hasNode(b.acks, from) {
		b.acks = append(b.acks, from)
	}
	b.target = max(b.target, index)
	if len(b.acks) >= len(r.core.Members())/2+1 && !b.quorum {
		b.quorum, b.started = true, r.ticks
		// The index may name instances we have not learned: ask.
		if b.target > r.core.Next() {
			r.core.Step(statusFrom(from, b.target))
		}
	}
	r.checkBarriers()
}

func (r *Replica) checkBarriers() {
	for id, b := range r.barriers {
		if b.version != r.members.Version {
			r.startRound(id, b) // the membership moved under the round
			continue
		}
		if b.quorum && r.applied >= b.target {
			delete(r.barriers, id)
			b.done(nil)
		}
	}
}

func (r *Replica) tickBarriers() {
	for id, b := range r.barriers {
		if r.ticks-b.started < barrierRetryTicks {
			continue
		}
		b.started = r.ticks
		if !b.quorum || b.version != r.members.Version {
			r.startRound(id, b)
		} else if r.applied >= r.core.Next() {
			// Everything known chosen is applied, yet the index is beyond it: an
			// instance is accepted somewhere but undecided. Decide it.
			r.lease.wanted = true
		}
	}
}

func hasNode(s []ids.NodeID, n ids.NodeID) bool {
	for _, x := range s {
		if x == n {
			return true
		}
	}
	return false
}
