package group

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/multipaxos/engine/ids"
)

// Result is what a proposer's caller gets back: the instance that chose its command
// and the state machine's result for it.
type Result struct {
	Instance ids.InstanceID
	Value    []byte
}

// Proposal states. A proposal moves queued -> proposed when it is packed into an
// instance value, back to queued if that instance chose another value, and to done
// when it was executed. A caller that stops waiting moves it to abandoned.
const (
	stateQueued int32 = iota
	stateProposed
	stateAbandoned
	stateDone
)

// Proposal is one command on its way through a group. The caller creates it with
// NewProposal, hands it to the group and waits with Wait.
type Proposal struct {
	ID   RequestID
	Data []byte
	kind CommandKind
	hops uint64 // times it was forwarded between members
	// sentTo is the master it was forwarded to (by the member it came from).
	sentTo ids.NodeID
	// since: it was not chosen in any instance below this one; mayDup: it has been
	// forwarded, so a copy may be proposed elsewhere (executed.go).
	since  ids.InstanceID
	mayDup bool
	// notify, if set, is called with the outcome in the replica's context (for the
	// engine's own proposals, which nobody Waits for).
	notify func(Result, error)
	state  atomic.Int32
	done   chan struct{}
	res    Result
	err    error
}

// NewProposal returns a proposal of data under id.
func NewProposal(id RequestID, data []byte) *Proposal {
	return &Proposal{ID: id, Data: data, done: make(chan struct{})}
}

// Wait blocks until the proposal is executed, fails, or ctx ends. When ctx ends
// first the error says whether the proposal may still be executed: ErrCanceled (it
// was never proposed) or ErrUnknownOutcome (it was in flight); both wrap ctx.Err().
func (p *Proposal) Wait(ctx context.Context) (Result, error) {
	select {
	case <-p.done:
		return p.res, p.err
	case <-ctx.Done():
	}
	if p.state.CompareAndSwap(stateQueued, stateAbandoned) {
		return Result{}, fmt.Errorf("%w: %w", ErrCanceled, ctx.Err())
	}
	if p.state.CompareAndSwap(stateProposed, stateAbandoned) {
		return Result{}, fmt.Errorf("%w: %w", ErrUnknownOutcome, ctx.Err())
	}
	<-p.done // it finished just now
	return p.res, p.err
}

// Done is closed when the proposal has an outcome (see Outcome).
func (p *Proposal) Done() <-chan struct{} { return p.done }

// Outcome returns the result once Done is closed.
func (p *Proposal) Outcome() (Result, error) { return p.res, p.err }

// abandoned reports whether the caller stopped waiting.
func (p *Proposal) abandoned() bool { return p.state.Load() == stateAbandoned }

// take moves a queued proposal into an instance; false if its caller gave up.
func (p *Proposal) take() bool { return p.state.CompareAndSwap(stateQueued, stateProposed) }

// requeue returns a proposal whose instance chose another value to the queue;
// false if its caller gave up (then it is dropped: it was not executed).
func (p *Proposal) requeue() bool { return p.state.CompareAndSwap(stateProposed, stateQueued) }

// finish settles p once; later calls do nothing (the same command may be
// settled through two paths, e.g. its original and a copy that came back).
func (p *Proposal) finish(res Result, err error) {
	if p.state.Swap(stateDone) == stateDone {
		return
	}
	p.res, p.err = res, err
	close(p.done)
	if p.notify != nil {
		p.notify(res, err)
	}
}

// fail ends a proposal that will not be executed by this group, saying whether it
// might still be (it was in flight).
func (p *Proposal) fail(err error) {
	if p.state.Load() == stateProposed {
		err = errors.Join(err, ErrUnknownOutcome)
	}
	p.finish(Result{}, err)
}
