package node

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/multipaxos/engine/ids"
)

// TestTCP4096Groups: three nodes over real TCP (and Pebble) with 4096 groups
// start, choose commands proposed through every node in groups spread over the
// whole range, and stop without leaving a goroutine behind (goleak in TestMain).
func TestTCP4096Groups(t *testing.T) {
	const groups = 4096
	tc := newTestCluster(t, 3, groups)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i, g := range []ids.GroupID{0, 1, 1000, 2047, 3333, 4095} {
		for id := ids.NodeID(1); id <= 3; id++ {
			cmd := fmt.Sprintf("g%d-n%d-%d", g, id, i)
			res, err := tc.nodes[id].Propose(ctx, g, []byte(cmd))
			if err != nil {
				t.Fatalf("group %d via node %d: %v", g, id, err)
			}
			if string(res.Value) != "ok:"+cmd {
				t.Fatalf("group %d via node %d: result %q", g, id, res.Value)
			}
		}
	}
	for id := ids.NodeID(1); id <= 3; id++ {
		if _, err := tc.nodes[id].Propose(ctx, groups, []byte("x")); !errors.Is(err, ErrUnknownGroup) {
			t.Fatalf("node %d, group %d of %d: %v, want ErrUnknownGroup", id, groups, groups, err)
		}
	}
	tc.waitConverged(20 * time.Second)
	for id := range tc.nodes {
		tc.stop(id)
	}
}
