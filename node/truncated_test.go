package node

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/netio"
)

// TestTruncatedFrameThenClose: a stranger that connects to a node over TCP,
// sends part of a frame header and hangs up is neither counted as a peer nor
// refused with a reason, and the node's real peers and service are untouched. A
// second stranger sending a bad length prefix afterwards is refused; waiting for
// that refusal shows the node's event loop processed the first connection's bytes
// too.
func TestTruncatedFrameThenClose(t *testing.T) {
	tc := newTestCluster(t, 3, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := tc.nodes[1].Propose(ctx, 0, []byte("warm")); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "node 1 connected to both peers", func() bool { return tc.nodes[1].Stats().Transport.ConnsOpened >= 2 })
	before := tc.nodes[1].Stats().Transport

	truncated := netio.AppendFrame(nil, 1, 0, netio.TypeControl, make([]byte, 64))[:10]
	if len(truncated) >= netio.FrameHeaderSize {
		t.Fatalf("frame header is %d bytes: 10 is not a truncated header", netio.FrameHeaderSize)
	}
	nc, err := net.DialTimeout("tcp", tc.members[1], 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Write(truncated); err != nil {
		t.Fatal(err)
	}
	_ = nc.Close()

	// The second stranger: a length prefix far over MaxFrameBytes.
	bad, err := net.DialTimeout("tcp", tc.members[1], 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	if _, err := bad.Write(append(binary.BigEndian.AppendUint32(nil, 0xFFFFFFF0), 1, 2, 3)); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "bad length prefix refused", func() bool {
		return tc.nodes[1].Stats().Transport.ConnsRefused >= before.ConnsRefused+1
	})

	for i := 0; i < 6; i++ {
		id := ids.NodeID(i%3 + 1)
		if _, err := tc.nodes[id].Propose(ctx, 0, []byte(fmt.Sprint("after", i))); err != nil {
			t.Fatalf("node %d after the strangers: %v", id, err)
		}
	}
	tc.waitConverged(10 * time.Second)
	after := tc.nodes[1].Stats().Transport
	if after.ConnsOpened != before.ConnsOpened || after.ConnsClosed != before.ConnsClosed {
		t.Fatalf("strangers changed node 1's peer connections: opened %d -> %d, closed %d -> %d",
			before.ConnsOpened, after.ConnsOpened, before.ConnsClosed, after.ConnsClosed)
	}
	if after.ConnsRefused != before.ConnsRefused+1 {
		t.Fatalf("refused %d connections, want 1 (the bad length prefix; the truncated frame is a hang-up, not a refusal)",
			after.ConnsRefused-before.ConnsRefused)
	}
}
