package statemachine

import (
	"reflect"
	"testing"
	"time"

	"github.com/multipaxos/engine/ids"
)

func FuzzDecodeClaim(f *testing.F) {
	f.Add(EncodeClaim(MasterClaim{Candidate: 3, Expect: 9, Lease: time.Second}))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeClaim(b)
		if err != nil {
			return
		}
		if again, err := DecodeClaim(EncodeClaim(c)); err != nil || again != c {
			t.Fatalf("claim does not round-trip: %v %+v %+v", err, c, again)
		}
	})
}

func FuzzDecodeMembershipChange(f *testing.F) {
	f.Add(EncodeMembershipChange(MembershipChange{Voters: []ids.NodeID{1, 2, 3}, Followers: []ids.NodeID{4}, Expect: 5}))
	f.Add([]byte{0x93, 0x00, 0xdd, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeMembershipChange(b)
		if err != nil {
			return
		}
		again, err := DecodeMembershipChange(EncodeMembershipChange(c))
		if err != nil || !reflect.DeepEqual(again, c) {
			t.Fatalf("change does not round-trip: %v %+v %+v", err, c, again)
		}
	})
}

// TestMasterClaimCAS: a claim applies only with the current version; each success
// moves the version to the claim's instance + 1.
func TestMasterClaimCAS(t *testing.T) {
	var s MasterState
	if !s.Apply(4, MasterClaim{Candidate: 2, Expect: 0, Lease: time.Second}) || s.Master != 2 || s.Version != 5 {
		t.Fatalf("first claim: %+v", s)
	}
	if s.Apply(6, MasterClaim{Candidate: 3, Expect: 0}) || s.Master != 2 {
		t.Fatalf("a stale claim took effect: %+v", s)
	}
	if !s.Apply(7, MasterClaim{Candidate: 3, Expect: 5}) || s.Master != 3 || s.Version != 8 {
		t.Fatalf("renewed claim: %+v", s)
	}
	var m Membership
	if m.Apply(1, MembershipChange{Voters: nil}) || m.Apply(1, MembershipChange{Voters: []ids.NodeID{1, 1}}) {
		t.Fatal("an invalid membership was applied")
	}
	if !m.Apply(2, MembershipChange{Voters: []ids.NodeID{3, 1}, Followers: []ids.NodeID{2}}) || m.Version != 3 ||
		!reflect.DeepEqual(m.Voters, []ids.NodeID{1, 3}) || !m.Has(2) {
		t.Fatalf("membership: %+v", m)
	}
}
