package instance

import (
	"hash/crc32"

	"github.com/multipaxos/engine/ids"
)

// MsgType names a protocol message. Values are part of the wire format.
type MsgType uint8

const (
	// MsgPrepare is phase 1a: Instance, Ballot.
	MsgPrepare MsgType = 1 + iota
	// MsgPromise is phase 1b: Instance, Ballot (the one replied to), Reject with
	// Promised, or the acceptor's AcceptedBallot and Value at Instance.
	MsgPromise
	// MsgAccept is phase 2a: Instance, Ballot, Value.
	MsgAccept
	// MsgAccepted is phase 2b: Instance, Ballot, Reject with Promised.
	MsgAccepted
	// MsgChosen announces that (Instance, Ballot) was chosen; Checksum is the value's.
	MsgChosen
	// MsgStatus carries only the sender's Next: a cheap probe for members that
	// fell behind while the group was idle.
	MsgStatus
	// MsgLearnReq asks the receiver to teach chosen values from Instance on.
	MsgLearnReq
	// MsgLearnValues carries chosen values (Entries), consecutive from the first.
	MsgLearnValues
	msgTypeEnd
)

var msgTypeNames = [...]string{"", "Prepare", "Promise", "Accept", "Accepted", "Chosen", "Status", "LearnReq", "LearnValues"}

func (t MsgType) String() string {
	if t < msgTypeEnd {
		return msgTypeNames[t]
	}
	return "MsgType(" + itoa(uint64(t)) + ")"
}

// Valid reports whether t is a known message type.
func (t MsgType) Valid() bool { return t >= MsgPrepare && t < msgTypeEnd }

// Message is every protocol message, one flat struct like etcd raft's: which fields
// mean something depends on Type (see the MsgType constants). From and To are not on
// the wire; the transport knows them.
type Message struct {
	Type     MsgType
	From, To ids.NodeID
	// Next is the sender's first instance not known chosen. Every message carries it
	// so that a member that fell behind notices.
	Next     ids.InstanceID
	Instance ids.InstanceID
	Ballot   ids.Ballot
	// Reject marks a negative Promise or Accepted; Promised is then the ballot that
	// beat Ballot.
	Reject   bool
	Promised ids.Ballot
	// AcceptedBallot and Value: in a Promise, what the acceptor accepted at Instance;
	// in an Accept, the value proposed.
	AcceptedBallot ids.Ballot
	Value          []byte
	// Checksum of the chosen value, in MsgChosen.
	Checksum uint32
	// Entries are chosen values, in MsgLearnValues.
	Entries []Entry
}

// Entry is one instance's value with the ballot it was accepted (or chosen) under.
type Entry struct {
	Instance ids.InstanceID
	Ballot   ids.Ballot
	Value    []byte
}

// HardState is the acceptor state that outlives an instance.
type HardState struct {
	// Promised is the highest ballot promised. It never decreases, not even when a
	// chosen value with a lower ballot is learned.
	Promised ids.Ballot
	// Next is the first instance not known chosen; every instance below it is
	// chosen and its entry holds the chosen value.
	Next ids.InstanceID
}

// LearnRequest asks the driver to teach peer To the chosen values from From on,
// reading them from the log (I/O, so not done here).
type LearnRequest struct {
	To   ids.NodeID
	From ids.InstanceID
}

// Ready is the output of the Core since the last call to Core.Ready. The driver
// handles it in this order:
//
//  1. send SendNow at once (nothing in them depends on this Ready's state);
//  2. make HardState and Entries durable (one batch, fsynced);
//  3. then, and only then, send Messages (acceptor replies that promise what was
//     persisted in step 2).
//
// Committed and Teach may be handled at once, before the persist: a chosen value is
// a fact, whether or not this member's record of it is durable yet (after a crash
// the member learns it again). A Ready without Messages needs no fsync at all: no
// reply depends on it.
type Ready struct {
	// HardState, if non-nil, is the new hard state to persist.
	HardState *HardState
	// Entries are instance records to persist (accepted or chosen values). An entry
	// overwrites the record of its instance.
	Entries []Entry
	// SendNow are messages that do not depend on anything in this Ready being
	// durable: a proposer's Accepts (its ballot was persisted in phase 1), Chosen,
	// Status and learn requests.
	SendNow []Message
	// Messages go out only after HardState and Entries are durable. A message to
	// the member itself (To == Core.Self) is fed back through Step.
	Messages []Message
	// Committed are newly chosen instances in order, for the state machine.
	Committed []Entry
	// Teach are learn requests to serve from the log.
	Teach []LearnRequest
}

// Empty reports whether the Ready holds nothing to do.
func (rd *Ready) Empty() bool {
	return rd.HardState == nil && len(rd.Entries) == 0 && len(rd.SendNow) == 0 &&
		len(rd.Messages) == 0 && len(rd.Committed) == 0 && len(rd.Teach) == 0
}

// MustPersist reports whether the Ready holds state to make durable.
func (rd *Ready) MustPersist() bool { return rd.HardState != nil || len(rd.Entries) > 0 }

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Checksum is the CRC-32C of a value; MsgChosen carries it so that a member confirms
// it holds the very bytes that were chosen.
func Checksum(value []byte) uint32 { return crc32.Checksum(value, castagnoli) }

func itoa(v uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			return string(b[i:])
		}
	}
}
