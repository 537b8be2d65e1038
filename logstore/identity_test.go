package logstore

import (
	"bytes"
	"errors"
	"testing"

	"github.com/multipaxos/engine/ids"
)

func TestIdentityRoundTripAndCreated(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !s.Created() {
		t.Fatal("a new directory was not reported created")
	}
	if _, err := s.LoadIdentity(); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a new store has an identity: %v", err)
	}
	want := Identity{Incarnation: 0xfeed, Verified: true, Peers: map[ids.NodeID]uint64{2: 7, 9: 1 << 63}}
	if err := s.SaveIdentity(want); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveIdentity(Identity{}); err == nil {
		t.Fatal("an identity without an incarnation was saved")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Created() {
		t.Fatal("an existing store was reported created")
	}
	got, err := s.LoadIdentity()
	if err != nil {
		t.Fatal(err)
	}
	if got.Incarnation != want.Incarnation || !got.Verified || len(got.Peers) != 2 || got.Peers[2] != 7 || got.Peers[9] != 1<<63 {
		t.Fatalf("identity %+v, want %+v", got, want)
	}
	// The identity key is outside every group's range: the groups do not see it.
	if _, ok, err := s.LastInstance(0); ok || err != nil {
		t.Fatalf("group 0 sees a record: %v %v", ok, err)
	}
}

func TestIdentityRecordRejectsDamage(t *testing.T) {
	rec, err := encodeIdentity(Identity{Incarnation: 3, Peers: map[ids.NodeID]uint64{1: 4}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range rec {
		bad := bytes.Clone(rec)
		bad[i] ^= 0x10
		if _, err := decodeIdentity(bad); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("flipped byte %d accepted: %v", i, err)
		}
	}
	for n := range len(rec) {
		if _, err := decodeIdentity(rec[:n]); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("record cut at %d accepted: %v", n, err)
		}
	}
}

func FuzzDecodeIdentity(f *testing.F) {
	valid, _ := encodeIdentity(Identity{Incarnation: 99, Verified: true, Peers: map[ids.NodeID]uint64{1: 2, 3: 4}})
	f.Add(valid)
	f.Add(valid[:len(valid)-5])
	f.Add([]byte{formatIdentityV1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		id, err := decodeIdentity(data)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		again, err := encodeIdentity(id)
		if err != nil || !bytes.Equal(again, data) {
			t.Fatalf("decoded %x, re-encoded %x (%v)", data, again, err)
		}
	})
}

func TestHasGroupData(t *testing.T) {
	s := openPebble(t, t.TempDir(), Options{})
	defer s.Close()
	if err := s.SaveIdentity(Identity{Incarnation: 1}); err != nil {
		t.Fatal(err)
	}
	if has, err := s.HasGroupData(); has || err != nil {
		t.Fatalf("a store with only its identity has group data: %v %v", has, err)
	}
	mustCommit(t, s, GroupWrite{Group: 65535, Entries: entries(0, 1, 8)})
	if has, err := s.HasGroupData(); !has || err != nil {
		t.Fatalf("a store with a log entry has no group data: %v %v", has, err)
	}
}
