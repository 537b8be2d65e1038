package node

import (
	"context"
	"fmt"
	"time"

	"github.com/multipaxos/engine/group"
	"github.com/multipaxos/engine/ids"
)

// Master returns group g's master as this node sees it and when its lease ends on
// this node's clock; (0, zero time) when no master is valid here. A group that has
// been idle for a lease has no master until its next proposal or lease read.
func (n *Node) Master(g ids.GroupID) (ids.NodeID, time.Time) {
	if int(g) >= len(n.groups) {
		return 0, time.Time{}
	}
	info := n.groups[g].replica.Master()
	if info.Master == 0 || !time.Now().Before(info.Expiry) {
		return 0, time.Time{}
	}
	return info.Master, info.Expiry
}

// IsMaster reports whether this node is group g's master with a valid lease.
func (n *Node) IsMaster(g ids.GroupID) bool {
	m, _ := n.Master(g)
	return m == n.opts.NodeID
}

// call runs fn in group g's context and waits for it to report, or for ctx.
func (n *Node) call(ctx context.Context, g ids.GroupID, fn func(r *group.Replica, done func(error))) error {
	if int(g) >= len(n.groups) {
		return fmt.Errorf("%w: %d", ErrUnknownGroup, g)
	}
	if err := n.refuseIfFailed(); err != nil {
		return err
	}
	ch := make(chan error, 1)
	if !n.groups[g].post(func(r *group.Replica) { fn(r, func(err error) { ch <- err }) }) {
		return ErrStopped
	}
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// LeaseRead runs fn on this node if it is group g's master, its lease holds and it
// has applied everything it knows chosen, so that fn reads the state machine
// linearizably without a network round trip. fn runs on the group's worker (keep it
// short; it must not call the node). If another node is master the error is a
// *NotMasterError naming it; if no master is valid this node claims mastership
// (when it may) and serves the read once it holds the lease.
func (n *Node) LeaseRead(ctx context.Context, g ids.GroupID, fn func() error) error {
	var canceled = make(chan struct{})
	defer close(canceled)
	return n.call(ctx, g, func(r *group.Replica, done func(error)) {
		r.LeaseRead(func() error {
			select {
			case <-canceled:
				return ctx.Err() // the caller left: do not run fn for nobody
			default:
				return fn()
			}
		}, done)
	})
}

// ReadBarrier returns once this node's state machine for group g reflects every
// write acknowledged (anywhere) before the call: a linearizable read point that
// needs a quorum round but no clock, usable on any member. Read the state machine
// after it returns; the state machine must allow reads concurrent with Execute.
func (n *Node) ReadBarrier(ctx context.Context, g ids.GroupID) error {
	return n.call(ctx, g, func(r *group.Replica, done func(error)) { r.ReadBarrier(done) })
}

// ErrNotCandidate: TransferMaster named a node that may not become master of the
// group; the error is a *NotCandidateError naming it.
var ErrNotCandidate = group.ErrNotCandidate

// ErrTransferFailed: TransferMaster's hand-over was chosen but its target did not
// claim mastership (another member did instead, or it did not in time).
var ErrTransferFailed = group.ErrTransferFailed

// NotCandidateError is ErrNotCandidate with the node it names.
type NotCandidateError = group.NotCandidateError

// TransferMaster hands group g's mastership from this node (the master) to node to
// without waiting for the lease to run out. It returns nil once to holds the
// mastership: its own claim, after the hand-over, is chosen and executed here.
//
// A target that is not a voter of the group is refused at once with a
// *NotCandidateError (Voter false), and nothing changes. Whether a voter may become
// master (Options.MasterCandidate, SetMasterCandidate) is known only on that
// voter, so the hand-over is proposed; a target that may not be master resigns at
// once (a claim of itself for no lease), so the group does not sit masterless for a
// lease: every member then sees no master and the next proposal or lease read
// elects a candidate. TransferMaster then returns a *NotCandidateError (Voter true).
// If another member claims before the target does, or the target does not claim
// within four ProposeRetryTimeouts (it is down, say), the error is
// ErrTransferFailed (the group then waits out the lease the members count for the
// target); if the hand-over itself is not chosen, ErrBusy or ErrClaimLost. If this
// node is not the master, a *NotMasterError.
func (n *Node) TransferMaster(ctx context.Context, g ids.GroupID, to ids.NodeID) error {
	return n.call(ctx, g, func(r *group.Replica, done func(error)) { r.TransferMaster(to, done) })
}

// SetMasterCandidate changes whether this node may become master of group g (an
// operator keeping masters off a node). A master that may no longer be one stops
// renewing and its lease lapses within one lease length; use TransferMaster to hand
// over at once.
func (n *Node) SetMasterCandidate(g ids.GroupID, ok bool) error {
	if int(g) >= len(n.groups) {
		return fmt.Errorf("%w: %d", ErrUnknownGroup, g)
	}
	if !n.groups[g].post(func(r *group.Replica) { r.SetCandidate(ok) }) {
		return ErrStopped
	}
	return nil
}
