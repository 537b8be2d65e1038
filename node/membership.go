package node

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/multipaxos/engine/group"
	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/statemachine"
)

// ErrMembershipConflict: another membership change won the race; the node API
// already retried a few times.
var ErrMembershipConflict = group.ErrMembershipConflict

// ErrNotInCluster: the node named is not in Options.Members, so no connection to it
// exists.
var ErrNotInCluster = errors.New("node: not a node of the cluster")

// Membership is a group's voters and followers.
type Membership = statemachine.Membership

// Membership returns group g's members as this node last applied them.
func (n *Node) Membership(g ids.GroupID) (Membership, error) {
	if int(g) >= len(n.groups) {
		return Membership{}, fmt.Errorf("%w: %d", ErrUnknownGroup, g)
	}
	return n.groups[g].replica.Membership(), nil
}

// changeMembers proposes edit(current) as group g's new membership and waits until
// it is chosen and applied here, retrying when another change got in first.
func (n *Node) changeMembers(ctx context.Context, g ids.GroupID, touched []ids.NodeID, edit func(v, f []ids.NodeID) ([]ids.NodeID, []ids.NodeID, error)) error {
	for _, id := range touched {
		if _, ok := n.opts.Members[id]; !ok {
			return fmt.Errorf("%w: %d", ErrNotInCluster, id)
		}
	}
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		err = n.call(ctx, g, func(r *group.Replica, done func(error)) {
			r.ChangeMembers(func(cur statemachine.Membership) ([]ids.NodeID, []ids.NodeID, error) {
				return edit(slices.Clone(cur.Voters), slices.Clone(cur.Followers))
			}, done)
		})
		if !errors.Is(err, ErrMembershipConflict) {
			return err
		}
	}
	return err
}

func without(s []ids.NodeID, id ids.NodeID) []ids.NodeID {
	return slices.DeleteFunc(s, func(x ids.NodeID) bool { return x == id })
}

// ErrNoChange: the change asked for is already in effect or impossible.
var ErrNoChange = errors.New("node: membership change changes nothing")

// AddMember makes id a voter of group g (a follower is promoted). A new member
// starts empty and catches up from the others. The change applies from the
// instance after the one that chose it.
func (n *Node) AddMember(ctx context.Context, g ids.GroupID, id ids.NodeID) error {
	return n.changeMembers(ctx, g, []ids.NodeID{id}, func(v, f []ids.NodeID) ([]ids.NodeID, []ids.NodeID, error) {
		if slices.Contains(v, id) {
			return nil, nil, ErrNoChange
		}
		return append(v, id), without(f, id), nil
	})
}

// RemoveMember removes voter or follower id from group g. Removing the master hands
// mastership on: the group has no master from the next instance on, and the next
// proposal or lease read elects one.
func (n *Node) RemoveMember(ctx context.Context, g ids.GroupID, id ids.NodeID) error {
	return n.changeMembers(ctx, g, nil, func(v, f []ids.NodeID) ([]ids.NodeID, []ids.NodeID, error) {
		if !slices.Contains(v, id) && !slices.Contains(f, id) {
			return nil, nil, ErrNoChange
		}
		return without(v, id), without(f, id), nil
	})
}

// ChangeMember replaces voter old by new in one change.
func (n *Node) ChangeMember(ctx context.Context, g ids.GroupID, old, new ids.NodeID) error {
	return n.changeMembers(ctx, g, []ids.NodeID{new}, func(v, f []ids.NodeID) ([]ids.NodeID, []ids.NodeID, error) {
		if !slices.Contains(v, old) || slices.Contains(v, new) {
			return nil, nil, ErrNoChange
		}
		return append(without(v, old), new), without(f, new), nil
	})
}

// AddFollower makes id a follower of group g: it learns and applies every chosen
// value and can serve ReadBarrier reads, but never votes. Promote it with AddMember.
func (n *Node) AddFollower(ctx context.Context, g ids.GroupID, id ids.NodeID) error {
	return n.changeMembers(ctx, g, []ids.NodeID{id}, func(v, f []ids.NodeID) ([]ids.NodeID, []ids.NodeID, error) {
		if slices.Contains(v, id) || slices.Contains(f, id) {
			return nil, nil, ErrNoChange
		}
		return v, append(f, id), nil
	})
}
