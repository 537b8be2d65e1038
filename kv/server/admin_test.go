package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/kv"
	"github.com/multipaxos/engine/node"
)

// fakeAdmin keeps memberships in memory and fails the groups told to.
type fakeAdmin struct {
	mu      sync.Mutex
	mem     map[ids.GroupID]*node.Membership
	master  map[ids.GroupID]ids.NodeID
	fail    map[ids.GroupID]error
	cluster []ids.NodeID
	calls   []string
	forget  error // what ForgetPeer returns for a non-voter
}

func newFakeAdmin(groups int) *fakeAdmin {
	a := &fakeAdmin{mem: map[ids.GroupID]*node.Membership{}, master: map[ids.GroupID]ids.NodeID{},
		fail: map[ids.GroupID]error{}, cluster: []ids.NodeID{1, 2, 3, 4, 5, 6}}
	for g := 0; g < groups; g++ {
		a.mem[ids.GroupID(g)] = &node.Membership{Voters: []ids.NodeID{1, 2, 3}}
	}
	return a
}

func (a *fakeAdmin) ID() ids.NodeID { return 1 }

func (a *fakeAdmin) Membership(g ids.GroupID) (node.Membership, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	m := a.mem[g]
	return node.Membership{Voters: slices.Clone(m.Voters), Followers: slices.Clone(m.Followers), Version: m.Version}, nil
}

func (a *fakeAdmin) Master(g ids.GroupID) (ids.NodeID, time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if m := a.master[g]; m != 0 {
		return m, time.Now().Add(time.Hour)
	}
	return 0, time.Time{}
}

// change is node's changeMembers in miniature.
func (a *fakeAdmin) change(g ids.GroupID, name string, touched ids.NodeID, edit func(m *node.Membership) bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, fmt.Sprint(name, " ", g))
	if err := a.fail[g]; err != nil {
		return err
	}
	if touched != 0 && !slices.Contains(a.cluster, touched) {
		return fmt.Errorf("%w: %d", node.ErrNotInCluster, touched)
	}
	m := a.mem[g]
	if !edit(m) {
		return node.ErrNoChange
	}
	slices.Sort(m.Voters)
	slices.Sort(m.Followers)
	m.Version++
	return nil
}

func del(s []ids.NodeID, id ids.NodeID) []ids.NodeID {
	return slices.DeleteFunc(s, func(x ids.NodeID) bool { return x == id })
}

func (a *fakeAdmin) AddMember(_ context.Context, g ids.GroupID, id ids.NodeID) error {
	return a.change(g, "add", id, func(m *node.Membership) bool {
		if slices.Contains(m.Voters, id) {
			return false
		}
		m.Voters, m.Followers = append(m.Voters, id), del(m.Followers, id)
		return true
	})
}

func (a *fakeAdmin) AddFollower(_ context.Context, g ids.GroupID, id ids.NodeID) error {
	return a.change(g, "follow", id, func(m *node.Membership) bool {
		if slices.Contains(m.Voters, id) || slices.Contains(m.Followers, id) {
			return false
		}
		m.Followers = append(m.Followers, id)
		return true
	})
}

func (a *fakeAdmin) RemoveMember(_ context.Context, g ids.GroupID, id ids.NodeID) error {
	return a.change(g, "remove", 0, func(m *node.Membership) bool {
		if !slices.Contains(m.Voters, id) && !slices.Contains(m.Followers, id) {
			return false
		}
		m.Voters, m.Followers = del(m.Voters, id), del(m.Followers, id)
		return true
	})
}

func (a *fakeAdmin) ChangeMember(_ context.Context, g ids.GroupID, old, new ids.NodeID) error {
	return a.change(g, "change", new, func(m *node.Membership) bool {
		if !slices.Contains(m.Voters, old) || slices.Contains(m.Voters, new) {
			return false
		}
		m.Voters, m.Followers = append(del(m.Voters, old), new), del(m.Followers, new)
		return true
	})
}

func (a *fakeAdmin) TransferMaster(_ context.Context, g ids.GroupID, to ids.NodeID) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, fmt.Sprint("transfer ", g))
	if err := a.fail[g]; err != nil {
		return err
	}
	a.master[g] = to
	return nil
}

func (a *fakeAdmin) SetMasterCandidate(g ids.GroupID, ok bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, fmt.Sprint("candidate ", g, " ", ok))
	return nil
}

// ForgetPeer is node.ForgetPeer in miniature.
func (a *fakeAdmin) ForgetPeer(id ids.NodeID) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, fmt.Sprint("forget ", id))
	for g, m := range a.mem {
		if slices.Contains(m.Voters, id) {
			return fmt.Errorf("%w: node %d still votes in group %d: remove it from every group first", node.ErrStillVoter, id, g)
		}
	}
	return a.forget
}

func startAdmin(t *testing.T, a Admin, password string) *Server {
	t.Helper()
	st, err := kv.Open(t.TempDir(), kv.Options{Groups: 8, CacheSize: 1 << 20, MemTableSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	cl, err := kv.NewClient(kv.ClientOptions{Engine: kv.NewDirect(st), Store: st})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Addr: "127.0.0.1:0", Client: cl, Password: password, Timeout: time.Second}
	if a != nil {
		cfg.Admin = a
	}
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = s.Close()
		_ = st.Close()
	})
	return s
}

func TestAdminCommands(t *testing.T) {
	a := newFakeAdmin(8)
	a.master[2], a.master[3] = 1, 2
	r := dialRaw(t, startAdmin(t, a, "pw"))
	check(t, r, []exchange{
		{[]string{"SHARDKV", "MEMBERS"}, "-NOAUTH Authentication required."},
		{[]string{"AUTH", "pw"}, "+OK"},
		{[]string{"SHARDKV"}, "-ERR wrong number of arguments for 'shardkv' command"},
		{[]string{"SHARDKV", "NODES"}, "-ERR unknown subcommand 'NODES'. Try SHARDKV HELP."},
		{[]string{"SHARDKV", "MEMBERS", "1", "2"}, "-ERR wrong number of arguments for 'shardkv|members' command"},
		{[]string{"SHARDKV", "MEMBERS", "8"}, "-ERR invalid group '8': want 0 .. 7 or *"},
		{[]string{"SHARDKV", "MEMBERS", "-1"}, "-ERR invalid group '-1': want 0 .. 7 or *"},
		{[]string{"shardkv", "members", "0"}, "*[$group=0 voters=1,2,3 followers= master=0 lease_ms=0 version=0]"},
		{[]string{"SHARDKV", "ADDMEMBER", "x", "0"}, "-ERR invalid node ID 'x': want a positive integer"},
		{[]string{"SHARDKV", "ADDFOLLOWER", "4", "*"}, "+OK changed=8 unchanged=0"},
		{[]string{"SHARDKV", "ADDFOLLOWER", "4", "0"}, "+OK changed=0 unchanged=1"},
		{[]string{"SHARDKV", "MEMBERS", "1"}, "*[$group=1 voters=1,2,3 followers=4 master=0 lease_ms=0 version=1]"},
		{[]string{"SHARDKV", "ADDFOLLOWER", "3", "1"}, "-ERR group 1: node 3 is a voter; REMOVEMEMBER it first to make it a follower"},
		{[]string{"SHARDKV", "CHANGEMEMBER", "3", "4", "0"}, "+OK changed=1 unchanged=0"},
		{[]string{"SHARDKV", "CHANGEMEMBER", "3", "4", "*"}, "+OK changed=7 unchanged=1"},
		{[]string{"SHARDKV", "CHANGEMEMBER", "3", "2", "0"}, "+OK changed=0 unchanged=1"}, // what it asks for holds
		{[]string{"SHARDKV", "CHANGEMEMBER", "1", "2", "0"}, "-ERR group 0: node 2 is already a voter; REMOVEMEMBER 1 instead"},
		{[]string{"SHARDKV", "ADDMEMBER", "3", "0"}, "+OK changed=1 unchanged=0"},
		{[]string{"SHARDKV", "CHANGEMEMBER", "5", "3", "*"}, "-ERR 7 of 8 groups failed (changed=0 unchanged=1): groups 1-7: node 5 is not a voter"},
		{[]string{"SHARDKV", "ADDMEMBER", "9", "3"}, "-ERR group 3: node: not a node of the cluster: 9 (every replica must list it in its peers)"},
		{[]string{"SHARDKV", "REMOVEMEMBER", "4", "0"}, "+OK changed=1 unchanged=0"},
		{[]string{"SHARDKV", "REMOVEMEMBER", "4", "0"}, "+OK changed=0 unchanged=1"},
		{[]string{"SHARDKV", "MEMBERS", "0"}, "*[$group=0 voters=1,2,3 followers= master=0 lease_ms=0 version=4]"},
		{[]string{"SHARDKV", "MASTERCANDIDATE", "no", "*"}, "+OK"},
		{[]string{"SHARDKV", "MASTERCANDIDATE", "sometimes", "*"}, "-ERR MASTERCANDIDATE wants yes or no"},
		// TRANSFERMASTER: group 2 is mastered here, group 3 by node 2, the rest by none.
		{[]string{"SHARDKV", "TRANSFERMASTER", "2", "3"}, "+OK transferred=0 unchanged=1 skipped=0"},
		{[]string{"SHARDKV", "TRANSFERMASTER", "4", "3"}, "-ERR group 3: this replica is not the master; run it on node 2"},
		{[]string{"SHARDKV", "TRANSFERMASTER", "4", "5"}, "-ERR group 5: no master; TRANSFERMASTER runs on the master (the next command elects one)"},
		{[]string{"SHARDKV", "TRANSFERMASTER", "9", "2"}, "-ERR group 2: node 9 is not a voter"},
		{[]string{"SHARDKV", "TRANSFERMASTER", "2", "*"}, "+OK transferred=1 unchanged=1 skipped=6"},
	})
	if r.do("SHARDKV", "HELP")[:2] != "*[" {
		t.Error("HELP is not an array")
	}

	// Failures: each group's own, grouped by text, with the counts of the rest.
	a.mu.Lock()
	a.fail[1] = node.ErrMembershipConflict
	a.fail[2] = node.ErrMembershipConflict
	a.fail[4] = context.DeadlineExceeded
	a.fail[5] = errors.New("storage\nfailure")
	a.mu.Unlock()
	check(t, r, []exchange{
		{[]string{"SHARDKV", "ADDFOLLOWER", "5", "*"}, "-ERR 4 of 8 groups failed (changed=4 unchanged=0): " +
			"groups 1-2: other membership changes kept getting in first; try again; " +
			"group 4: no answer within 1s: the change may or may not take effect; check SHARDKV MEMBERS; " +
			"group 5: storage failure"},
		{[]string{"SHARDKV", "ADDFOLLOWER", "5", "5"}, "-ERR group 5: storage failure"},
		{[]string{"SHARDKV", "ADDFOLLOWER", "5", "6"}, "+OK changed=0 unchanged=1"},
	})
	a.mu.Lock()
	a.master[2] = 1
	a.fail[2] = &node.NotMasterError{Master: 3}
	a.mu.Unlock()
	check(t, r, []exchange{
		{[]string{"SHARDKV", "TRANSFERMASTER", "2", "2"}, "-ERR group 2: this replica is not the master; run it on node 3"},
	})
}

func TestAdminForgetPeer(t *testing.T) {
	a := newFakeAdmin(8)
	r := dialRaw(t, startAdmin(t, a, ""))
	check(t, r, []exchange{
		{[]string{"SHARDKV", "FORGETPEER"}, "-ERR wrong number of arguments for 'shardkv|forgetpeer' command"},
		{[]string{"SHARDKV", "FORGETPEER", "3", "*"}, "-ERR wrong number of arguments for 'shardkv|forgetpeer' command"},
		{[]string{"SHARDKV", "FORGETPEER", "x"}, "-ERR invalid node ID 'x': want a positive integer"},
		{[]string{"SHARDKV", "FORGETPEER", "0"}, "-ERR invalid node ID '0': want a positive integer"},
		{[]string{"SHARDKV", "FORGETPEER", "1"}, "-ERR node 1 is this replica: run FORGETPEER 1 on every other replica"},
		{[]string{"SHARDKV", "FORGETPEER", "3"}, "-ERR node 3 still votes in groups 0-7 as this replica knows it: " +
			"remove it first (SHARDKV REMOVEMEMBER 3 *, and let this replica apply it)"},
		{[]string{"SHARDKV", "REMOVEMEMBER", "3", "*"}, "+OK changed=8 unchanged=0"},
		{[]string{"SHARDKV", "ADDMEMBER", "3", "5"}, "+OK changed=1 unchanged=0"},
		{[]string{"SHARDKV", "FORGETPEER", "3"}, "-ERR node 3 still votes in group 5 as this replica knows it: " +
			"remove it first (SHARDKV REMOVEMEMBER 3 *, and let this replica apply it)"},
		{[]string{"SHARDKV", "ADDFOLLOWER", "3", "5"}, "-ERR group 5: node 3 is a voter; REMOVEMEMBER it first to make it a follower"},
		{[]string{"SHARDKV", "REMOVEMEMBER", "3", "5"}, "+OK changed=1 unchanged=0"},
		{[]string{"SHARDKV", "ADDFOLLOWER", "3", "5"}, "+OK changed=1 unchanged=0"},
		{[]string{"shardkv", "forgetpeer", "3"}, "+OK"}, // a follower does not vote
		{[]string{"SHARDKV", "FORGETPEER", "3"}, "+OK"}, // again: nothing left to forget
	})
	a.mu.Lock()
	if n := slices.Index(a.calls, "forget 3"); n < 0 || len(a.calls)-n != 2 {
		t.Errorf("ForgetPeer calls: %q, want it called twice, after the removal", a.calls)
	}
	a.forget = errors.New("storage\nfailure")
	a.mu.Unlock()
	check(t, r, []exchange{{[]string{"SHARDKV", "FORGETPEER", "4"}, "-ERR storage failure"}})
	// The node saw a vote this replica's MEMBERS did not show yet.
	a.mu.Lock()
	a.forget = fmt.Errorf("%w: node 4 still votes in group 2: remove it from every group first", node.ErrStillVoter)
	a.mu.Unlock()
	check(t, r, []exchange{{[]string{"SHARDKV", "FORGETPEER", "4"}, "-ERR node: peer still votes in a group: " +
		"node 4 still votes in group 2: remove it from every group first (SHARDKV REMOVEMEMBER 4 *)"}})
	if help := r.do("SHARDKV", "HELP"); !strings.Contains(help, "FORGETPEER <node>") || !strings.Contains(help, "run it on every other replica") {
		t.Errorf("HELP does not describe FORGETPEER: %s", help)
	}
}

func TestAdminNotAvailable(t *testing.T) {
	r := dialRaw(t, startAdmin(t, nil, ""))
	check(t, r, []exchange{
		{[]string{"SHARDKV", "MEMBERS"}, "-ERR SHARDKV administration is not available on this server"},
		{[]string{"CLUSTER", "SLOTS"}, "-ERR unknown command 'CLUSTER', with args beginning with: 'SLOTS' "},
	})
}

func TestGroupRanges(t *testing.T) {
	for _, tc := range []struct {
		in   []ids.GroupID
		want string
	}{{[]ids.GroupID{0}, "0"}, {[]ids.GroupID{0, 1, 2, 5, 7, 8}, "0-2,5,7-8"}, {[]ids.GroupID{3, 5}, "3,5"}} {
		if got := groupRanges(tc.in); got != tc.want {
			t.Errorf("groupRanges(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
