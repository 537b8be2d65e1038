package statemachine

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"github.com/multipaxos/engine/ids"
	"github.com/vmihailenco/msgpack/v5"
)

// MasterState is a group's replicated master record, the engine's internal master
// state machine. It changes only by executing a chosen MasterClaim, so every member
// agrees on it instance by instance. Lease times are not part of it: each member
// counts a lease on its own monotonic clock (see package group).
type MasterState struct {
	// Master is the current master, 0 for none.
	Master ids.NodeID
	// Version is the compare-and-set token: 0 before any claim, then the instance
	// of the last successful claim plus one.
	Version uint64
	// Lease is the lease length the last successful claim asked for.
	Lease time.Duration
}

// MasterClaim asks to make Candidate the master for Lease, if the state's version
// is still Expect when the claim is executed. A master renews by claiming itself
// with the current version; a transfer is a claim for another node.
type MasterClaim struct {
	Candidate ids.NodeID
	Expect    uint64
	Lease     time.Duration
}

// Apply executes a claim chosen at instance inst and reports whether it took effect.
// It is deterministic: a claim with a stale version (someone else changed the master
// since the claimant looked) changes nothing.
func (s *MasterState) Apply(inst ids.InstanceID, c MasterClaim) bool {
	if c.Expect != s.Version || c.Candidate == 0 {
		return false
	}
	s.Master, s.Version, s.Lease = c.Candidate, uint64(inst)+1, c.Lease
	return true
}

// ErrBadClaim is wrapped by every failure to decode a master claim.
var ErrBadClaim = errors.New("statemachine: bad master claim")

// EncodeClaim encodes a claim as msgpack [candidate, expect, lease_ns].
func EncodeClaim(c MasterClaim) []byte {
	var buf bytes.Buffer
	e := msgpack.NewEncoder(&buf)
	_ = e.EncodeArrayLen(3)
	_ = e.EncodeUint(uint64(c.Candidate))
	_ = e.EncodeUint(c.Expect)
	_ = e.EncodeUint(uint64(c.Lease))
	return buf.Bytes()
}

// DecodeClaim decodes what EncodeClaim produced.
func DecodeClaim(b []byte) (MasterClaim, error) {
	r := bytes.NewReader(b)
	d := msgpack.NewDecoder(r)
	n, err := d.DecodeArrayLen()
	if err != nil || n != 3 {
		return MasterClaim{}, fmt.Errorf("%w: array of %d, %v", ErrBadClaim, n, err)
	}
	cand, err1 := d.DecodeUint64()
	expect, err2 := d.DecodeUint64()
	lease, err3 := d.DecodeUint64()
	if err := errors.Join(err1, err2, err3); err != nil {
		return MasterClaim{}, fmt.Errorf("%w: %v", ErrBadClaim, err)
	}
	if r.Len() != 0 || lease > uint64(24*time.Hour) {
		return MasterClaim{}, fmt.Errorf("%w: trailing bytes or lease %d out of range", ErrBadClaim, lease)
	}
	return MasterClaim{Candidate: ids.NodeID(cand), Expect: expect, Lease: time.Duration(lease)}, nil
}
