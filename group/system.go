package group

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/statemachine"
	"github.com/vmihailenco/msgpack/v5"
)

// SystemState is the engine's own replicated state of a group at some instance:
// the master record and the membership. Every member derives it from the log, so
// once the log is trimmed it must travel with the trim point (logstore Meta.Base)
// and with every checkpoint, or a member rebuilt from one would apply later master
// claims and membership changes to another state than its peers.
type SystemState struct {
	Master  statemachine.MasterState
	Members statemachine.Membership
}

// applyCommand is the deterministic transition of one system command chosen at
// inst; ok says whether it took effect. Commands of other kinds change nothing.
func (s *SystemState) applyCommand(inst ids.InstanceID, c Command) (ok bool) {
	switch c.Kind {
	case KindMaster:
		claim, err := statemachine.DecodeClaim(c.Data)
		return err == nil && s.Master.Apply(inst, claim)
	case KindMembership:
		change, err := statemachine.DecodeMembershipChange(c.Data)
		if err != nil || !s.Members.Apply(inst, change) {
			return false
		}
		if !slices.Contains(s.Members.Voters, s.Master.Master) {
			// The master was removed: nobody is master from here on, on every
			// member alike, and claims made for the old version fail.
			s.Master.Master, s.Master.Version = 0, uint64(inst)+1
		}
		return true
	}
	return false
}

// applyValue applies every system command of the instance value chosen at inst.
func (s *SystemState) applyValue(inst ids.InstanceID, value []byte) {
	cmds, err := decodeValue(value)
	if err != nil {
		return // the same on every member: an undecodable value changes nothing here
	}
	for _, c := range cmds {
		s.applyCommand(inst, c)
	}
}

// clone returns a deep copy.
func (s SystemState) clone() SystemState {
	s.Members = s.Members.Clone()
	return s
}

// ErrBadSystemState is wrapped by every failure to decode a SystemState.
var ErrBadSystemState = errors.New("group: bad system state")

const systemStateVersion = 1

// systemStateBytesMax bounds an encoded SystemState (a member list of thousands of
// nodes fits); a longer one is garbage.
const systemStateBytesMax = 1 << 20

// EncodeSystemState encodes s as msgpack
// [version, master, master version, lease ns, [voters], [followers], members version].
func EncodeSystemState(s SystemState) []byte {
	var buf bytes.Buffer
	e := msgpack.NewEncoder(&buf)
	_ = e.EncodeArrayLen(7)
	_ = e.EncodeUint(systemStateVersion)
	_ = e.EncodeUint(uint64(s.Master.Master))
	_ = e.EncodeUint(s.Master.Version)
	_ = e.EncodeUint(uint64(s.Master.Lease))
	for _, list := range [][]ids.NodeID{s.Members.Voters, s.Members.Followers} {
		_ = e.EncodeArrayLen(len(list))
		for _, n := range list {
			_ = e.EncodeUint(uint64(n))
		}
	}
	_ = e.EncodeUint(s.Members.Version)
	return buf.Bytes()
}

// DecodeSystemState decodes what EncodeSystemState produced; every length is
// checked against the input before anything is allocated.
func DecodeSystemState(b []byte) (SystemState, error) {
	var s SystemState
	fail := func(err error) (SystemState, error) {
		return SystemState{}, fmt.Errorf("%w: %v", ErrBadSystemState, err)
	}
	if len(b) > systemStateBytesMax {
		return fail(fmt.Errorf("%d bytes", len(b)))
	}
	r := bytes.NewReader(b)
	d := msgpack.NewDecoder(r)
	n, err := d.DecodeArrayLen()
	if err != nil || n != 7 {
		return fail(fmt.Errorf("array of %d, %v", n, err))
	}
	var version, master, lease uint64
	for _, p := range []*uint64{&version, &master, &s.Master.Version, &lease} {
		if *p, err = d.DecodeUint64(); err != nil {
			return fail(err)
		}
	}
	if version != systemStateVersion {
		return fail(fmt.Errorf("version %d", version))
	}
	if lease > uint64(24*time.Hour) {
		return fail(fmt.Errorf("lease %d out of range", lease))
	}
	s.Master.Master, s.Master.Lease = ids.NodeID(master), time.Duration(lease)
	for _, list := range []*[]ids.NodeID{&s.Members.Voters, &s.Members.Followers} {
		k, err := d.DecodeArrayLen()
		if err != nil || k < 0 || k > r.Len() {
			return fail(fmt.Errorf("list of %d in %d bytes, %v", k, r.Len(), err))
		}
		for range k {
			v, err := d.DecodeUint64()
			if err != nil {
				return fail(err)
			}
			*list = append(*list, ids.NodeID(v))
		}
	}
	if s.Members.Version, err = d.DecodeUint64(); err != nil {
		return fail(err)
	}
	if r.Len() != 0 {
		return fail(fmt.Errorf("%d trailing bytes", r.Len()))
	}
	if err := statemachine.ValidMembers(s.Members.Voters, s.Members.Followers); err != nil {
		return fail(err)
	}
	if !slices.IsSorted(s.Members.Voters) || !slices.IsSorted(s.Members.Followers) {
		return fail(errors.New("member lists not sorted"))
	}
	return s, nil
}
