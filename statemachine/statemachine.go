// Package statemachine defines what an application implements to receive a group's
// chosen values, and how the engine calls it.
//
// # The contract
//
// For every group, the engine calls Execute with the commands of each chosen
// instance, in instance order, one instance at a time, from that group's apply
// context (never concurrently for one group; different groups may run in
// parallel). Execute must be deterministic: the same commands on the same state give
// the same results and the same new state on every member. A logical failure (a
// missing key, a lost compare-and-set) is a result, not an error. An error means
// "this member cannot apply now" (a full disk, say): the engine logs it, stalls the
// group and calls Execute again with the same instance later; it never skips an
// instance.
//
// Applied tells the engine where the state machine's durable state ends, so that a
// restart replays only what is missing: every instance below Applied() is never
// executed again. An in-memory state machine returns 0 and gets the whole log
// replayed. A state machine that persists its state must record the instance ID
// together with the state it produced, atomically, and report the next one.
package statemachine

import "github.com/multipaxos/engine/ids"

// StateMachine is one group's application state.
type StateMachine interface {
	// Execute applies the commands of chosen instance inst, in order, and returns
	// one result per command (nil entries are fine). See the package doc for the
	// meaning of an error.
	Execute(inst ids.InstanceID, cmds [][]byte) (results [][]byte, err error)
	// Applied returns the first instance whose effects are not yet durable in the
	// state machine. It is called once, when the group starts.
	Applied() ids.InstanceID
}

// Factory returns the state machine of one group; it is called once per group when
// the node starts.
type Factory func(group ids.GroupID) StateMachine
