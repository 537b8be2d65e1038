package group

import (
	"errors"
	"fmt"
	"time"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/instance"
	"github.com/multipaxos/engine/statemachine"
	"go.uber.org/zap"
)

// MasterInfo is a member's view of its group's master.
type MasterInfo struct {
	// Master is the master whose lease is valid in this member's view, 0 if none.
	Master ids.NodeID
	// Expiry is when that lease ends on this member's clock.
	Expiry time.Time
	// IsSelf: this member is the master and holds the lease.
	IsSelf bool
	// Version is the master state's compare-and-set token.
	Version uint64
}

// masterLease is the member's view of the master lease.
//
// # The lease
//
// Mastership is a value chosen in the log: a claim "make C master if the version is
// still V" (statemachine.MasterClaim), executed as a compare-and-set on every
// member. Timing is local. The master counts its lease from the moment it created
// the claim, before proposing it; every other member counts from the moment it
// executes the claim, which is later in real time. So, with clocks whose rates differ
// by at most ClockDrift, the master's lease ends before any other member's view of
// it, provided the master shortens it by the drift: it trusts Lease*(1-2*ClockDrift).
// Nobody claims mastership while its view of another master's lease is valid, and a
// claim carries the version it saw, so a claim made on a stale view fails at
// execution. A master renews at half its lease, by claiming itself again; each
// renewal is a new version.
//
// The clock assumption, stated: each member's clock is monotonic and its rate is
// within ClockDrift of real time (Go's time.Now carries a monotonic reading; wall
// clock jumps do not affect it). Nothing else about time is assumed: messages may be
// delayed arbitrarily, which only makes views more conservative.
//
// After a restart a member trusts no lease of its own (it does not know when it
// proposed) and counts any other master's lease as if just learned, from the replay.
//
// # Quiescence: idle groups cost nothing
//
// A master renews only if the group saw application work (a proposal or a lease
// read) since its last claim; an idle group lets its lease lapse and goes quiet: no
// renewals, no ticks, no messages. The next proposal or lease read on any member
// finds no valid master and claims mastership on the spot (one extra instance). This
// was chosen over coalescing renewals of many groups into one message: it costs
// nothing at all when idle, needs no cross-group protocol, and a busy group renews
// inside its application batches, so a renewal costs no extra instance either.
type masterLease struct {
	cfg   *Config
	state statemachine.MasterState
	// expiry: for our own lease, when we stop trusting it; for another master, when
	// our view of its lease ends. Zero when no lease is known.
	expiry time.Time
	self   bool // expiry is our own lease (from our own claim)
	// claim is our master claim on its way (queued or in an instance); claimStart
	// is when it was made, where its lease counts from.
	claim        *Proposal
	claimStart   time.Time
	claimVersion uint64 // the version the claim expects
	wanted       bool   // a claim is needed even without queued work (transfer, barrier)
	active       bool   // application work since our last claim: renew at half-lease
	// transfer is our TransferMaster waiting for the target's own claim.
	transfer *transferWait
	// resign: we were handed mastership we may not take (NotCandidate); drive
	// proposes a claim of ourselves for no lease as soon as we have our vote.
	resign bool
}

// ErrNotCandidate: TransferMaster named a node that may not become master of the
// group (not a voter, or MasterCandidate false there). The error is a
// *NotCandidateError.
var ErrNotCandidate = errors.New("node may not become master")

// ErrTransferFailed: the hand-over of a TransferMaster was chosen but its target did
// not claim mastership after it (down or cut off, say): another member claimed
// instead, or the old master gave up waiting (twice forwardRetryTicks).
var ErrTransferFailed = errors.New("master transfer failed: the target did not take over")

// NotCandidateError is ErrNotCandidate naming the node.
type NotCandidateError struct {
	Node ids.NodeID
	// Voter: the node is a voting member that refused (MasterCandidate false
	// there); false: it is not a voter of the group, so the master refused.
	Voter bool
}

func (e *NotCandidateError) Error() string {
	if !e.Voter {
		return fmt.Sprintf("node %d may not become master: not a voting member of the group", e.Node)
	}
	return fmt.Sprintf("node %d may not become master: it is not a master candidate of the group; it resigned the mastership handed to it", e.Node)
}

// Is makes errors.Is(err, ErrNotCandidate) hold.
func (e *NotCandidateError) Is(target error) bool { return target == ErrNotCandidate }

// transferWait is a TransferMaster on the old master, from its hand-over claim until
// the next claim that takes effect after it: the target's own (done(nil)), the
// target's resignation (a *NotCandidateError), or another member's
// (ErrTransferFailed).
type transferWait struct {
	to      ids.NodeID
	claimID RequestID
	version uint64 // the master state's version once the hand-over took effect; 0 before
	started uint64 // the replica's tick at TransferMaster
	done    func(error)
}

// tickMasterTransfer gives up on a transfer whose target has not claimed mastership
// within twice forwardRetryTicks of the transfer (down, cut off, or unable to propose):
// the caller gets ErrTransferFailed. The group then has a master again once the
// target's lease ends in the members' views and work elects one.
func (r *Replica) tickMasterTransfer() {
	t := r.lease.transfer
	if t == nil || r.ticks-t.started < uint64(2*r.forwardRetryTicks()) {
		return
	}
	r.lease.transfer = nil
	t.finish(fmt.Errorf("%w: node %d did not claim mastership within %d ticks of the hand-over", ErrTransferFailed, t.to, r.ticks-t.started))
}

func (t *transferWait) finish(err error) {
	if d := t.done; d != nil {
		t.done = nil
		d(err)
	}
}

// noteTransfer follows a waiting TransferMaster through the claims that take effect.
func (r *Replica) noteTransfer(c Command, claim statemachine.MasterClaim) {
	t := r.lease.transfer
	switch {
	case t == nil || r.replaying:
	case c.ID == t.claimID:
		t.version = r.lease.state.Version // handed over: the target's own claim decides
	case t.version == 0:
		// Another claim took effect first: the hand-over's version is stale, and
		// its notify reports that.
	case claim.Candidate == t.to && c.ID.Node == t.to && claim.Lease > 0:
		r.lease.transfer = nil
		t.finish(nil)
	case claim.Candidate == t.to && c.ID.Node == t.to:
		r.lease.transfer = nil
		t.finish(&NotCandidateError{Node: t.to, Voter: true})
	default:
		r.lease.transfer = nil
		t.finish(fmt.Errorf("%w: node %d; node %d claimed instead", ErrTransferFailed, t.to, claim.Candidate))
	}
}

func (l *masterLease) init(cfg *Config) { l.cfg = cfg }

// isMaster: we are the master and our lease holds at now.
func (l *masterLease) isMaster(now time.Time) bool {
	return l.self && l.state.Master == l.cfg.Self && now.Before(l.expiry)
}

// holding: we hold a lease that has not ended yet (the node keeps ticking us).
func (l *masterLease) holding(now time.Time) bool { return l.isMaster(now) }

// otherValid: another member is master and our view of its lease holds at now.
func (l *masterLease) otherValid(now time.Time) bool {
	if l.cfg.Protocol.Knobs.ClaimWhileLeaseValid {
		return false // planted bug: claim (and forward nothing) while it holds
	}
	return !l.self && l.state.Master != 0 && l.state.Master != l.cfg.Self && now.Before(l.expiry)
}

// shouldRenew: a master with recent work renews at half its lease.
func (l *masterLease) shouldRenew(now time.Time) bool {
	return l.claim == nil && l.active && !l.cfg.NotCandidate && !now.Before(l.expiry.Add(-l.cfg.Lease/2))
}

// claimStale: a claim not yet proposed must not be any more - another master's
// lease is valid in our view, or the version moved on.
func (l *masterLease) claimStale(now time.Time) bool {
	return l.claim.state.Load() == stateQueued && (l.otherValid(now) || l.claimVersion != l.state.Version)
}

// trusted is how long a master trusts a lease of length d it claimed itself.
func (l *masterLease) trusted(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (1 - 2*l.cfg.ClockDrift))
}

// applyClaim executes a chosen master claim and returns its result: "1" if it took
// effect, "0" if its version was stale.
func (r *Replica) applyClaim(inst ids.InstanceID, c Command) []byte {
	l := &r.lease
	claim, err := statemachine.DecodeClaim(c.Data)
	mine := l.claim != nil && l.claim.ID == c.ID
	if mine {
		l.claim = nil
	}
	sys := SystemState{Master: l.state}
	if err != nil || !sys.applyCommand(inst, c) {
		return []byte{'0'}
	}
	if sys.Master.Master != l.state.Master {
		r.stats.MasterChanges++
	}
	l.state = sys.Master
	l.resign = false
	r.noteTransfer(c, claim)
	now := r.cfg.Clock()
	// Proposals we forwarded to another master are in limbo: that master may have
	// put them in an instance that a later phase 1 still chooses, or not. Tell
	// their callers now (unknown outcome) rather than at their deadlines, so they
	// can go to the new master.
	for id, p := range r.forwarded {
		if p.sentTo != claim.Candidate {
			delete(r.forwarded, id)
			p.fail(fmt.Errorf("%w: master %d, which it was forwarded to, was replaced by %d", ErrUnknownOutcome, p.sentTo, claim.Candidate))
		}
	}
	switch {
	case claim.Candidate == r.cfg.Self && mine:
		l.self, l.expiry = true, l.claimStart.Add(l.trusted(claim.Lease))
		if r.cfg.LeaseObserver != nil {
			r.cfg.LeaseObserver(l.claimStart, l.expiry)
		}
		if !r.replaying {
			r.log.Debug("master lease", zap.Uint64("instance", uint64(inst)), zap.Time("until", l.expiry))
		}
	case claim.Candidate == r.cfg.Self:
		// Made master by someone else (a transfer), or our own claim seen again in a
		// replay: we do not know when it was proposed, so we hold no lease until we
		// claim for ourselves, at once unless this is a replay.
		l.self, l.expiry = false, time.Time{}
		l.wanted = !r.replaying
		// Handed mastership we may not take: resign at once (drive) with a
		// claim of ourselves for no lease, so that every member sees no master
		// and the next work elects a candidate, instead of the group waiting out
		// a lease nobody holds. The transfer's caller gets a *NotCandidateError.
		// (A member that is not a voter here cannot propose: the transfer times
		// out on the old master, and the lease runs out.)
		l.resign = !r.replaying && claim.Lease > 0 && r.cfg.NotCandidate && hasNode(r.members.Voters, r.cfg.Self)
	default:
		l.self, l.expiry = false, now.Add(claim.Lease)
	}
	return []byte{'1'}
}

// TransferMaster hands mastership to another member without waiting for the lease
// to run out: the master stops trusting its lease at once and proposes a claim for
// to; to then claims a lease of its own. done gets the outcome: nil once to's own
// claim is executed here; a *NotCandidateError at once if to is not a voter, or
// once to resigned the mastership because it may not become master (its
// candidacy is its own configuration, unknown here; the group then has no master
// until the next work elects a candidate); ErrTransferFailed if another member
// claimed before to did, or to did not claim within twice forwardRetryTicks;
// ErrBusy or ErrClaimLost if the hand-over itself was not chosen.
func (r *Replica) TransferMaster(to ids.NodeID, done func(error)) {
	now := r.cfg.Clock()
	switch {
	case !r.lease.isMaster(now):
		done(&NotMasterError{Master: r.Master().Master})
		return
	case to != r.cfg.Self && !r.core.IsMember(to):
		done(&NotCandidateError{Node: to})
		return
	case to == r.cfg.Self:
		done(nil)
		return
	}
	if r.lease.claim != nil {
		// A renewal is on its way; let it settle and ask again.
		done(ErrBusy)
		return
	}
	r.claim(to, now)
	r.lease.expiry = now // stop serving lease reads now
	t := &transferWait{to: to, claimID: r.lease.claim.ID, started: r.ticks, done: done}
	if old := r.lease.transfer; old != nil {
		old.finish(fmt.Errorf("%w: superseded by a transfer to node %d", ErrTransferFailed, to))
	}
	r.lease.transfer = t
	r.lease.claim.notify = func(res Result, err error) {
		if err == nil && string(res.Value) != "1" {
			err = ErrBusy // the master changed meanwhile: the claim's version was stale
		}
		if err != nil {
			if r.lease.transfer == t {
				r.lease.transfer = nil
			}
			t.finish(err)
		}
		// Handed over: noteTransfer reports the target's own claim.
	}
	r.drive()
	r.flush()
}

// statusFrom is a Status message as if from peer, claiming it knows instances below
// next as chosen: it makes the core ask that peer to teach them.
func statusFrom(peer ids.NodeID, next ids.InstanceID) instance.Message {
	return instance.Message{Type: instance.MsgStatus, From: peer, Next: next}
}

// SetCandidate changes whether this member may become master. A master that may no
// longer be one stops renewing; its lease lapses within one lease length.
func (r *Replica) SetCandidate(ok bool) {
	r.cfg.NotCandidate = !ok
	if !ok {
		r.lease.active = false
	} else {
		r.lease.resign = false // claim for real instead (drive)
	}
}
