package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/multipaxos/engine/ids"
)

// TestWipedDiskIsRefusedUntilReplaced: node 3 comes back on an empty disk under
// its old ID. Nodes 1 and 2 refuse it, it votes nowhere, and the cluster goes on
// without it; acknowledged writes stay. The operator removes it from every
// group, nodes 1 and 2 forget its old store, and it is added back as a new
// member and catches up.
func TestWipedDiskIsRefusedUntilReplaced(t *testing.T) {
	const groups = 2
	tc := newTestCluster(t, 3, groups)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	propose := func(via ids.NodeID, n int) {
		t.Helper()
		for g := range groups {
			for i := range n {
				cmd := []byte(fmt.Sprint("v", via, "-", g, "-", i, "-", time.Now().UnixNano()))
				_, err := tc.nodes[via].Propose(ctx, ids.GroupID(g), cmd)
				for try := 0; errors.Is(err, ErrUnknownOutcome) && try < 3; try++ {
					_, err = tc.nodes[via].Propose(ctx, ids.GroupID(g), cmd)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	propose(1, 10)
	waitFor(t, ctx, func() bool {
		for _, n := range tc.nodes {
			if !n.Stats().Verified {
				return false
			}
		}
		return true
	})
	tc.waitConverged(30 * time.Second)
	// Nodes 1 and 2 must both have seen node 3's store, or one of them admits its
	// new store as a first sight (verification needs only a quorum of admissions;
	// see the identity doc for that limit) and the test waits for a refusal that
	// never comes.
	waitFor(t, ctx, func() bool {
		for _, id := range []ids.NodeID{1, 2} {
			ident := tc.nodes[id].identity
			ident.mu.Lock()
			_, ok := ident.rec.Peers[3]
			ident.mu.Unlock()
			if !ok {
				return false
			}
		}
		return true
	})

	tc.stop(3)
	if err := os.RemoveAll(tc.dirs[3]); err != nil {
		t.Fatal(err)
	}
	tc.start(3)
	waitFor(t, ctx, func() bool { return tc.nodes[1].Stats().PeersRefused > 0 && tc.nodes[2].Stats().PeersRefused > 0 })
	if tc.nodes[3].Stats().Verified {
		t.Fatal("the node on the new disk was verified although its peers refuse it")
	}
	for g := range groups {
		s, err := tc.nodes[3].GroupStats(ctx, ids.GroupID(g))
		if err != nil || !s.Abstaining {
			t.Fatalf("group %d on the new disk: abstaining %v, %v", g, s.Abstaining, err)
		}
	}
	propose(2, 10) // 1 and 2 are a quorum without it
	for g := range groups {
		if n, _ := tc.sms[3][g].state(); n != 0 {
			t.Fatalf("the refused node executed %d instances of group %d", n, g)
		}
	}
	if err := tc.nodes[1].ForgetPeer(9); !errors.Is(err, ErrUnknownPeer) {
		t.Fatalf("ForgetPeer of a node outside Members: %v, want ErrUnknownPeer", err)
	}
	if err := tc.nodes[1].ForgetPeer(3); !errors.Is(err, ErrStillVoter) {
		t.Fatalf("forgetting a node that still votes: %v", err)
	}

	// Replace it: out of every group, forgotten, then back in as a new member.
	for g := range groups {
		if err := tc.nodes[1].RemoveMember(ctx, ids.GroupID(g), 3); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, ctx, func() bool { return tc.nodes[1].ForgetPeer(3) == nil && tc.nodes[2].ForgetPeer(3) == nil })
	waitFor(t, ctx, func() bool { return tc.nodes[3].Stats().Verified })
	for g := range groups {
		if err := tc.nodes[2].AddMember(ctx, ids.GroupID(g), 3); err != nil {
			t.Fatal(err)
		}
	}
	propose(3, 5)
	tc.waitConverged(60 * time.Second)
}

// TestNewClusterStartsWithAMajority: at a cluster's first start, every store
// is new; nodes 1 and 2 admit each other, which makes a quorum in every group,
// so they vote before node 3 has ever run. Once verified, a restart does not
// wait again.
func TestNewClusterStartsWithAMajority(t *testing.T) {
	addrs := freeAddrs(t, 3)
	tc := &testCluster{t: t, members: map[ids.NodeID]string{}, dirs: map[ids.NodeID]string{}, groups: 2,
		nodes: map[ids.NodeID]*Node{}, sms: map[ids.NodeID][]*digestSM{}}
	for i := range 3 {
		id := ids.NodeID(i + 1)
		tc.members[id], tc.dirs[id] = addrs[i], t.TempDir()
	}
	t.Cleanup(func() {
		for _, n := range tc.nodes {
			n.Stop()
		}
	})
	tc.start(1)
	tc.start(2)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := tc.nodes[1].Propose(ctx, 0, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if !tc.nodes[1].Stats().Verified || !tc.nodes[2].Stats().Verified {
		t.Fatal("a quorum chose a value while its members abstained")
	}
	tc.stop(2)
	tc.start(3) // new: admitted by 1, which with 3 is a quorum
	waitFor(t, ctx, func() bool { return tc.nodes[3].Stats().Verified })
	tc.stop(1)
	tc.start(2) // verified before: votes at once, with 3 a quorum
	if s, err := tc.nodes[2].GroupStats(ctx, 0); err != nil || s.Abstaining {
		t.Fatalf("a verified store abstains after a restart: %v %v", s.Abstaining, err)
	}
	if _, err := tc.nodes[2].Propose(ctx, 1, []byte("y")); err != nil {
		t.Fatal(err)
	}
}
