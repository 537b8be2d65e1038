package statemachine

import (
	"bytes"
	"errors"
	"fmt"
	"slices"

	"github.com/multipaxos/engine/ids"
	"github.com/vmihailenco/msgpack/v5"
)

// Membership is a group's replicated member list, the engine's internal system
// state machine. A change chosen at instance i applies from instance i+1; serial
// instances make that safe without joint consensus.
type Membership struct {
	Voters    []ids.NodeID // sorted; a majority of them is a quorum
	Followers []ids.NodeID // sorted; learn every value, never vote
	// Version is the compare-and-set token: 0 for the initial configuration, then
	// the instance of the last change plus one.
	Version uint64
}

// MembershipChange replaces the member lists if the version is still Expect.
type MembershipChange struct {
	Voters, Followers []ids.NodeID
	Expect            uint64
}

// Has reports whether n is a voter or a follower.
func (m *Membership) Has(n ids.NodeID) bool {
	return slices.Contains(m.Voters, n) || slices.Contains(m.Followers, n)
}

// Clone returns a deep copy.
func (m Membership) Clone() Membership {
	m.Voters, m.Followers = slices.Clone(m.Voters), slices.Clone(m.Followers)
	return m
}

// ValidMembers reports why a configuration cannot be used, or nil.
func ValidMembers(voters, followers []ids.NodeID) error {
	if len(voters) == 0 {
		return errors.New("no voters")
	}
	seen := map[ids.NodeID]bool{}
	for _, n := range append(slices.Clone(voters), followers...) {
		if n == 0 || seen[n] {
			return fmt.Errorf("node %d is zero or listed twice", n)
		}
		seen[n] = true
	}
	return nil
}

// Apply executes a change chosen at instance inst; it reports whether it took
// effect (a stale version or an invalid list changes nothing).
func (m *Membership) Apply(inst ids.InstanceID, c MembershipChange) bool {
	if c.Expect != m.Version || ValidMembers(c.Voters, c.Followers) != nil {
		return false
	}
	m.Voters, m.Followers = sorted(c.Voters), sorted(c.Followers)
	m.Version = uint64(inst) + 1
	return true
}

func sorted(s []ids.NodeID) []ids.NodeID {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// ErrBadMembership is wrapped by every failure to decode a membership change.
var ErrBadMembership = errors.New("statemachine: bad membership change")

// EncodeMembershipChange encodes c as msgpack [expect, [voters], [followers]].
func EncodeMembershipChange(c MembershipChange) []byte {
	var buf bytes.Buffer
	e := msgpack.NewEncoder(&buf)
	_ = e.EncodeArrayLen(3)
	_ = e.EncodeUint(c.Expect)
	for _, list := range [][]ids.NodeID{c.Voters, c.Followers} {
		_ = e.EncodeArrayLen(len(list))
		for _, n := range list {
			_ = e.EncodeUint(uint64(n))
		}
	}
	return buf.Bytes()
}

// DecodeMembershipChange decodes what EncodeMembershipChange produced; lengths are
// checked against the input before anything is allocated.
func DecodeMembershipChange(b []byte) (MembershipChange, error) {
	r := bytes.NewReader(b)
	d := msgpack.NewDecoder(r)
	var c MembershipChange
	fail := func(err error) (MembershipChange, error) {
		return MembershipChange{}, fmt.Errorf("%w: %v", ErrBadMembership, err)
	}
	n, err := d.DecodeArrayLen()
	if err != nil || n != 3 {
		return fail(fmt.Errorf("array of %d, %v", n, err))
	}
	if c.Expect, err = d.DecodeUint64(); err != nil {
		return fail(err)
	}
	for _, list := range []*[]ids.NodeID{&c.Voters, &c.Followers} {
		k, err := d.DecodeArrayLen()
		if err != nil || k < 0 || k > r.Len() {
			return fail(fmt.Errorf("list of %d in %d bytes, %v", k, r.Len(), err))
		}
		for i := 0; i < k; i++ {
			v, err := d.DecodeUint64()
			if err != nil {
				return fail(err)
			}
			*list = append(*list, ids.NodeID(v))
		}
	}
	if r.Len() != 0 {
		return fail(fmt.Errorf("%d trailing bytes", r.Len()))
	}
	return c, nil
}
