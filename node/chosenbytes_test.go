package node

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"
)

// TestChosenBytes: on the fast path the value crosses the network once per
// peer (in the Accept); the Chosen that follows carries only its checksum. With a
// value of 8 KiB, the master sends about two values' worth of bytes per command to
// its two peers, not four, and the peers send back far less than one value. The
// bounds are on byte counts, with room for headers, claims and probes.
func TestChosenBytes(t *testing.T) {
	_, nodes := audit2bMemCluster(t, 3, 1, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n1 := nodes[0]
	if _, err := n1.Propose(ctx, 0, []byte("warm")); err != nil { // elects node 1
		t.Fatal(err)
	}
	if !n1.IsMaster(0) {
		t.Fatal("node 1 is not master after proposing")
	}
	const size, k = 8 << 10, 50
	var before [3]uint64
	for i, n := range nodes {
		before[i] = n.Stats().Transport.BytesSent
	}
	for i := 0; i < k; i++ {
		v := append(bytes.Repeat([]byte{'x'}, size-8), fmt.Sprintf("%8d", i)...)
		if _, err := n1.Propose(ctx, 0, v); err != nil {
			t.Fatal(err)
		}
	}
	per := func(i int) float64 { return float64(nodes[i].Stats().Transport.BytesSent-before[i]) / k / size }
	t.Logf("bytes sent per %d-byte command, in values: master %.2f, peers %.3f and %.3f", size, per(0), per(1), per(2))
	if m := per(0); m < 2 || m > 2.5 {
		t.Fatalf("master sent %.2f values' worth per command, want 2 (one Accept per peer; a Chosen with the value would make it 4)", m)
	}
	for i := 1; i < 3; i++ {
		if p := per(i); p > 0.25 {
			t.Fatalf("node %d sent %.3f values' worth per command, want far less than one", i+1, p)
		}
	}
}
