package group

import (
	"errors"
	"slices"
	"time"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/instance"
	"github.com/multipaxos/engine/statemachine"
	"go.uber.org/zap"
)

// ErrMembershipConflict: the membership changed between reading it and the change
// being chosen (the change's version was stale); read it again and retry.
var ErrMembershipConflict = errors.New("membership changed concurrently")

// applySystem applies the engine's own commands of a chosen instance - master claims
// and membership changes - once, in instance order, as soon as the instance is known
// chosen: before the application's state machine gets it (which may stall) and
// before anything is proposed for the next instance, which must run under the new
// membership. Results wait in sysResults for execute.
func (r *Replica) applySystem(e instance.Entry) {
	if e.Instance != r.sysApplied {
		return // already applied (a replay overlap)
	}
	r.sysApplied++
	cmds, err := decodeValue(e.Value)
	if err != nil {
		return // execute reports the bad value and stalls the group
	}
	r.decoded = decodedValue{inst: e.Instance, cmds: cmds, ok: true}
	changed := false
	for _, c := range cmds {
		switch c.Kind {
		case KindMaster:
			r.sysResults[c.ID] = r.applyClaim(e.Instance, c)
		case KindMembership:
			r.sysResults[c.ID] = r.applyMembership(e.Instance, c)
		default:
			continue
		}
		changed = changed || r.sysResults[c.ID][0] == '1'
	}
	if changed && e.Instance+1-r.sysHistory[len(r.sysHistory)-1].from >= sysPointEvery {
		r.sysHistory = append(r.sysHistory, sysPoint{from: e.Instance + 1, state: r.systemState()})
	}
}

func (r *Replica) applyMembership(inst ids.InstanceID, c Command) []byte {
	sys := r.systemState()
	if !sys.applyCommand(inst, c) {
		return []byte{'0'}
	}
	masterRemoved := sys.Master != r.lease.state
	r.setMembers(sys.Members)
	if masterRemoved {
		r.lease.state = sys.Master
		r.lease.self, r.lease.expiry = false, time.Time{}
	}
	if !r.replaying {
		r.log.Info("membership changed", zap.Uint64("instance", uint64(inst)),
			zap.Any("voters", r.members.Voters), zap.Any("followers", r.members.Followers))
	}
	return []byte{'1'}
}

// setMembers makes m the membership in force, in the core too.
func (r *Replica) setMembers(m statemachine.Membership) {
	r.members = m
	if err := r.core.SetMembers(r.members.Voters, r.members.Followers); err != nil {
		r.log.Error("membership change refused by the protocol core", zap.Error(err))
	}
	pub := r.members.Clone()
	r.publishedMembers.Store(&pub)
}

// Membership returns the group's members as this member last applied them; safe to
// call from any goroutine.
func (r *Replica) Membership() statemachine.Membership {
	if m := r.publishedMembers.Load(); m != nil {
		return m.Clone()
	}
	return statemachine.Membership{Voters: sortedIDs(r.cfg.Members), Followers: sortedIDs(r.cfg.Followers)}
}

// ChangeMembers proposes a membership change computed by build from the current
// membership; it goes to the master like any proposal. A master that removes
// itself stops trusting its lease at once. done gets nil once the change is chosen
// and applied here, ErrMembershipConflict if the membership changed meanwhile.
func (r *Replica) ChangeMembers(build func(cur statemachine.Membership) (voters, followers []ids.NodeID, err error), done func(error)) {
	cur := r.members.Clone()
	voters, followers, err := build(cur)
	if err == nil {
		err = statemachine.ValidMembers(voters, followers)
	}
	if err != nil {
		done(err)
		return
	}
	r.seq++
	p := NewProposal(RequestID{Node: r.cfg.Self, Seq: r.seq}, statemachine.EncodeMembershipChange(
		statemachine.MembershipChange{Voters: voters, Followers: followers, Expect: cur.Version}))
	p.kind = KindMembership
	p.notify = func(res Result, err error) {
		if err == nil && string(res.Value) != "1" {
			err = ErrMembershipConflict
		}
		done(err)
	}
	if r.lease.isMaster(r.cfg.Clock()) && !slices.Contains(voters, r.cfg.Self) {
		r.lease.expiry = r.cfg.Clock() // removing ourselves: serve no more lease reads
	}
	r.Propose(p)
}

func sortedIDs(s []ids.NodeID) []ids.NodeID {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
