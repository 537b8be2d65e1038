package netio

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/multipaxos/engine/ids"
)

// refusals returns the "refused connection" entries with the given reason.
func refusals(logs *observer.ObservedLogs, reason string) []observer.LoggedEntry {
	return logs.FilterMessage("refused connection").FilterField(zap.String("reason", reason)).All()
}

// checkRefusalLog checks that the latest refusal with reason names the remote address
// and the node the peer claimed to be.
func checkRefusalLog(t *testing.T, logs *observer.ObservedLogs, reason string, claimed ids.NodeID) {
	t.Helper()
	entries := refusals(logs, reason)
	if len(entries) == 0 {
		t.Fatalf("no refusal logged with reason %q", reason)
	}
	ctx := entries[len(entries)-1].ContextMap()
	if _, ok := ctx["remote"]; !ok {
		t.Fatalf("refusal log without remote address: %v", ctx)
	}
	if ctx["claimed"] != uint64(claimed) {
		t.Fatalf("refusal log claims %v, want node %d: %v", ctx["claimed"], claimed, ctx)
	}
}

func noSecretWarnings(logs *observer.ObservedLogs) int {
	return logs.FilterLevelExact(zapcore.WarnLevel).FilterMessageSnippet("peers are not authenticated").Len()
}

// Two transports with the same secret connect and exchange frames; each side proved
// itself once, and nobody warned about missing authentication. StartTCP keeps its own
// copy of the secret: wiping the caller's slice afterwards changes nothing.
func TestTCPAuthSameSecret(t *testing.T) {
	defer goleak.VerifyNone(t, leakOpts...)
	secrets := map[ids.NodeID][]byte{1: bytes.Clone(testSecret), 2: bytes.Clone(testSecret)}
	c := newCluster(t, 2, func(o *Options) { o.ClusterSecret = secrets[o.NodeID] })
	n1 := c.start(1)
	clear(secrets[1])
	n2 := c.start(2)
	defer c.closeAll()
	waitFor(t, "connected", func() bool { return n1.tr.Connected(2) && n2.tr.Connected(1) })

	rng := rand.New(rand.NewPCG(7, 7))
	for seq := uint32(0); seq < 10; seq++ {
		n1.tr.Send(2, 1, 1, payload(rng, seq, 100))
		n2.tr.Send(1, 1, 1, payload(rng, seq, 100))
	}
	waitFor(t, "frames", func() bool { return n1.rec.count() == 10 && n2.rec.count() == 10 })
	for _, n := range []*testNode{n1, n2} {
		if s := n.tr.Stats(); s.ConnsOpened != 1 || s.ConnsRefused != 0 || s.AuthFailures != 0 {
			t.Fatalf("node %d stats %+v", n.id, s)
		}
	}
	if k := noSecretWarnings(c.logs); k != 0 {
		t.Fatalf("%d no-secret warnings with a secret set", k)
	}
}

// Without a secret on either side the nodes connect (loopback tests), and each warns
// loudly at start that its peers are not authenticated.
func TestTCPAuthNoSecretWarns(t *testing.T) {
	defer goleak.VerifyNone(t, leakOpts...)
	c := newCluster(t, 2, func(o *Options) { o.ClusterSecret = nil })
	n1, n2 := c.start(1), c.start(2)
	defer c.closeAll()
	waitFor(t, "connected", func() bool { return n1.tr.Connected(2) && n2.tr.Connected(1) })
	n1.tr.Send(2, 1, 1, []byte("x"))
	waitFor(t, "frame", func() bool { return n2.rec.count() == 1 })
	if k := noSecretWarnings(c.logs); k != 2 {
		t.Fatalf("%d no-secret warnings, want one per node", k)
	}
}

// Different secrets: the dialer refuses the acceptor's proof (and never sends its own),
// and the acceptor refuses a dialer's proof made with another secret. No frame reaches
// either Handler; the refusals are counted and logged with their reason.
func TestTCPAuthWrongSecret(t *testing.T) {
	defer goleak.VerifyNone(t, leakOpts...)
	other := []byte("another secret, also 32 bytes..")
	c := newCluster(t, 2, func(o *Options) {
		o.ReconnectMin, o.ReconnectMax = 10*time.Millisecond, 50*time.Millisecond
		if o.NodeID == 2 {
			o.ClusterSecret = other
		}
	})
	n1, n2 := c.start(1), c.start(2)
	defer c.closeAll()
	// Queued on both sides, waiting for a connection that must never come.
	n1.tr.Send(2, 1, 1, []byte("to 2"))
	n2.tr.Send(1, 1, 1, []byte("to 1"))

	t.Run("dialer refuses the acceptor", func(t *testing.T) {
		waitFor(t, "repeated refusals", func() bool { return n1.tr.Stats().AuthFailures >= 3 })
		checkRefusalLog(t, c.logs, "authentication failed", 2)
		// The acceptor cannot know why; it says where to look.
		if c.logs.FilterMessageSnippet("before proving the cluster secret").
			FilterField(zap.Uint64("claimed", 1)).Len() == 0 {
			t.Fatal("acceptor did not log the dialer hanging up mid-handshake")
		}
	})

	t.Run("acceptor refuses the dialer", func(t *testing.T) {
		before := n2.tr.Stats()
		// A dialer holding testSecret that sends its proof without checking node 2's
		// (which verifies only under `other`, as rawHelloExchange confirms).
		a := rawHelloExchange(t, c.peers[2], 1, 2, authHMACSHA256, other)
		if _, err := a.nc.Write(a.dialerProofFrame(testSecret, 1)); err != nil {
			t.Fatal(err)
		}
		expectClosedByServer(t, a.nc)
		waitFor(t, "refusal counted", func() bool { return n2.tr.Stats().ConnsRefused == before.ConnsRefused+1 })
		if s := n2.tr.Stats(); s.AuthFailures != before.AuthFailures+1 {
			t.Fatalf("auth failures %d, want %d", s.AuthFailures, before.AuthFailures+1)
		}
		checkRefusalLog(t, c.logs, "authentication failed", 1)
	})

	if n1.tr.Connected(2) || n2.tr.Connected(1) {
		t.Fatal("nodes with different secrets connected")
	}
	for _, n := range []*testNode{n1, n2} {
		if s := n.tr.Stats(); n.rec.count() != 0 || s.ConnsOpened != 0 || s.FramesReceived != 0 || s.FramesSent != 0 {
			t.Fatalf("node %d: %d frames delivered, stats %+v", n.id, n.rec.count(), s)
		}
	}
}

// A node with a secret and a node without one refuse each other whichever of them
// dials: the acceptor sees the mismatch in the Hello and answers nothing. Neither
// falls back to an unauthenticated connection.
func TestTCPAuthMismatch(t *testing.T) {
	for _, tc := range []struct {
		name   string
		secret ids.NodeID // the node that has a secret; the other has none
	}{{"only the dialer has a secret", 1}, {"only the acceptor has a secret", 2}} {
		t.Run(tc.name, func(t *testing.T) {
			defer goleak.VerifyNone(t, leakOpts...)
			c := newCluster(t, 2, func(o *Options) {
				o.ReconnectMin, o.ReconnectMax = 10*time.Millisecond, 50*time.Millisecond
				if o.NodeID != tc.secret {
					o.ClusterSecret = nil
				}
			})
			n1, n2 := c.start(1), c.start(2)
			defer c.closeAll()
			n1.tr.Send(2, 1, 1, []byte("to 2"))
			n2.tr.Send(1, 1, 1, []byte("to 1"))
			waitFor(t, "refusals", func() bool { return n2.tr.Stats().AuthFailures >= 2 })
			checkRefusalLog(t, c.logs, "authentication mismatch", 1)
			entry := refusals(c.logs, "authentication mismatch")[0].ContextMap()
			if entry["secret_set"] != (tc.secret == 2) {
				t.Fatalf("log says secret_set=%v on node 2: %v", entry["secret_set"], entry)
			}
			if n1.tr.Connected(2) || n2.tr.Connected(1) || n1.rec.count() != 0 || n2.rec.count() != 0 {
				t.Fatal("mismatched nodes connected or delivered frames")
			}
			if s := n2.tr.Stats(); s.ConnsRefused < 2 || s.ConnsOpened != 0 {
				t.Fatalf("node 2 stats %+v", s)
			}
		})
	}
}

// recordingProxy forwards TCP connections to target and records the first one's bytes
// in each direction: an eavesdropper on the path between two nodes.
type recordingProxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu       sync.Mutex
	conns    []net.Conn
	closed   bool
	recorded bool
	up, down bytes.Buffer // dialer -> target, target -> dialer
}

func startProxy(t *testing.T, target string) *recordingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &recordingProxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	return p
}

func (p *recordingProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_, _ = c.Close(), u.Close()
			return
		}
		p.conns = append(p.conns, c, u)
		var upRec, downRec io.Writer = io.Discard, io.Discard
		if !p.recorded {
			p.recorded = true
			upRec, downRec = &lockedWriter{&p.mu, &p.up}, &lockedWriter{&p.mu, &p.down}
		}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(u, c, upRec)
		go p.pipe(c, u, downRec)
	}
}

// pipe copies src to dst, recording first: by the time the far side has the bytes,
// the recording has them too.
func (p *recordingProxy) pipe(dst, src net.Conn, rec io.Writer) {
	defer p.wg.Done()
	_, _ = io.Copy(io.MultiWriter(rec, dst), src)
	_, _ = dst.Close(), src.Close()
}

func (p *recordingProxy) snapshot() (up, down []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Clone(p.up.Bytes()), bytes.Clone(p.down.Bytes())
}

func (p *recordingProxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w *lockedWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(b)
}

type wireFrame struct {
	hdr  FrameHeader
	body []byte
	raw  []byte
}

func splitFrames(t *testing.T, b []byte) []wireFrame {
	t.Helper()
	var out []wireFrame
	for len(b) > 0 {
		h, body, n, err := DecodeFrame(b, 0)
		if err != nil {
			t.Fatalf("recorded stream: %v", err)
		}
		out = append(out, wireFrame{h, body, b[:n]})
		b = b[n:]
	}
	return out
}

// A real handshake between nodes 1 and 2 is recorded on the path; replaying the
// dialer's bytes (Hello, proof, Admitted and the engine frame after them) from a raw connection
// is refused: the acceptor picks a fresh nonce, so the recorded proof does not cover
// it. Nothing of the replay reaches the Handler, and the real link is untouched.
func TestTCPAuthReplay(t *testing.T) {
	defer goleak.VerifyNone(t, leakOpts...)
	var proxy *recordingProxy
	c := newCluster(t, 2, func(o *Options) {
		if o.NodeID == 1 { // node 1 reaches node 2 through the eavesdropper
			o.Peers = map[ids.NodeID]string{1: o.ListenAddr, 2: proxy.ln.Addr().String()}
		}
	})
	proxy = startProxy(t, c.peers[2])
	defer proxy.close()
	n2, n1 := c.start(2), c.start(1)
	defer c.closeAll()
	waitFor(t, "connected", func() bool { return n1.tr.Connected(2) && n2.tr.Connected(1) })
	n1.tr.Send(2, 3, 1, []byte("real"))
	waitFor(t, "real frame", func() bool { return n2.rec.count() == 1 })

	up, down := proxy.snapshot()
	if bytes.Contains(up, testSecret) || bytes.Contains(down, testSecret) {
		t.Fatal("the secret is on the wire")
	}
	upFrames, downFrames := splitFrames(t, up), splitFrames(t, down)
	if len(upFrames) < 4 || upFrames[0].hdr.Group != ctlHello || upFrames[1].hdr.Group != ctlProof ||
		upFrames[2].hdr.Group != ctlAdmitted || upFrames[2].hdr.Type != TypeControl || upFrames[3].hdr.Type != 1 {
		t.Fatalf("recorded dialer stream: %+v", upFrames)
	}
	if len(downFrames) < 2 || downFrames[0].hdr.Group != ctlHello || downFrames[1].hdr.Group != ctlProof {
		t.Fatalf("recorded acceptor stream: %+v", downFrames)
	}
	recordedAcceptor, err := decodeHello(downFrames[0].body)
	if err != nil {
		t.Fatal(err)
	}

	before := n2.tr.Stats()
	nc := rawDial(t, c.peers[2])
	if _, err := nc.Write(up); err != nil {
		t.Fatal(err)
	}
	answer := splitFrames(t, expectClosedByServer(t, nc))
	if len(answer) != 2 || answer[0].hdr.Group != ctlHello || answer[1].hdr.Group != ctlProof {
		t.Fatalf("acceptor answered the replay with %+v", answer)
	}
	if fresh, err := decodeHello(answer[0].body); err != nil || fresh.Nonce == recordedAcceptor.Nonce {
		t.Fatalf("acceptor reused its nonce (%v)", err)
	}
	waitFor(t, "refusal counted", func() bool { return n2.tr.Stats().ConnsRefused == before.ConnsRefused+1 })
	checkRefusalLog(t, c.logs, "authentication failed", 1)
	if s := n2.tr.Stats(); s.AuthFailures != before.AuthFailures+1 || s.ConnsOpened != before.ConnsOpened {
		t.Fatalf("node 2 stats %+v", s)
	}

	// The real connection never noticed, and the replayed frame was not delivered.
	n1.tr.Send(2, 3, 1, []byte("after"))
	waitFor(t, "real frame after the replay", func() bool { return n2.rec.count() == 2 })
	if got := n2.rec.from(1); string(got[0].body) != "real" || string(got[1].body) != "after" {
		t.Fatalf("node 2 received %+v", got)
	}
	if !n1.tr.Connected(2) || n1.tr.Stats().ConnsClosed != 0 {
		t.Fatal("the replay disturbed the real link")
	}
}

// After a valid-looking Hello the acceptor answers with its Hello and proof; the only
// frame it then takes is the dialer's proof. Anything else, a bad proof, a reflected
// one, or silence until the handshake timeout closes the connection, logged with the
// node the peer claimed to be, before any frame reaches the Handler.
func TestTCPHandshakeProofStep(t *testing.T) {
	defer goleak.VerifyNone(t, leakOpts...)
	c := newCluster(t, 2, func(o *Options) { o.HandshakeTimeout = 300 * time.Millisecond })
	n1, n2 := c.start(1), c.start(2)
	defer c.closeAll()
	waitFor(t, "1-2 connected", func() bool { return n1.tr.Connected(2) && n2.tr.Connected(1) })

	var zeroMAC [proofBytes]byte
	shortMAC := func() []byte {
		var buf bytes.Buffer
		_ = buf.WriteByte(0x91) // fixarray of 1
		_, _ = buf.Write([]byte{0xc4, 31})
		_, _ = buf.Write(make([]byte, 31))
		return AppendFrame(nil, testCluster, ctlProof, TypeControl, buf.Bytes())
	}()
	cases := []struct {
		name   string
		send   func(a rawAnswer) []byte
		reason string
	}{
		{"engine frame instead of proof", func(rawAnswer) []byte {
			return AppendFrame(nil, testCluster, 5, 1, []byte("sneaky"))
		}, "frame before proof"},
		{"keepalive instead of proof", func(rawAnswer) []byte {
			return AppendFrame(nil, testCluster, ctlKeepalive, TypeControl, nil)
		}, "frame before proof"},
		{"second hello", func(rawAnswer) []byte {
			return helloFrame(testCluster, testCluster, 1, ProtocolVersion)
		}, "frame before proof"},
		{"malformed proof", func(rawAnswer) []byte {
			return AppendFrame(nil, testCluster, ctlProof, TypeControl, []byte{0xc1})
		}, "malformed proof"},
		{"31-byte proof", func(rawAnswer) []byte { return shortMAC }, "malformed proof"},
		{"large frame", func(rawAnswer) []byte {
			return AppendFrame(nil, testCluster, ctlProof, TypeControl, make([]byte, 2000))
		}, "bad frame"},
		{"zero proof", func(rawAnswer) []byte { return appendProofFrame(nil, testCluster, zeroMAC) }, "authentication failed"},
		{"acceptor's proof reflected", func(a rawAnswer) []byte { return a.proofFrame }, "authentication failed"},
		{"proof with the nonces swapped", func(a rawAnswer) []byte {
			mac := handshakeMAC(testSecret, labelDialer, testCluster, 1, 2, &a.hello.Nonce, &a.dialerNonce, 0, a.hello.Incarnation)
			return appendProofFrame(nil, testCluster, mac)
		}, "authentication failed"},
		{"proof for another pair", func(a rawAnswer) []byte {
			mac := handshakeMAC(testSecret, labelDialer, testCluster, 1, 3, &a.dialerNonce, &a.hello.Nonce, 0, a.hello.Incarnation)
			return appendProofFrame(nil, testCluster, mac)
		}, "authentication failed"},
		{"silent after hello", nil, "handshake timeout"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := n2.tr.Stats()
			a := rawHelloExchange(t, c.peers[2], 1, 2, authHMACSHA256, testSecret)
			if tc.send != nil {
				if _, err := a.nc.Write(tc.send(a)); err != nil {
					t.Fatal(err)
				}
			}
			if rest := expectClosedByServer(t, a.nc); len(rest) != 0 {
				t.Fatalf("acceptor sent %d more bytes to an unproven peer", len(rest))
			}
			waitFor(t, "refusal counted", func() bool { return n2.tr.Stats().ConnsRefused == before.ConnsRefused+1 })
			checkRefusalLog(t, c.logs, tc.reason, 1)
			if s := n2.tr.Stats(); s.ConnsOpened != before.ConnsOpened {
				t.Fatalf("stranger established: %+v", s)
			}
		})
	}

	// A frame written together with the Hello, before the acceptor has even answered,
	// is refused just the same.
	t.Run("engine frame right behind the hello", func(t *testing.T) {
		before := n2.tr.Stats()
		nc := rawDial(t, c.peers[2])
		msg := append(helloFrame(testCluster, testCluster, 1, ProtocolVersion),
			AppendFrame(nil, testCluster, 5, 1, []byte("sneaky"))...)
		if _, err := nc.Write(msg); err != nil {
			t.Fatal(err)
		}
		expectClosedByServer(t, nc)
		waitFor(t, "refusal counted", func() bool { return n2.tr.Stats().ConnsRefused == before.ConnsRefused+1 })
		checkRefusalLog(t, c.logs, "frame before proof", 1)
	})

	// A valid proof sent twice in one write: the first establishes the connection
	// (displacing the real node 1's), the second is out of place and closes it.
	t.Run("valid proof, then sent again", func(t *testing.T) {
		a := rawHelloExchange(t, c.peers[2], 1, 2, authHMACSHA256, testSecret)
		pf := a.dialerProofFrame(testSecret, 1)
		if _, err := a.nc.Write(append(pf, pf...)); err != nil {
			t.Fatal(err)
		}
		expectClosedByServer(t, a.nc)
		waitFor(t, "close logged", func() bool {
			return c.logs.FilterMessage("closing connection").
				FilterField(zap.String("reason", "proof after the handshake")).Len() > 0
		})
	})

	// The strangers displaced nothing (the one that proved the secret did, and the
	// real node 1 took its place back), and only real frames reached the Handler.
	waitFor(t, "1-2 connected again", func() bool { return n1.tr.Connected(2) && n2.tr.Connected(1) })
	rng := rand.New(rand.NewPCG(5, 5))
	for seq := uint32(0); seq < 5; seq++ {
		for !n1.tr.Send(2, 4, 2, payload(rng, seq, 50)) {
			time.Sleep(time.Millisecond)
		}
	}
	waitFor(t, "real traffic", func() bool { return n2.rec.count() >= 5 })
	for _, f := range n2.rec.from(1) {
		if f.typ != 2 || strings.Contains(string(f.body), "sneaky") {
			t.Fatalf("handler got a stranger's frame %+v", f)
		}
		checkPayload(t, f.body)
	}
	if s := n2.tr.Stats(); s.FramesReceived != uint64(n2.rec.count()) {
		t.Fatalf("stats %+v", s)
	}
}
