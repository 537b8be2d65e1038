package netio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/multipaxos/engine/ids"
)

const testCluster = 0xC1A5

// testSecret is every test cluster's ClusterSecret unless a test says otherwise, so the
// authenticated handshake is the one the general tests exercise.
var testSecret = []byte("netio test cluster secret, 32 b.")

// leakOpts ignores only gnet's process-global ants worker pool: its janitor goroutines
// start at package init and its idle workers linger for ExpiryDuration (10 s) after
// Register used them. They are not netio's and Close cannot stop them. A worker stuck
// inside a task would not match (its top frame is the task), so real leaks still show.
var leakOpts = []goleak.Option{
	goleak.IgnoreTopFunction("github.com/panjf2000/ants/v2.(*goWorker).run.func1"),
	goleak.IgnoreTopFunction("github.com/panjf2000/ants/v2.(*poolCommon).purgeStaleWorkers"),
	goleak.IgnoreTopFunction("github.com/panjf2000/ants/v2.(*poolCommon).ticktock"),
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, leakOpts...) }

// waitFor polls cond until it holds. The deadline only keeps a broken test from
// hanging; nothing asserts how long anything took.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// freeAddrs reserves n loopback ports by binding and releasing them.
func freeAddrs(t testing.TB, n int) []string {
	t.Helper()
	var out []string
	var lns []net.Listener
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().String())
	}
	for _, ln := range lns {
		_ = ln.Close()
	}
	return out
}

type rxFrame struct {
	from  ids.NodeID
	group ids.GroupID
	typ   uint8
	body  []byte
}

// recorder is a Handler that keeps copies of what it receives.
type recorder struct {
	mu     sync.Mutex
	frames []rxFrame
	block  atomic.Pointer[chan struct{}] // if set, the Handler waits on it (a stalled receiver)
}

func (r *recorder) handle(from ids.NodeID, group ids.GroupID, typ uint8, body []byte) {
	if b := r.block.Load(); b != nil {
		<-*b
	}
	r.mu.Lock()
	r.frames = append(r.frames, rxFrame{from, group, typ, bytes.Clone(body)})
	r.mu.Unlock()
}

func (r *recorder) from(id ids.NodeID) []rxFrame {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []rxFrame
	for _, f := range r.frames {
		if f.from == id {
			out = append(out, f)
		}
	}
	return out
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.frames)
}

type testNode struct {
	id  ids.NodeID
	tr  *TCPTransport
	rec *recorder
}

type cluster struct {
	t     *testing.T
	peers map[ids.NodeID]string
	logs  *observer.ObservedLogs
	log   *zap.Logger
	nodes map[ids.NodeID]*testNode
	tweak func(*Options)
}

func newCluster(t *testing.T, n int, tweak func(*Options)) *cluster {
	addrs := freeAddrs(t, n)
	core, logs := observer.New(zapcore.DebugLevel)
	c := &cluster{t: t, peers: map[ids.NodeID]string{}, logs: logs, log: zap.New(core),
		nodes: map[ids.NodeID]*testNode{}, tweak: tweak}
	for i, a := range addrs {
		c.peers[ids.NodeID(i+1)] = a
	}
	return c
}

func (c *cluster) options(id ids.NodeID, rec *recorder) Options {
	o := Options{
		NodeID: id, ClusterID: testCluster, ListenAddr: c.peers[id], Peers: c.peers,
		Handler: rec.handle, Logger: c.log, ClusterSecret: testSecret,
	}
	if c.tweak != nil {
		c.tweak(&o)
	}
	return o
}

// start starts node id, retrying while its port is still held by a previous run.
func (c *cluster) start(id ids.NodeID) *testNode {
	c.t.Helper()
	rec := &recorder{}
	var tr *TCPTransport
	waitFor(c.t, "bind", func() bool {
		var err error
		tr, err = StartTCP(c.options(id, rec))
		if err != nil {
			c.t.Logf("start node %d: %v (retrying)", id, err)
		}
		return err == nil
	})
	n := &testNode{id: id, tr: tr, rec: rec}
	c.nodes[id] = n
	return n
}

func (c *cluster) closeAll() {
	for _, n := range c.nodes {
		if err := n.tr.Close(); err != nil {
			c.t.Errorf("close %d: %v", n.id, err)
		}
	}
}

func (c *cluster) waitConnected() {
	c.t.Helper()
	for _, a := range c.nodes {
		for _, b := range c.nodes {
			if a != b {
				waitFor(c.t, "connections", func() bool { return a.tr.Connected(b.id) })
			}
		}
	}
}

// payload builds a self-checking body: [u32 seq][u32 crc of the rest][random bytes].
func payload(rng *rand.Rand, seq uint32, size int) []byte {
	b := make([]byte, 8+size)
	binary.BigEndian.PutUint32(b, seq)
	i := 8
	for ; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	for ; i < len(b); i++ {
		b[i] = byte(rng.Uint32())
	}
	binary.BigEndian.PutUint32(b[4:], crc32.ChecksumIEEE(b[8:]))
	return b
}

func checkPayload(t *testing.T, body []byte) uint32 {
	t.Helper()
	if len(body) < 8 || binary.BigEndian.Uint32(body[4:]) != crc32.ChecksumIEEE(body[8:]) {
		t.Fatalf("corrupt body of %d bytes", len(body))
	}
	return binary.BigEndian.Uint32(body)
}

func TestTCPExchange(t *testing.T) {
	for _, loops := range []int{1, 2} {
		t.Run(map[int]string{1: "one loop", 2: "two loops"}[loops], func(t *testing.T) {
			defer goleak.VerifyNone(t, leakOpts...)
			c := newCluster(t, 3, func(o *Options) { o.EventLoops = loops })
			for id := ids.NodeID(1); id <= 3; id++ {
				c.start(id)
			}
			defer c.closeAll()
			c.waitConnected()

			// Each node runs `senders` goroutines, each sending to both peers; the
			// goroutine's index is the frame type, so order is checked per
			// (sender node, sender goroutine), which is what Send promises.
			const perPeer, senders = 150, 3
			var wg sync.WaitGroup
			for _, n := range c.nodes {
				for g := 0; g < senders; g++ {
					wg.Add(1)
					go func(n *testNode, typ uint8) {
						defer wg.Done()
						rng := rand.New(rand.NewPCG(uint64(n.id), uint64(typ)))
						for seq := uint32(0); seq < perPeer; seq++ {
							for to := ids.NodeID(1); to <= 3; to++ {
								if to == n.id {
									continue
								}
								size := rng.IntN(4096)
								if rng.IntN(50) == 0 {
									size = 200_000 + rng.IntN(300_000) // spans many reads
								}
								body := payload(rng, seq, size)
								if !n.tr.Send(to, ids.GroupID(rng.IntN(64)), typ, body) {
									t.Errorf("send %d->%d seq %d refused", n.id, to, seq)
									return
								}
								clear(body) // Send must have copied it
							}
						}
					}(n, uint8(1+g))
				}
			}
			wg.Wait()
			const want = 2 * perPeer * senders
			for _, n := range c.nodes {
				waitFor(t, "all frames", func() bool { return n.rec.count() == want })
			}
			for _, n := range c.nodes {
				for from := ids.NodeID(1); from <= 3; from++ {
					if from == n.id {
						continue
					}
					next := map[uint8]uint32{}
					for _, f := range n.rec.from(from) {
						if f.typ < 1 || f.typ > senders || f.group >= 64 {
							t.Fatalf("bad header %+v", f)
						}
						if seq := checkPayload(t, f.body); seq != next[f.typ] {
							t.Fatalf("%d from %d.%d: seq %d, want %d (out of order)", n.id, from, f.typ, seq, next[f.typ])
						}
						next[f.typ]++
					}
				}
				s := n.tr.Stats()
				if s.FramesSent != want || s.FramesReceived != want || s.Dropped.Total() != 0 ||
					s.DecodeErrors != 0 || s.ConnsRefused != 0 {
					t.Fatalf("node %d stats %+v", n.id, s)
				}
			}
		})
	}
}

func TestTCPQueuedWhileConnecting(t *testing.T) {
	defer goleak.VerifyNone(t, leakOpts...)
	c := newCluster(t, 2, func(o *Options) { o.UnreachableAfter = time.Minute })
	n1 := c.start(1)
	defer c.closeAll()
	rng := rand.New(rand.NewPCG(1, 1))
	for seq := uint32(0); seq < 50; seq++ {
		if !n1.tr.Send(2, 9, 1, payload(rng, seq, 100)) {
			t.Fatalf("send %d refused while peer not yet up", seq)
		}
	}
	n2 := c.start(2)
	waitFor(t, "queued frames", func() bool { return n2.rec.count() == 50 })
	for i, f := range n2.rec.from(1) {
		if checkPayload(t, f.body) != uint32(i) || f.group != 9 {
			t.Fatalf("frame %d: %+v", i, f)
		}
	}
}

func TestTCPPeerRestart(t *testing.T) {
	defer goleak.VerifyNone(t, leakOpts...)
	c := newCluster(t, 3, func(o *Options) { o.ReconnectMax = 200 * time.Millisecond })
	for id := ids.NodeID(1); id <= 3; id++ {
		c.start(id)
	}
	defer c.closeAll()
	c.waitConnected()

	// Node 2 is dialed by 1 and dials 3, so the restart exercises both roles.
	if err := c.nodes[2].tr.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "peers notice", func() bool {
		return !c.nodes[1].tr.Connected(2) && !c.nodes[3].tr.Connected(2)
	})
	n2 := c.start(2)
	c.waitConnected()

	// Frames sent around the reconnect may be lost; Paxos-style, resend until seen.
	rng := rand.New(rand.NewPCG(2, 2))
	for _, pair := range [][2]ids.NodeID{{1, 2}, {3, 2}, {2, 1}, {2, 3}} {
		from, to := c.nodes[pair[0]], c.nodes[pair[1]]
		waitFor(t, "traffic resumes", func() bool {
			from.tr.Send(to.id, 1, 1, payload(rng, 0, 10))
			time.Sleep(5 * time.Millisecond)
			return len(to.rec.from(from.id)) > 0
		})
	}
	if s := n2.tr.Stats(); s.ConnsOpened != 2 {
		t.Fatalf("restarted node opened %d connections, want 2: %+v", s.ConnsOpened, s)
	}
	if s := c.nodes[1].tr.Stats(); s.ConnsClosed < 1 || s.ConnsOpened < 2 {
		t.Fatalf("node 1 did not reconnect: %+v", s)
	}
}

// rawConn is a stranger speaking (or not) the protocol by hand.
func rawDial(t *testing.T, addr string) net.Conn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return nc
}

// expectClosedByServer reads until the server closes the connection and returns what
// it sent first.
func expectClosedByServer(t *testing.T, nc net.Conn) []byte {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(nc)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("server did not close the connection (read %d bytes)", len(got))
	}
	_ = nc.Close()
	return got
}

// helloFrame is a Hello as a hand-made peer with the test secret would send it.
func helloFrame(frameCluster, helloCluster uint64, node ids.NodeID, proto uint32) []byte {
	b, _ := rawHello(frameCluster, helloCluster, node, proto, authHMACSHA256)
	return b
}

// rawHello returns a Hello frame with a fresh nonce, and the nonce.
func rawHello(frameCluster, helloCluster uint64, node ids.NodeID, proto uint32, auth uint8) ([]byte, [nonceBytes]byte) {
	var nonce [nonceBytes]byte
	newNonce(&nonce)
	body := encodeHello(hello{Protocol: proto, ClusterID: helloCluster, NodeID: node, Nonce: nonce, Auth: auth})
	return AppendFrame(nil, frameCluster, ctlHello, TypeControl, body), nonce
}

// v1HelloFrame is what a peer running protocol version 1 sends first.
func v1HelloFrame(node ids.NodeID) []byte {
	var buf bytes.Buffer
	e := msgpack.NewEncoder(&buf)
	_ = e.EncodeArrayLen(4)
	_ = e.EncodeUint(1)
	_ = e.EncodeUint(testCluster)
	_ = e.EncodeUint(uint64(node))
	_ = e.EncodeBytes(nil)
	return AppendFrame(nil, testCluster, ctlHello, TypeControl, buf.Bytes())
}

// rawAnswer is what an acceptor answered to a hand-made Hello.
type rawAnswer struct {
	nc          net.Conn
	dialerNonce [nonceBytes]byte
	hello       hello
	proofFrame  []byte // the acceptor's whole proof frame as received; nil without auth
	proof       proof
}

// rawHelloExchange dials addr as member self, sends a Hello offering auth and reads the
// acceptor's answer: its Hello and, with auth, its proof, which it checks under secret.
func rawHelloExchange(t *testing.T, addr string, self, acceptor ids.NodeID, auth uint8, secret []byte) rawAnswer {
	t.Helper()
	a := rawAnswer{nc: rawDial(t, addr)}
	var hf []byte
	hf, a.dialerNonce = rawHello(testCluster, testCluster, self, ProtocolVersion, auth)
	if _, err := a.nc.Write(hf); err != nil {
		t.Fatal(err)
	}
	h, body := readFrame(t, a.nc)
	if h.Type != TypeControl || h.Group != ctlHello {
		t.Fatalf("first frame %+v is not a hello", h)
	}
	var err error
	if a.hello, err = decodeHello(body); err != nil || a.hello.NodeID != acceptor ||
		a.hello.ClusterID != testCluster || a.hello.Auth != auth {
		t.Fatalf("acceptor's hello %+v, %v", a.hello, err)
	}
	if a.hello.Nonce == a.dialerNonce || a.hello.Nonce == ([nonceBytes]byte{}) {
		t.Fatalf("acceptor's nonce %x is not fresh", a.hello.Nonce)
	}
	if auth == authNone {
		return a
	}
	h, body = readFrame(t, a.nc)
	if h.Type != TypeControl || h.Group != ctlProof {
		t.Fatalf("second frame %+v is not a proof", h)
	}
	a.proofFrame = AppendFrame(nil, h.ClusterID, h.Group, h.Type, body)
	if a.proof, err = decodeProof(body); err != nil {
		t.Fatal(err)
	}
	want := handshakeMAC(secret, labelAcceptor, testCluster, self, acceptor, &a.dialerNonce, &a.hello.Nonce,
		0, a.hello.Incarnation)
	if a.proof.MAC != want {
		t.Fatal("acceptor's proof does not verify")
	}
	return a
}

// dialerProofFrame is the proof a dialer holding secret sends after the exchange a.
func (a rawAnswer) dialerProofFrame(secret []byte, self ids.NodeID) []byte {
	mac := handshakeMAC(secret, labelDialer, testCluster, self, a.hello.NodeID, &a.dialerNonce, &a.hello.Nonce,
		0, a.hello.Incarnation)
	return appendProofFrame(nil, testCluster, mac)
}

// rawHandshake plays member self by hand: a complete handshake with the acceptor at
// addr under the test secret. The connection is then established.
func rawHandshake(t *testing.T, addr string, self, acceptor ids.NodeID) net.Conn {
	t.Helper()
	a := rawHelloExchange(t, addr, self, acceptor, authHMACSHA256, testSecret)
	if _, err := a.nc.Write(a.dialerProofFrame(testSecret, self)); err != nil {
		t.Fatal(err)
	}
	return a.nc
}

func TestTCPRefusesStrangers(t *testing.T) {
	defer goleak.VerifyNone(t, leakOpts...)
	// Node 3 is a member that never starts: a Hello claiming it is well formed but comes
	// from the wrong direction (3 > 2 must be dialed by 2, not dial it).
	c := newCluster(t, 3, func(o *Options) { o.HandshakeTimeout = 300 * time.Millisecond })
	n1, n2 := c.start(1), c.start(2)
	defer c.closeAll()
	waitFor(t, "1-2 connected", func() bool { return n1.tr.Connected(2) && n2.tr.Connected(1) })

	garbage := make([]byte, 200)
	for i := range garbage {
		garbage[i] = byte(i*31 + 7)
	}
	oversized := binary.BigEndian.AppendUint32(nil, 0xFFFFFFF0)
	oversized = append(oversized, 1, 2, 3)
	cases := []struct {
		name   string
		send   []byte
		reason string
	}{
		{"garbage", garbage, "bad frame"},
		{"oversized length prefix", oversized, "bad frame"},
		{"frame cluster wrong", helloFrame(testCluster+1, testCluster, 1, ProtocolVersion), "wrong cluster id in frame"},
		{"hello cluster wrong", helloFrame(testCluster, testCluster+1, 1, ProtocolVersion), "wrong cluster id in hello"},
		{"unknown node", helloFrame(testCluster, testCluster, 99, ProtocolVersion), "unknown node id"},
		{"node claims to be the acceptor", helloFrame(testCluster, testCluster, 2, ProtocolVersion), "unknown node id"},
		{"wrong direction", helloFrame(testCluster, testCluster, 3, ProtocolVersion), "wrong direction"},
		{"protocol version 1 (old peer)", v1HelloFrame(1), "unsupported protocol version"},
		{"protocol version 2 (old peer)", v2HelloFrame(1), "unsupported protocol version"},
		{"a later protocol version", helloFrame(testCluster, testCluster, 1, ProtocolVersion+1), "unsupported protocol version"},
		{"no secret offered", func() []byte {
			b, _ := rawHello(testCluster, testCluster, 1, ProtocolVersion, authNone)
			return b
		}(), "authentication mismatch"},
		{"unknown auth mode", func() []byte {
			b, _ := rawHello(testCluster, testCluster, 1, ProtocolVersion, 7)
			return b
		}(), "authentication mismatch"},
		{"proof before hello", appendProofFrame(nil, testCluster, [proofBytes]byte{}), "frame before hello"},
		{"data before hello", AppendFrame(nil, testCluster, 5, 1, []byte("sneaky")), "frame before hello"},
		{"malformed hello", AppendFrame(nil, testCluster, ctlHello, TypeControl, []byte{0xc1}), "malformed hello"},
		{"large frame before hello", AppendFrame(nil, testCluster, ctlHello, TypeControl, make([]byte, 2000)), "bad frame"},
		{"silent", nil, "handshake timeout"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := n2.tr.Stats().ConnsRefused
			nc := rawDial(t, c.peers[2])
			if _, err := nc.Write(tc.send); err != nil {
				t.Fatal(err)
			}
			if got := expectClosedByServer(t, nc); len(got) != 0 {
				t.Fatalf("server answered a stranger with %d bytes", len(got))
			}
			waitFor(t, "refusal counted", func() bool { return n2.tr.Stats().ConnsRefused == before+1 })
			entries := c.logs.FilterMessage("refused connection").FilterField(zap.String("reason", tc.reason)).All()
			if len(entries) == 0 {
				t.Fatalf("no refusal logged with reason %q", tc.reason)
			}
			if _, ok := entries[len(entries)-1].ContextMap()["remote"]; !ok {
				t.Fatalf("refusal log without remote address: %v", entries[len(entries)-1].ContextMap())
			}
		})
	}

	t.Run("truncated frame then close", func(t *testing.T) {
		nc := rawDial(t, c.peers[2])
		_, _ = nc.Write(helloFrame(testCluster, testCluster, 1, ProtocolVersion)[:10])
		_ = nc.Close()
	})

	// The real peers never noticed.
	if !n1.tr.Connected(2) || !n2.tr.Connected(1) {
		t.Fatal("real peers lost their connection")
	}
	rng := rand.New(rand.NewPCG(3, 3))
	for seq := uint32(0); seq < 20; seq++ {
		n1.tr.Send(2, 4, 2, payload(rng, seq, 50))
		n2.tr.Send(1, 4, 2, payload(rng, seq, 50))
	}
	waitFor(t, "real traffic", func() bool { return n2.rec.count() == 20 && n1.rec.count() == 20 })
	for _, f := range append(n2.rec.from(1), n1.rec.from(2)...) {
		checkPayload(t, f.body)
	}
	if got := len(n2.rec.from(1)); got != 20 || n2.rec.count() != 20 {
		t.Fatalf("handler saw frames from strangers: %d of %d from node 1", got, n2.rec.count())
	}
	if s := n2.tr.Stats(); s.ConnsOpened != 1 || s.FramesReceived != 20 {
		t.Fatalf("node 2 stats %+v", s)
	}
}

// A second connection from the same peer replaces the first: here a hand-made one
// claiming to be node 1 displaces the real node 1, which then redials and displaces it.
func TestTCPNewestConnectionWins(t *testing.T) {
	defer goleak.VerifyNone(t, leakOpts...)
	c := newCluster(t, 2, func(o *Options) { o.ReconnectMin, o.ReconnectMax = 10*time.Millisecond, 50*time.Millisecond })
	n1, n2 := c.start(1), c.start(2)
	defer c.closeAll()
	waitFor(t, "connected", func() bool { return n1.tr.Connected(2) && n2.tr.Connected(1) })

	// A complete handshake as node 1 (with the secret: only a peer that proves it can
	// displace a connection).
	nc := rawHandshake(t, c.peers[2], 1, 2)
	// Node 1's real connection was closed in favour of ours; node 1 redials, and its
	// new connection in turn closes ours.
	waitFor(t, "node 1 replaced", func() bool { return n1.tr.Stats().ConnsClosed >= 1 })
	_ = nc.SetReadDeadline(time.Now().Add(20 * time.Second))
	_, _ = io.Copy(io.Discard, nc) // ends when node 2 closes it
	_ = nc.Close()
	waitFor(t, "node 1 back", func() bool { return n1.tr.Connected(2) && n2.tr.Connected(1) })
	if s := n2.tr.Stats(); s.ConnsOpened != 3 {
		t.Fatalf("node 2 opened %d connections, want 3 (real, fake, real)", s.ConnsOpened)
	}
}

func TestTCPSendRefusals(t *testing.T) {
	defer goleak.VerifyNone(t, leakOpts...)
	c := newCluster(t, 2, func(o *Options) {
		o.MaxFrameBytes = 64 << 10
		o.UnreachableAfter = 200 * time.Millisecond
	})
	n1 := c.start(1) // node 2 never starts
	defer c.closeAll()
	tr := n1.tr
	if tr.Send(1, 0, 1, nil) {
		t.Fatal("send to self accepted")
	}
	if tr.Send(7, 0, 1, nil) {
		t.Fatal("send to a non-member accepted")
	}
	if tr.Send(2, 0, TypeControl, nil) {
		t.Fatal("send with reserved type accepted")
	}
	if tr.Send(2, 0, 1, make([]byte, MaxBodyBytes(64<<10)+1)) {
		t.Fatal("oversized frame accepted")
	}
	if !tr.Send(2, 0, 1, make([]byte, MaxBodyBytes(64<<10))) {
		t.Fatal("frame at the limit refused")
	}
	// Queued while within the grace period; then the peer counts as unreachable.
	waitFor(t, "unreachable", func() bool { return !tr.Send(2, 0, 1, []byte("x")) })
	s := tr.Stats()
	if s.Dropped.UnknownPeer != 3 || s.Dropped.TooLarge != 1 || s.Dropped.Unreachable != 1 || s.Dropped.Lost == 0 {
		t.Fatalf("stats %+v", s)
	}
	if s.DialFailures == 0 {
		t.Fatalf("no dial failures counted: %+v", s)
	}
	_ = tr.Close()
	if tr.Send(2, 0, 1, nil) || tr.Stats().Dropped.Closed != 1 {
		t.Fatal("send after close accepted")
	}
	if err := tr.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
}

// A receiver that stops reading fills the socket buffers and then gnet's outbound
// buffer; past PeerQueueBytesMax Send drops instead of buffering without bound, and
// once the receiver resumes the traffic flows again, still in order.
func TestTCPBackPressure(t *testing.T) {
	defer goleak.VerifyNone(t, leakOpts...)
	c := newCluster(t, 2, func(o *Options) {
		o.MaxFrameBytes = 256 << 10
		o.PeerQueueBytesMax = 1 << 20
	})
	n1, n2 := c.start(1), c.start(2)
	defer c.closeAll()
	waitFor(t, "connected", func() bool { return n1.tr.Connected(2) })

	release := make(chan struct{})
	n2.rec.block.Store(&release) // stalls node 2's event loop at its next frame

	rng := rand.New(rand.NewPCG(4, 4))
	seq := uint32(0)
	waitFor(t, "queue full", func() bool {
		n1.tr.Send(2, 1, 1, payload(rng, seq, 64<<10))
		seq++
		return n1.tr.Stats().Dropped.QueueFull > 0
	})
	close(release)
	// After the stall, new frames get through again.
	last := seq
	waitFor(t, "flow resumes", func() bool {
		n1.tr.Send(2, 1, 1, payload(rng, seq, 1000))
		seq++
		got := n2.rec.from(1)
		return len(got) > 0 && checkPayload(t, got[len(got)-1].body) >= last
	})
	prev := int64(-1)
	for _, f := range n2.rec.from(1) {
		s := int64(checkPayload(t, f.body))
		if s <= prev {
			t.Fatalf("seq %d after %d: reordered", s, prev)
		}
		prev = s
	}
}

func TestOptionsValidation(t *testing.T) {
	_, err := StartTCP(Options{
		NodeID:            0,
		ListenAddr:        "nope",
		Peers:             map[ids.NodeID]string{0: "x", 2: "bad"},
		MaxFrameBytes:     10,
		ReconnectMin:      time.Second,
		ReconnectMax:      time.Millisecond,
		KeepaliveInterval: time.Second,
		IdleTimeout:       time.Second,
		EventLoops:        -1,
		DialTimeout:       -time.Second,
		ClusterSecret:     []byte("short-secret15b"),
	})
	var oe *OptionsError
	if !errors.Is(err, ErrInvalidOptions) || !errors.As(err, &oe) {
		t.Fatalf("err = %v", err)
	}
	for _, want := range []string{"NodeID", "ClusterID", "ListenAddr", "Handler", "Peers has node ID 0",
		"Peers[2]", "MaxFrameBytes", "ReconnectMax", "IdleTimeout", "EventLoops", "DialTimeout",
		"ClusterSecret is 15 bytes"} {
		found := false
		for _, p := range oe.Problems {
			found = found || bytes.Contains([]byte(p), []byte(want))
		}
		if !found {
			t.Errorf("no problem mentions %q in %q", want, oe.Problems)
		}
	}

	o := Options{NodeID: 1, ClusterID: 1, ListenAddr: "127.0.0.1:1", Peers: map[ids.NodeID]string{1: "127.0.0.1:1"},
		Handler: func(ids.NodeID, ids.GroupID, uint8, []byte) {}}.withDefaults()
	if err := o.validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	if o.MaxFrameBytes != DefaultMaxFrameBytes || o.PeerQueueBytesMax != DefaultPeerQueueBytesMax ||
		o.DialTimeout != DefaultDialTimeout || o.EventLoops != 1 || o.Logger == nil {
		t.Fatalf("defaults not filled: %+v", o)
	}
	// The error names the secret's length, never its bytes.
	if strings.Contains(err.Error(), "short-secret") {
		t.Fatalf("the secret leaked into the error: %v", err)
	}
	o.ClusterSecret = make([]byte, ClusterSecretBytesMin)
	if err := o.validate(); err != nil {
		t.Fatalf("a %d-byte secret does not validate: %v", ClusterSecretBytesMin, err)
	}
}

func TestStartTCPBindError(t *testing.T) {
	defer goleak.VerifyNone(t, leakOpts...)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	tr, err := StartTCP(Options{NodeID: 1, ClusterID: 1, ListenAddr: addr,
		Peers: map[ids.NodeID]string{1: addr}, Handler: func(ids.NodeID, ids.GroupID, uint8, []byte) {}})
	if err == nil {
		_ = tr.Close()
		t.Fatal("bound a port that is in use")
	}
}

// readFrame reads one frame from a raw connection.
func readFrame(t *testing.T, nc net.Conn) (FrameHeader, []byte) {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(20 * time.Second))
	head := make([]byte, 4)
	if _, err := io.ReadFull(nc, head); err != nil {
		t.Fatal(err)
	}
	n := binary.BigEndian.Uint32(head)
	if n > 1<<20 {
		t.Fatalf("frame of %d bytes", n)
	}
	rest := make([]byte, n)
	if _, err := io.ReadFull(nc, rest); err != nil {
		t.Fatal(err)
	}
	h, body, _, err := DecodeFrame(append(head, rest...), 0)
	if err != nil {
		t.Fatal(err)
	}
	return h, body
}

// An idle link carries keepalives; a peer that completed the handshake and then went
// silent is closed as dead once IdleTimeout passes without a frame from it.
func TestTCPKeepaliveAndIdleTimeout(t *testing.T) {
	defer goleak.VerifyNone(t, leakOpts...)
	c := newCluster(t, 3, func(o *Options) {
		o.KeepaliveInterval = 50 * time.Millisecond
		o.IdleTimeout = time.Second
	})
	n2, n3 := c.start(2), c.start(3) // node 1 is played by hand
	defer c.closeAll()
	waitFor(t, "2-3 connected", func() bool { return n2.tr.Connected(3) && n3.tr.Connected(2) })

	nc := rawHandshake(t, c.peers[2], 1, 2)
	defer nc.Close()
	if h, body := readFrame(t, nc); h.Type != TypeControl || h.Group != ctlAdmitted || len(body) != 0 {
		t.Fatalf("first frame after the handshake %+v, want admitted", h)
	}
	for i := 0; i < 3; i++ {
		if h, body := readFrame(t, nc); h.Type != TypeControl || h.Group != ctlKeepalive || len(body) != 0 {
			t.Fatalf("idle link carried %+v", h)
		}
	}
	// We never answer, so node 2 must drop us.
	expectClosedByServer(t, nc)
	if len(c.logs.FilterMessage("closing connection").FilterField(zap.String("reason", "idle timeout")).All()) == 0 {
		t.Fatal("idle close not logged")
	}
	// The real link between 2 and 3, idle as well, lives on keepalives alone.
	if !n2.tr.Connected(3) || n2.tr.Stats().ConnsClosed != 1 || n3.tr.Stats().ConnsClosed != 0 {
		t.Fatalf("real link affected: %+v / %+v", n2.tr.Stats(), n3.tr.Stats())
	}
	if s := n3.tr.Stats(); s.BytesReceived < 3*FrameHeaderSize {
		t.Fatalf("no keepalives seen by node 3: %+v", s)
	}
}

// After the handshake every frame is still checked; a bad one closes the connection
// and never reaches the Handler, while good ones before it do.
func TestTCPPostHandshakeChecks(t *testing.T) {
	defer goleak.VerifyNone(t, leakOpts...)
	c := newCluster(t, 2, func(o *Options) { o.MaxFrameBytes = 4096 })
	n2 := c.start(2) // node 1 is played by hand
	defer c.closeAll()

	cases := []struct {
		name   string
		bad    []byte
		reason string
	}{
		{"wrong cluster", AppendFrame(nil, testCluster+1, 1, 1, []byte("x")), "wrong cluster id in frame"},
		{"too large", AppendFrame(nil, testCluster, 1, 1, make([]byte, 4096)), "bad frame"},
		{"bad version", func() []byte { b := AppendFrame(nil, testCluster, 1, 1, nil); b[4] = 7; return b }(), "bad frame"},
		{"short length", []byte{0, 0, 0, 5, 1, 0, 0, 0, 0}, "bad frame"},
		{"second hello", helloFrame(testCluster, testCluster, 1, ProtocolVersion), "second hello"},
		{"proof after the handshake", appendProofFrame(nil, testCluster, [proofBytes]byte{}), "proof after the handshake"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := n2.rec.count()
			nc := rawHandshake(t, c.peers[2], 1, 2)
			defer nc.Close()
			good := AppendFrame(nil, testCluster, ids.GroupID(i), 3, []byte("good"))
			// A good frame and the bad one in one write: the checks must hold
			// wherever the frame boundaries fall in the reads.
			if _, err := nc.Write(append(good, tc.bad...)); err != nil {
				t.Fatal(err)
			}
			expectClosedByServer(t, nc)
			waitFor(t, "good frame", func() bool { return n2.rec.count() == before+1 })
			f := n2.rec.from(1)[before]
			if f.group != ids.GroupID(i) || f.typ != 3 || string(f.body) != "good" {
				t.Fatalf("handler got %+v", f)
			}
			entries := c.logs.FilterMessage("closing connection").FilterField(zap.String("reason", tc.reason)).All()
			if len(entries) == 0 {
				t.Fatalf("no close logged with reason %q", tc.reason)
			}
		})
	}
	if s := n2.tr.Stats(); s.DecodeErrors != uint64(len(cases)) || s.FramesReceived != uint64(len(cases)) {
		t.Fatalf("stats %+v", s)
	}
}

// TestTCPConnectionsBounded: silent strangers hold connections open until their
// handshake times out; past ConnectionsMax new ones are closed at once, and the
// members' own connection is not disturbed.
func TestTCPConnectionsBounded(t *testing.T) {
	defer goleak.VerifyNone(t, leakOpts...)
	c := newCluster(t, 2, func(o *Options) { o.ConnectionsMax = 4; o.HandshakeTimeout = 5 * time.Second })
	n1, n2 := c.start(1), c.start(2)
	defer c.closeAll()
	waitFor(t, "1-2 connected", func() bool { return n1.tr.Connected(2) && n2.tr.Connected(1) })
	// One connection is the members'; three strangers fit beside it.
	var held []net.Conn
	defer func() {
		for _, nc := range held {
			nc.Close()
		}
	}()
	for range 3 {
		held = append(held, rawDial(t, c.peers[2]))
	}
	waitFor(t, "three strangers admitted", func() bool {
		n2.tr.mu.Lock()
		defer n2.tr.mu.Unlock()
		return len(n2.tr.conns) == 4
	})
	before := n2.tr.Stats().ConnsRefused
	nc := rawDial(t, c.peers[2])
	if got := expectClosedByServer(t, nc); len(got) != 0 {
		t.Fatalf("server answered a connection over the limit with %d bytes", len(got))
	}
	waitFor(t, "refusal counted", func() bool { return n2.tr.Stats().ConnsRefused == before+1 })
	if !n1.tr.Connected(2) || !n2.tr.Connected(1) {
		t.Fatal("the members' connection was dropped")
	}
}

// backoffAttemptsMax is the most dial attempts dialLoop can make in elapsed, given
// the backoff schedule of o: the first attempt at once, then before attempt k+2 a
// sleep of at least half of step k, where step k = min(ReconnectMin*2^k,
// ReconnectMax) (jitter draws from [step/2, step]). Connects to a closed loopback
// port fail at once, so the sleeps are all the time there is; a slow machine only
// makes fewer attempts.
func backoffAttemptsMax(o Options, elapsed time.Duration) int {
	o = o.withDefaults()
	attempts, slept, step := 1, time.Duration(0), o.ReconnectMin
	for {
		slept += step / 2
		if slept > elapsed {
			return attempts
		}
		attempts++
		step = min(2*step, o.ReconnectMax)
	}
}

// TestTCPReconnectBackoff: while the peer it dials is down (never started, then
// stopped after a connection), the dialer's failed attempts stay within what the
// doubling backoff allows for the time it was down - not one per ReconnectMin - and
// it reconnects once the peer is back.
func TestTCPReconnectBackoff(t *testing.T) {
	defer goleak.VerifyNone(t, leakOpts...)
	tweak := func(o *Options) { o.ReconnectMin, o.ReconnectMax = 20*time.Millisecond, 400*time.Millisecond }
	c := newCluster(t, 2, tweak)
	defer c.closeAll()
	const down = 2 * time.Second
	// checkDown keeps the peer down for about down, then checks the failures node 1
	// (the dialer: the peer has the higher ID) counted since start against the bound.
	checkDown := func(phase string, start time.Time, before uint64) {
		t.Helper()
		time.Sleep(down - time.Since(start))
		fails := c.nodes[1].tr.Stats().DialFailures - before
		elapsed := time.Since(start) // read after the counter: an upper bound on the time it covers
		bound := backoffAttemptsMax(c.options(1, &recorder{}), elapsed)
		naive := int(elapsed / (20 * time.Millisecond))
		t.Logf("%s: %d dial failures in %v (backoff bound %d, one per ReconnectMin would be %d)", phase, fails, elapsed, bound, naive)
		if fails == 0 || fails > uint64(bound) {
			t.Fatalf("%s: %d dial failures in %v, want 1..%d", phase, fails, elapsed, bound)
		}
		if 3*bound > naive {
			t.Fatalf("bound %d is not well below %d: the test would not tell backoff from none", bound, naive)
		}
	}
	resumes := func(from, to *testNode) {
		t.Helper()
		rng := rand.New(rand.NewPCG(3, 3))
		waitFor(t, "traffic resumes", func() bool {
			from.tr.Send(to.id, 1, 1, payload(rng, 0, 10))
			time.Sleep(5 * time.Millisecond)
			return len(to.rec.from(from.id)) > 0
		})
	}

	// Phase 1: the peer was never up.
	start := time.Now()
	n1 := c.start(1)
	checkDown("never up", start, 0)
	n2 := c.start(2)
	waitFor(t, "connected", func() bool { return n1.tr.Connected(2) && n2.tr.Connected(1) })
	resumes(n1, n2)

	// Phase 2: the peer goes away after a connection (the backoff restarts from
	// ReconnectMin once the peer admitted us) and comes back.
	before := n1.tr.Stats()
	start = time.Now()
	if err := n2.tr.Close(); err != nil {
		t.Fatal(err)
	}
	delete(c.nodes, 2)
	waitFor(t, "node 1 notices", func() bool { return !n1.tr.Connected(2) })
	checkDown("stopped", start, before.DialFailures)
	n2 = c.start(2)
	waitFor(t, "reconnected", func() bool { return n1.tr.Connected(2) && n2.tr.Connected(1) })
	resumes(n1, n2)
	resumes(n2, n1)
	if s := n1.tr.Stats(); s.ConnsOpened != before.ConnsOpened+1 {
		t.Fatalf("node 1 opened %d connections after the restart, want 1: %+v", s.ConnsOpened-before.ConnsOpened, s)
	}
}
