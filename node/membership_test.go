package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/multipaxos/engine/ids"
)

// TestMembershipChanges: node 4 starts outside group 0, follows it, is promoted to
// voter; then the master is removed and a new one takes over; every current member
// ends with the same digest.
func TestMembershipChanges(t *testing.T) {
	tc := newTestClusterWith(t, 4, 1, func(ids.GroupID) ([]ids.NodeID, []ids.NodeID) {
		return []ids.NodeID{1, 2, 3}, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	propose := func(via ids.NodeID, n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			cmd := []byte(fmt.Sprint("v", via, "-", i, "-", time.Now().UnixNano()))
			_, err := tc.nodes[via].Propose(ctx, 0, cmd)
			for try := 0; errors.Is(err, ErrUnknownOutcome) && try < 3; try++ {
				_, err = tc.nodes[via].Propose(ctx, 0, cmd) // the master changed under it
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	propose(1, 20)
	if err := tc.nodes[2].AddFollower(ctx, 0, 4); err != nil {
		t.Fatal(err)
	}
	propose(2, 20)
	waitFor(t, ctx, func() bool { n, _ := tc.sms[4][0].state(); m, _ := tc.sms[1][0].state(); return n == m && n > 0 })
	if err := tc.nodes[4].ReadBarrier(ctx, 0); err != nil { // a follower serves barrier reads
		t.Fatal(err)
	}
	if err := tc.nodes[3].AddMember(ctx, 0, 4); err != nil {
		t.Fatal(err)
	}
	m, _ := tc.nodes[1].Membership(0)
	if !slices.Equal(m.Voters, []ids.NodeID{1, 2, 3, 4}) || len(m.Followers) != 0 {
		t.Fatalf("membership after promotion: %+v", m)
	}
	propose(4, 20)
	master, _ := tc.nodes[4].Master(0)
	if master == 0 {
		t.Fatal("no master after proposing")
	}
	if err := tc.nodes[master].RemoveMember(ctx, 0, master); err != nil {
		t.Fatal(err)
	}
	var other ids.NodeID
	for _, id := range []ids.NodeID{1, 2, 3, 4} {
		if id != master {
			other = id
		}
	}
	propose(other, 20)
	if m, _ := tc.nodes[other].Master(0); m == master || m == 0 {
		t.Fatalf("master %d after removing %d", m, master)
	}
	// Every member converges; the removed node is left behind.
	waitFor(t, ctx, func() bool {
		mem, _ := tc.nodes[other].Membership(0)
		want, wd := tc.sms[other][0].state()
		for _, id := range mem.Voters {
			if n, d := tc.sms[id][0].state(); n != want || d != wd {
				return false
			}
		}
		return len(mem.Voters) == 3 && !slices.Contains(mem.Voters, master)
	})
}

func waitFor(t *testing.T, ctx context.Context, cond func() bool) {
	t.Helper()
	for !cond() {
		if ctx.Err() != nil {
			t.Fatal("condition not reached before the deadline")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
