// Package ids holds the typed numbers every package of the engine shares: node,
// group and instance IDs and the Paxos ballot. Giving each kind of number its own
// type lets the compiler catch a swapped argument (a group passed as a node, an
// instance passed as a count).
//
// ids imports nothing and owns no behaviour beyond ordering and formatting; it sits
// below every other package in the table of DESIGN.md section 3.
package ids

import "strconv"

// NodeID names one member process of the cluster. 0 is never a valid node.
type NodeID uint64

// GroupID is the index of a Paxos group (one replicated log, one shard) on a node.
// Groups are numbered 0 .. Groups-1.
type GroupID uint32

// InstanceID numbers the instances of one group's log: 0, 1, 2, ... Each instance
// chooses exactly one value. Instance IDs double as sequence numbers for catch-up.
type InstanceID uint64

// Ballot orders proposals: by Number first, then by Node. The zero Ballot is below
// every ballot a proposer uses (proposers start at Number 1).
type Ballot struct {
	Number uint64
	Node   NodeID
}

// Less reports whether b orders strictly before o.
func (b Ballot) Less(o Ballot) bool {
	if b.Number != o.Number {
		return b.Number < o.Number
	}
	return b.Node < o.Node
}

// IsZero reports whether b is the zero ballot (nothing promised or accepted).
func (b Ballot) IsZero() bool { return b == Ballot{} }

// Max returns the larger of b and o.
func (b Ballot) Max(o Ballot) Ballot {
	if b.Less(o) {
		return o
	}
	return b
}

func (b Ballot) String() string {
	return strconv.FormatUint(b.Number, 10) + "." + strconv.FormatUint(uint64(b.Node), 10)
}
