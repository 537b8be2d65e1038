package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/node"
)

// Admin is the engine's membership administration behind the SHARDKV command;
// *node.Node implements it.
type Admin interface {
	ID() ids.NodeID
	Membership(g ids.GroupID) (node.Membership, error)
	Master(g ids.GroupID) (ids.NodeID, time.Time)
	AddMember(ctx context.Context, g ids.GroupID, id ids.NodeID) error
	AddFollower(ctx context.Context, g ids.GroupID, id ids.NodeID) error
	RemoveMember(ctx context.Context, g ids.GroupID, id ids.NodeID) error
	ChangeMember(ctx context.Context, g ids.GroupID, old, new ids.NodeID) error
	TransferMaster(ctx context.Context, g ids.GroupID, to ids.NodeID) error
	SetMasterCandidate(g ids.GroupID, ok bool) error
	ForgetPeer(id ids.NodeID) error
}

// The SHARDKV command administers the groups' membership. It is not Redis
// Cluster's CLUSTER on purpose: cluster-aware clients and tools send CLUSTER
// SLOTS/SHARDS/INFO to discover a Redis Cluster, and shardkv must keep looking
// like a standalone Redis to them (an unknown command), not half of a cluster.
const adminHelp = `SHARDKV <subcommand> [<arg> ...]. Subcommands are:
MEMBERS [<group>|*]
    One line per group, as this replica last applied it: voters, followers,
    master (0: none valid here), lease_ms left on this replica's clock, version.
ADDFOLLOWER <node> <group>|*
    The node learns and applies the group's log but does not vote.
ADDMEMBER <node> <group>|*
    The node votes in the group (a follower is promoted).
REMOVEMEMBER <node> <group>|*
    The node leaves the group (voter or follower).
CHANGEMEMBER <old> <new> <group>|*
    Voter <old> is replaced by <new> in one change.
TRANSFERMASTER <node> <group>|*
    Run on the group's master: hands mastership to voter <node>. With *, every
    group this replica masters; groups mastered elsewhere or by none are skipped.
MASTERCANDIDATE yes|no <group>|*
    Whether this replica may become master (until it restarts).
FORGETPEER <node>
    This replica forgets the store it admitted under <node>, so that a node
    refused for coming back on a wiped disk is admitted as a new node. Acts on
    this replica only: run it on every other replica. Fails while <node> votes
    in a group: REMOVEMEMBER <node> * first, ADDMEMBER it back afterwards.
HELP
    Print this help.
A change replies OK changed=N unchanged=M (unchanged: already in effect;
TRANSFERMASTER: OK transferred=N unchanged=M skipped=K). If a group fails, the
reply is an error naming every failed group; the other groups keep their
changes. A node must be in every replica's peer list (--peers).`

func cmdAdmin(c *call) string {
	sub := strings.ToLower(string(c.args[1]))
	arity := map[string][2]int{ // min, max arguments after the subcommand
		"help": {0, 0}, "members": {0, 1}, "addfollower": {2, 2}, "addmember": {2, 2},
		"removemember": {2, 2}, "changemember": {3, 3}, "transfermaster": {2, 2}, "mastercandidate": {2, 2},
		"forgetpeer": {1, 1},
	}
	n, ok := arity[sub]
	if !ok {
		return fmt.Sprintf("ERR unknown subcommand '%s'. Try SHARDKV HELP.", c.args[1])
	}
	args := c.args[2:]
	if len(args) < n[0] || len(args) > n[1] {
		return wrongArity("shardkv|" + sub)
	}
	if sub == "help" {
		lines := strings.Split(adminHelp, "\n")
		c.conn.WriteArray(len(lines))
		for _, l := range lines {
			c.conn.WriteString(l)
		}
		return ""
	}
	a := c.s.cfg.Admin
	if a == nil {
		return "ERR SHARDKV administration is not available on this server"
	}
	if sub == "forgetpeer" {
		return c.s.forgetPeer(c, args[0])
	}
	var groupArg [][]byte // the last argument; none for a bare MEMBERS
	if len(args) > 0 {
		groupArg = args[len(args)-1:]
	}
	groups, text := c.s.parseGroups(groupArg, sub == "members")
	if text != "" {
		return text
	}
	switch sub {
	case "members":
		c.conn.WriteArray(len(groups))
		for _, g := range groups {
			c.conn.WriteBulkString(memberLine(a, g))
		}
		return ""
	case "mastercandidate":
		var yes bool
		switch strings.ToLower(string(args[0])) {
		case "yes", "true", "1", "on":
			yes = true
		case "no", "false", "0", "off":
		default:
			return "ERR MASTERCANDIDATE wants yes or no"
		}
		for _, g := range groups {
			if err := a.SetMasterCandidate(g, yes); err != nil {
				return "ERR " + oneLine(err.Error())
			}
		}
		c.conn.WriteString("OK")
		return ""
	}
	var nodes []ids.NodeID
	for _, arg := range args[:len(args)-1] {
		id, err := strconv.ParseUint(string(arg), 10, 64)
		if err != nil || id == 0 {
			return fmt.Sprintf("ERR invalid node ID '%s': want a positive integer", arg)
		}
		nodes = append(nodes, ids.NodeID(id))
	}
	if sub == "changemember" && nodes[0] == nodes[1] {
		return "ERR CHANGEMEMBER wants two different nodes"
	}
	op := adminOps[sub]
	return c.s.runAdmin(c, op, nodes, groups, string(groupArg[0]) == "*")
}

// forgetPeer is FORGETPEER <node>: node.ForgetPeer on this replica only.
func (s *Server) forgetPeer(c *call, arg []byte) string {
	a := s.cfg.Admin
	n, err := strconv.ParseUint(string(arg), 10, 64)
	if err != nil || n == 0 {
		return fmt.Sprintf("ERR invalid node ID '%s': want a positive integer", arg)
	}
	id := ids.NodeID(n)
	if id == a.ID() {
		return fmt.Sprintf("ERR node %d is this replica: run FORGETPEER %d on every other replica", id, id)
	}
	// The node checks this too; asking first names every group.
	var voting []ids.GroupID
	for g := 0; g < s.cfg.Client.Groups(); g++ {
		if m, err := a.Membership(ids.GroupID(g)); err == nil && slices.Contains(m.Voters, id) {
			voting = append(voting, ids.GroupID(g))
		}
	}
	if len(voting) > 0 {
		which := "group " + groupRanges(voting)
		if len(voting) > 1 {
			which = "groups " + groupRanges(voting)
		}
		return fmt.Sprintf("ERR node %d still votes in %s as this replica knows it: "+
			"remove it first (SHARDKV REMOVEMEMBER %d *, and let this replica apply it)", id, which, id)
	}
	if err := a.ForgetPeer(id); err != nil {
		if errors.Is(err, node.ErrStillVoter) {
			return "ERR " + oneLine(err.Error()) + fmt.Sprintf(" (SHARDKV REMOVEMEMBER %d *)", id)
		}
		return "ERR " + oneLine(err.Error())
	}
	c.conn.WriteString("OK")
	return ""
}

// parseGroups reads <group>|*; optional (MEMBERS) means no argument is every group.
func (s *Server) parseGroups(arg [][]byte, optional bool) ([]ids.GroupID, string) {
	n := s.cfg.Client.Groups()
	if (len(arg) == 0 && optional) || (len(arg) == 1 && string(arg[0]) == "*") {
		all := make([]ids.GroupID, n)
		for g := range all {
			all[g] = ids.GroupID(g)
		}
		return all, ""
	}
	g, err := strconv.ParseUint(string(arg[0]), 10, 32)
	if err != nil || g >= uint64(n) {
		return nil, fmt.Sprintf("ERR invalid group '%s': want 0 .. %d or *", arg[0], n-1)
	}
	return []ids.GroupID{ids.GroupID(g)}, ""
}

func memberLine(a Admin, g ids.GroupID) string {
	m, err := a.Membership(g)
	if err != nil {
		return fmt.Sprintf("group=%d error=%s", g, strings.ReplaceAll(oneLine(err.Error()), " ", "_"))
	}
	master, until := a.Master(g)
	lease := int64(0)
	if master != 0 {
		lease = max(0, time.Until(until).Milliseconds())
	}
	return fmt.Sprintf("group=%d voters=%s followers=%s master=%d lease_ms=%d version=%d",
		g, idList(m.Voters), idList(m.Followers), master, lease, m.Version)
}

func idList(s []ids.NodeID) string {
	parts := make([]string, len(s))
	for i, id := range s {
		parts[i] = strconv.FormatUint(uint64(id), 10)
	}
	return strings.Join(parts, ",")
}

// adminOp is one membership subcommand: the engine call and, when the engine
// says the change changes nothing, whether the asked-for state already holds
// (unchanged) or the change is impossible (the reason).
type adminOp struct {
	do func(ctx context.Context, a Admin, g ids.GroupID, n []ids.NodeID) error
	// holds says why the change is impossible, or "" when m is already the
	// state asked for.
	holds    func(m node.Membership, n []ids.NodeID) string
	transfer bool // TRANSFERMASTER: runs on the master, replies transferred=N
}

var adminOps = map[string]adminOp{
	"addfollower": {
		do: func(ctx context.Context, a Admin, g ids.GroupID, n []ids.NodeID) error {
			return a.AddFollower(ctx, g, n[0])
		},
		holds: func(m node.Membership, n []ids.NodeID) string {
			if slices.Contains(m.Voters, n[0]) {
				return fmt.Sprintf("node %d is a voter; REMOVEMEMBER it first to make it a follower", n[0])
			}
			return ""
		},
	},
	"addmember": {
		do: func(ctx context.Context, a Admin, g ids.GroupID, n []ids.NodeID) error {
			return a.AddMember(ctx, g, n[0])
		},
		holds: func(node.Membership, []ids.NodeID) string { return "" },
	},
	"removemember": {
		do: func(ctx context.Context, a Admin, g ids.GroupID, n []ids.NodeID) error {
			return a.RemoveMember(ctx, g, n[0])
		},
		holds: func(node.Membership, []ids.NodeID) string { return "" },
	},
	"changemember": {
		do: func(ctx context.Context, a Admin, g ids.GroupID, n []ids.NodeID) error {
			return a.ChangeMember(ctx, g, n[0], n[1])
		},
		holds: func(m node.Membership, n []ids.NodeID) string {
			if slices.Contains(m.Voters, n[1]) && !slices.Contains(m.Voters, n[0]) {
				return ""
			}
			if slices.Contains(m.Voters, n[1]) {
				return fmt.Sprintf("node %d is already a voter; REMOVEMEMBER %d instead", n[1], n[0])
			}
			return fmt.Sprintf("node %d is not a voter", n[0])
		},
	},
	"transfermaster": {
		do: func(ctx context.Context, a Admin, g ids.GroupID, n []ids.NodeID) error {
			return a.TransferMaster(ctx, g, n[0])
		},
		transfer: true,
	},
}

// adminParallel bounds the groups changed at once by one command with *.
const adminParallel = 16

// runAdmin applies op to every group, each with the server's timeout, and writes
// OK with the counts, or an error naming every group that failed.
func (s *Server) runAdmin(c *call, op adminOp, nodes []ids.NodeID, groups []ids.GroupID, all bool) string {
	a := s.cfg.Admin
	type outcome struct {
		changed, skipped bool
		err              string
	}
	out := make([]outcome, len(groups))
	sem := make(chan struct{}, adminParallel)
	var wg sync.WaitGroup
	for i, g := range groups {
		if op.transfer {
			// Only the master can hand over; with *, groups mastered elsewhere
			// are not this replica's to move.
			if m, _ := a.Master(g); m == nodes[0] {
				continue // unchanged
			} else if m != a.ID() {
				if all {
					out[i].skipped = true
				} else if m == 0 {
					out[i].err = "no master; TRANSFERMASTER runs on the master (the next command elects one)"
				} else {
					out[i].err = fmt.Sprintf("this replica is not the master; run it on node %d", m)
				}
				continue
			}
			if mem, err := a.Membership(g); err == nil && !slices.Contains(mem.Voters, nodes[0]) {
				out[i].err = fmt.Sprintf("node %d is not a voter", nodes[0])
				continue
			}
		}
		wg.Add(1)
		sem <- struct{}{}
		go func(i int, g ids.GroupID) {
			defer func() { <-sem; wg.Done() }()
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
			defer cancel()
			err := op.do(ctx, a, g, nodes)
			for try := 1; op.transfer && errors.Is(err, node.ErrBusy) && try < 5 && ctx.Err() == nil; try++ {
				// A lease renewal was in flight, or the master changed: ask again.
				time.Sleep(time.Duration(try) * 20 * time.Millisecond)
				err = op.do(ctx, a, g, nodes)
			}
			switch {
			case err == nil:
				out[i].changed = true
			case errors.Is(err, node.ErrNoChange) && op.holds != nil:
				if m, merr := a.Membership(g); merr != nil {
					out[i].err = oneLine(merr.Error())
				} else if why := op.holds(m, nodes); why != "" {
					out[i].err = why
				}
			default:
				out[i].err = adminError(err, s.cfg.Timeout)
			}
		}(i, g)
	}
	wg.Wait()

	var changed, unchanged, skipped int
	var failed []ids.GroupID
	byText := map[string][]ids.GroupID{}
	var texts []string
	for i, o := range out {
		switch {
		case o.err != "":
			failed = append(failed, groups[i])
			if byText[o.err] == nil {
				texts = append(texts, o.err)
			}
			byText[o.err] = append(byText[o.err], groups[i])
		case o.changed:
			changed++
		case o.skipped:
			skipped++
		default:
			unchanged++
		}
	}
	counts := fmt.Sprintf("changed=%d unchanged=%d", changed, unchanged)
	if op.transfer {
		counts = fmt.Sprintf("transferred=%d unchanged=%d skipped=%d", changed, unchanged, skipped)
	}
	if len(failed) == 0 {
		c.conn.WriteString("OK " + counts)
		return ""
	}
	var b strings.Builder
	if len(groups) == 1 {
		fmt.Fprintf(&b, "ERR group %d: %s", failed[0], texts[0])
		return b.String()
	}
	fmt.Fprintf(&b, "ERR %d of %d groups failed (%s):", len(failed), len(groups), counts)
	for i, t := range texts {
		if i > 0 {
			b.WriteString(";")
		}
		gs := byText[t]
		if len(gs) == 1 {
			fmt.Fprintf(&b, " group %d: %s", gs[0], t)
		} else {
			fmt.Fprintf(&b, " groups %s: %s", groupRanges(gs), t)
		}
	}
	return b.String()
}

// adminError is the text of a failed change.
func adminError(err error, timeout time.Duration) string {
	var nm *node.NotMasterError
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf("no answer within %v: the change may or may not take effect; check SHARDKV MEMBERS", timeout)
	case errors.Is(err, node.ErrNotInCluster):
		return oneLine(err.Error()) + " (every replica must list it in its peers)"
	case errors.Is(err, node.ErrMembershipConflict):
		return "other membership changes kept getting in first; try again"
	case errors.As(err, &nm):
		if nm.Master == 0 {
			return "this replica is not the master and knows of none"
		}
		return fmt.Sprintf("this replica is not the master; run it on node %d", nm.Master)
	}
	return oneLine(err.Error())
}

func oneLine(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, "\r", " "), "\n", " ") }

// groupRanges writes sorted groups as 0-3,7,9-10.
func groupRanges(gs []ids.GroupID) string {
	var parts []string
	for i := 0; i < len(gs); {
		j := i
		for j+1 < len(gs) && gs[j+1] == gs[j]+1 {
			j++
		}
		if j == i {
			parts = append(parts, strconv.FormatUint(uint64(gs[i]), 10))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", gs[i], gs[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}
