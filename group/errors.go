package group

import (
	"errors"
	"fmt"

	"github.com/multipaxos/engine/ids"
)

// Errors a proposal can end with. Each says whether the command may still be
// executed: only ErrUnknownOutcome leaves that open.
var (
	// ErrCanceled: the caller's context ended before the proposal was put into an
	// instance; it will never be executed. Wrapped together with the context's
	// error, so errors.Is(err, context.DeadlineExceeded) also holds.
	ErrCanceled = errors.New("proposal canceled before it was proposed; it will not be executed")
	// ErrUnknownOutcome: the caller's context ended while the proposal was in an
	// instance that is not yet decided; it may or may not be executed.
	ErrUnknownOutcome = errors.New("proposal outcome unknown: it was in flight when the wait ended")
	// ErrStopped: the group stopped (node shutdown or a storage failure) before
	// the proposal was chosen. If it was in flight its outcome is unknown as well;
	// the error then also wraps ErrUnknownOutcome.
	ErrStopped = errors.New("group stopped")
	// ErrBusy: the group's queue of pending proposals is full (back-pressure).
	// Nothing was proposed.
	ErrBusy = errors.New("group busy: too many pending proposals")
	// ErrStorage: the group's storage failed; the group stopped (fail-stop) and
	// acknowledges nothing it could not persist.
	ErrStorage = errors.New("group storage failure")
	// ErrNotMaster: this member is not the group's master (returned by LeaseRead,
	// and by Propose when forwarding is off). The error is a *NotMasterError that
	// names the master this member knows of, if any.
	ErrNotMaster = errors.New("not the master")
	// ErrNoMaster: the group has no master this member can reach or become.
	ErrNoMaster = errors.New("no master available")
	// ErrClaimLost: a master claim (a transfer, say) lost its instance to another
	// value and was not chosen; whether to try again is the caller's call.
	ErrClaimLost = errors.New("master claim not chosen: its instance chose another value")
)

// NotMasterError is ErrNotMaster with a hint: the master this member knows of (0 if
// none is valid in its view).
type NotMasterError struct {
	Master ids.NodeID
}

func (e *NotMasterError) Error() string {
	if e.Master == 0 {
		return "not the master; no master known"
	}
	return fmt.Sprintf("not the master; node %d is", e.Master)
}

// Is makes errors.Is(err, ErrNotMaster) hold.
func (e *NotMasterError) Is(target error) bool { return target == ErrNotMaster }
