package netio

import (
	"bytes"
	"fmt"
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

	"github.com/multipaxos/engine/ids"
)

// testIncarnations are the test nodes' store incarnations: distinct, with high bits
// set, so that a truncated or swapped value shows.
var testIncarnations = map[ids.NodeID]uint64{1: 0x1111_2222_3333_4444, 2: 0xfedc_ba98_7654_3210}

type admitCall struct {
	peer        ids.NodeID
	incarnation uint64
}

// admitter is one node's AdmitPeer and OnAdmitted: it records what they saw and, while
// refuse is set, refuses every peer.
type admitter struct {
	refuse atomic.Bool

	mu       sync.Mutex
	asked    []admitCall
	admitted map[ids.NodeID]int // OnAdmitted calls per peer
}

func newAdmitter() *admitter { return &admitter{admitted: map[ids.NodeID]int{}} }

func (a *admitter) admit(peer ids.NodeID, incarnation uint64) error {
	a.mu.Lock()
	a.asked = append(a.asked, admitCall{peer, incarnation})
	a.mu.Unlock()
	if a.refuse.Load() {
		return fmt.Errorf("node %d has incarnation %#x, not the one this store knows", peer, incarnation)
	}
	return nil
}

func (a *admitter) onAdmitted(peer ids.NodeID) {
	a.mu.Lock()
	a.admitted[peer]++
	a.mu.Unlock()
}

func (a *admitter) calls() []admitCall {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]admitCall(nil), a.asked...)
}

func (a *admitter) admittedBy(peer ids.NodeID) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.admitted[peer]
}

// incarnationCluster is a two-node cluster with testIncarnations and an admitter per
// node, with the given secret (nil: none) and fast redials.
func incarnationCluster(t *testing.T, secret []byte) (*cluster, map[ids.NodeID]*admitter) {
	adm := map[ids.NodeID]*admitter{1: newAdmitter(), 2: newAdmitter()}
	c := newCluster(t, 2, func(o *Options) {
		o.ClusterSecret = secret
		o.Incarnation = testIncarnations[o.NodeID]
		o.AdmitPeer = adm[o.NodeID].admit
		o.OnAdmitted = adm[o.NodeID].onAdmitted
		o.ReconnectMin, o.ReconnectMax = 10*time.Millisecond, 50*time.Millisecond
	})
	return c, adm
}

var authModes = []struct {
	name   string
	secret []byte
}{{"secret", testSecret}, {"no secret", nil}}

// checkAsked checks that every AdmitPeer call of a saw peer with its incarnation.
func checkAsked(t *testing.T, a *admitter, self, peer ids.NodeID) {
	t.Helper()
	calls := a.calls()
	if len(calls) == 0 {
		t.Fatalf("node %d: AdmitPeer never called", self)
	}
	for _, call := range calls {
		if call != (admitCall{peer, testIncarnations[peer]}) {
			t.Fatalf("node %d: AdmitPeer saw %+v, want node %d with %#x", self, call, peer, testIncarnations[peer])
		}
	}
}

// Two transports with incarnations: each side's AdmitPeer sees the other's
// incarnation, each side is told that the other admitted it, and frames flow.
func TestTCPIncarnationAdmitted(t *testing.T) {
	defer goleak.VerifyNone(t, leakOpts...)
	for _, mode := range authModes {
		t.Run(mode.name, func(t *testing.T) {
			c, adm := incarnationCluster(t, mode.secret)
			n1, n2 := c.start(1), c.start(2)
			defer c.closeAll()
			c.waitConnected()
			waitFor(t, "admitted both ways", func() bool { return adm[1].admittedBy(2) > 0 && adm[2].admittedBy(1) > 0 })
			checkAsked(t, adm[1], 1, 2)
			checkAsked(t, adm[2], 2, 1)

			for i := range 5 {
				n1.tr.Send(2, 7, 1, []byte{byte(i)})
				n2.tr.Send(1, 7, 2, []byte{byte(i)})
			}
			waitFor(t, "frames", func() bool { return n1.rec.count() == 5 && n2.rec.count() == 5 })
			for _, n := range []*testNode{n1, n2} {
				s := n.tr.Stats()
				if s.PeersRefused != 0 || s.ConnsRefused != 0 || s.FramesReceived != 5 {
					t.Fatalf("node %d stats %+v", n.id, s)
				}
				// At most one admitted frame per connection.
				other := 3 - n.id
				if got := adm[n.id].admittedBy(other); uint64(got) > s.ConnsOpened {
					t.Fatalf("node %d: OnAdmitted %d times on %d connections", n.id, got, s.ConnsOpened)
				}
			}
		})
	}
}

// AdmitPeer refusing the peer, on the dialing side (1) or the accepting side (2), with
// and without a secret: every connection attempt is refused, no engine frame is
// delivered in either direction, neither side is told it was admitted, and each
// refusal is counted and logged at Error level with both incarnations. Once AdmitPeer
// relents, the next redial connects.
func TestTCPIncarnationRefused(t *testing.T) {
	defer goleak.VerifyNone(t, leakOpts...)
	for _, mode := range authModes {
		for _, refuser := range []ids.NodeID{1, 2} {
			t.Run(fmt.Sprintf("%s/node %d refuses", mode.name, refuser), func(t *testing.T) {
				refused := 3 - refuser
				c, adm := incarnationCluster(t, mode.secret)
				adm[refuser].refuse.Store(true)
				n1, n2 := c.start(1), c.start(2)
				defer c.closeAll()
				nodes := map[ids.NodeID]*testNode{1: n1, 2: n2}

				// Keep sending both ways while the attempts are refused.
				waitFor(t, "repeated refusals", func() bool {
					n1.tr.Send(2, 1, 1, []byte("refused"))
					n2.tr.Send(1, 1, 1, []byte("refused"))
					return nodes[refuser].tr.Stats().PeersRefused >= 3
				})
				if n1.rec.count() != 0 || n2.rec.count() != 0 {
					t.Fatalf("frames delivered across a refused connection: %d to node 1, %d to node 2",
						n1.rec.count(), n2.rec.count())
				}
				if adm[refused].admittedBy(refuser) != 0 || adm[refuser].admittedBy(refused) != 0 {
					t.Fatal("OnAdmitted fired on a refused connection")
				}
				checkAsked(t, adm[refuser], refuser, refused)
				rs := nodes[refuser].tr.Stats()
				if rs.ConnsOpened != 0 || rs.FramesReceived != 0 || rs.AuthFailures != 0 || rs.PeersRefused > rs.ConnsRefused {
					t.Fatalf("refusing node %d stats %+v", refuser, rs)
				}
				if s := nodes[refused].tr.Stats(); s.FramesReceived != 0 || s.PeersRefused != 0 || s.AuthFailures != 0 {
					t.Fatalf("refused node %d stats %+v", refused, s)
				}

				entries := c.logs.FilterLevelExact(zapcore.ErrorLevel).FilterMessage("refused connection").
					FilterField(zap.String("reason", "peer not admitted")).All()
				if len(entries) < 3 {
					t.Fatalf("%d error-level refusals logged, want >= 3", len(entries))
				}
				for _, e := range entries {
					ctx := e.ContextMap()
					if ctx["node"] != uint64(refuser) || ctx["peer"] != uint64(refused) ||
						ctx["peer_incarnation"] != testIncarnations[refused] ||
						ctx["incarnation"] != testIncarnations[refuser] ||
						!strings.Contains(fmt.Sprint(ctx["error"]), "not the one this store knows") {
						t.Fatalf("refusal log %v", ctx)
					}
				}

				// Once admitted, the redial connects and both sides hear so.
				adm[refuser].refuse.Store(false)
				c.waitConnected()
				waitFor(t, "admitted both ways", func() bool {
					return adm[1].admittedBy(2) > 0 && adm[2].admittedBy(1) > 0
				})
				n1.tr.Send(2, 9, 3, []byte("after"))
				n2.tr.Send(1, 9, 3, []byte("after"))
				waitFor(t, "frames after admission", func() bool {
					return len(framesOfType(n1.rec, 3)) == 1 && len(framesOfType(n2.rec, 3)) == 1
				})
			})
		}
	}
}

func framesOfType(r *recorder, typ uint8) []rxFrame {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []rxFrame
	for _, f := range r.frames {
		if f.typ == typ {
			out = append(out, f)
		}
	}
	return out
}

// The admitted frame is taken once per connection, empty, and only after the
// handshake; anything else closes the connection like any bad control frame. The
// acceptor's Hello carries its incarnation, and its AdmitPeer sees the dialer's.
func TestTCPAdmittedFrameChecks(t *testing.T) {
	defer goleak.VerifyNone(t, leakOpts...)
	c, adm := incarnationCluster(t, testSecret)
	n2 := c.start(2) // node 1 is played by hand, with incarnation 0 (unknown)
	defer c.closeAll()
	admitted := appendAdmittedFrame(nil, testCluster)

	closedFor := func(t *testing.T, nc net.Conn, reason string) {
		t.Helper()
		expectClosedByServer(t, nc)
		waitFor(t, "close logged", func() bool {
			return c.logs.FilterField(zap.String("reason", reason)).Len() > 0
		})
	}

	t.Run("valid, then again", func(t *testing.T) {
		a := rawHelloExchange(t, c.peers[2], 1, 2, authHMACSHA256, testSecret)
		if a.hello.Incarnation != testIncarnations[2] {
			t.Fatalf("acceptor's hello has incarnation %#x, want %#x", a.hello.Incarnation, testIncarnations[2])
		}
		if _, err := a.nc.Write(a.dialerProofFrame(testSecret, 1)); err != nil {
			t.Fatal(err)
		}
		if h, body := readFrame(t, a.nc); h.Type != TypeControl || h.Group != ctlAdmitted || len(body) != 0 {
			t.Fatalf("first frame after the proof %+v %x, want an empty admitted", h, body)
		}
		if calls := adm[2].calls(); len(calls) != 1 || calls[0] != (admitCall{1, 0}) {
			t.Fatalf("AdmitPeer calls %+v", calls)
		}
		if _, err := a.nc.Write(append(admitted, AppendFrame(nil, testCluster, 4, 1, []byte("good"))...)); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "admitted and frame", func() bool { return adm[2].admittedBy(1) == 1 && n2.rec.count() == 1 })
		if _, err := a.nc.Write(admitted); err != nil {
			t.Fatal(err)
		}
		closedFor(t, a.nc, "second admitted frame")
	})
	t.Run("with a body", func(t *testing.T) {
		nc := rawHandshake(t, c.peers[2], 1, 2)
		if _, err := nc.Write(AppendFrame(nil, testCluster, ctlAdmitted, TypeControl, []byte{0})); err != nil {
			t.Fatal(err)
		}
		closedFor(t, nc, "admitted frame with a body")
	})
	t.Run("before the proof", func(t *testing.T) {
		a := rawHelloExchange(t, c.peers[2], 1, 2, authHMACSHA256, testSecret)
		if _, err := a.nc.Write(admitted); err != nil {
			t.Fatal(err)
		}
		if rest := expectClosedByServer(t, a.nc); len(rest) != 0 {
			t.Fatalf("acceptor sent %d more bytes to an unproven peer", len(rest))
		}
		checkRefusalLog(t, c.logs, "frame before proof", 1)
	})
	t.Run("before the hello", func(t *testing.T) {
		nc := rawDial(t, c.peers[2])
		if _, err := nc.Write(admitted); err != nil {
			t.Fatal(err)
		}
		if got := expectClosedByServer(t, nc); len(got) != 0 {
			t.Fatalf("server answered with %d bytes", len(got))
		}
		waitFor(t, "refusal logged", func() bool { return len(refusals(c.logs, "frame before hello")) > 0 })
	})
	t.Run("proof over another incarnation", func(t *testing.T) {
		// The Hello said 0; a proof over any other dialer incarnation does not verify.
		a := rawHelloExchange(t, c.peers[2], 1, 2, authHMACSHA256, testSecret)
		mac := handshakeMAC(testSecret, labelDialer, testCluster, 1, 2, &a.dialerNonce, &a.hello.Nonce,
			testIncarnations[1], a.hello.Incarnation)
		if _, err := a.nc.Write(appendProofFrame(nil, testCluster, mac)); err != nil {
			t.Fatal(err)
		}
		if rest := expectClosedByServer(t, a.nc); len(rest) != 0 {
			t.Fatalf("acceptor sent %d more bytes after a bad proof", len(rest))
		}
		checkRefusalLog(t, c.logs, "authentication failed", 1)
	})
	if got := adm[2].admittedBy(1); got != 1 {
		t.Fatalf("OnAdmitted fired %d times, want once", got)
	}
	if s := n2.tr.Stats(); s.FramesReceived != 1 || s.PeersRefused != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// proofFor binds both incarnations: the two sides of a connection compute the same
// proofs only while they agree on both, so a Hello whose incarnation was altered on
// the path makes the proofs fail.
func TestProofForBindsIncarnation(t *testing.T) {
	newSide := func(self ids.NodeID, inc uint64) *TCPTransport {
		return &TCPTransport{opts: Options{NodeID: self, ClusterID: testCluster, ClusterSecret: testSecret,
			Incarnation: inc}}
	}
	dn, an := testNonce(1), testNonce(50)
	d := newSide(1, testIncarnations[1])
	a := newSide(2, testIncarnations[2])
	dialerConn := func(acceptorInc uint64) *connState {
		return &connState{outbound: true, peer: &peer{id: 2}, nonce: dn, peerNonce: an, peerIncarnation: acceptorInc}
	}
	acceptorConn := func(dialerInc uint64) *connState {
		return &connState{peer: &peer{id: 1}, nonce: an, peerNonce: dn, peerIncarnation: dialerInc}
	}
	dcs, acs := dialerConn(testIncarnations[2]), acceptorConn(testIncarnations[1])
	for _, label := range []string{labelDialer, labelAcceptor} {
		if d.proofFor(dcs, label) != a.proofFor(acs, label) {
			t.Fatalf("%s: the two sides disagree", label)
		}
		want := handshakeMAC(testSecret, label, testCluster, 1, 2, &dn, &an, testIncarnations[1], testIncarnations[2])
		if d.proofFor(dcs, label) != want {
			t.Fatalf("%s: proofFor is not handshakeMAC over (dialer, acceptor) incarnations", label)
		}
	}
	// The acceptor read a tampered dialer incarnation, or the dialer a tampered
	// acceptor one: the proofs no longer match.
	if d.proofFor(dcs, labelDialer) == a.proofFor(acceptorConn(testIncarnations[1]^1), labelDialer) {
		t.Fatal("dialer's proof verifies over another dialer incarnation")
	}
	if a.proofFor(acs, labelAcceptor) == d.proofFor(dialerConn(0), labelAcceptor) {
		t.Fatal("acceptor's proof verifies over another acceptor incarnation")
	}
	// A node whose own incarnation changed (a wiped store) proves another MAC.
	if d.proofFor(dcs, labelDialer) == newSide(1, 7).proofFor(dcs, labelDialer) {
		t.Fatal("proof does not depend on this node's incarnation")
	}
}

// v2HelloFrame is what a peer running protocol version 2 sends first: the version 3
// layout without the incarnation.
func v2HelloFrame(node ids.NodeID) []byte {
	var buf bytes.Buffer
	e := msgpack.NewEncoder(&buf)
	n := testNonce(33)
	_ = e.EncodeArrayLen(5)
	_ = e.EncodeUint(2)
	_ = e.EncodeUint(testCluster)
	_ = e.EncodeUint(uint64(node))
	_ = e.EncodeBytes(n[:])
	_ = e.EncodeUint(uint64(authHMACSHA256))
	return AppendFrame(nil, testCluster, ctlHello, TypeControl, buf.Bytes())
}

// The dialer's Hello carries its incarnation in the sixth field, and a dialer
// answered by a version 2 acceptor refuses it by version before sending anything
// else. (The acceptor's side is in TestTCPRefusesStrangers.)
func TestTCPDialerRefusesV2Acceptor(t *testing.T) {
	defer goleak.VerifyNone(t, leakOpts...)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, adm := incarnationCluster(t, testSecret)
	c.peers[2] = ln.Addr().String() // node 2 is an old peer played by hand
	n1 := c.start(1)
	defer c.closeAll()

	_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(20 * time.Second))
	nc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	h, body := readFrame(t, nc)
	hl, err := decodeHello(body)
	if h.Group != ctlHello || err != nil || hl.Protocol != 3 || hl.NodeID != 1 ||
		hl.Incarnation != testIncarnations[1] || hl.Auth != authHMACSHA256 {
		t.Fatalf("dialer's hello %+v %+v, %v", h, hl, err)
	}
	if _, err := nc.Write(v2HelloFrame(2)); err != nil {
		t.Fatal(err)
	}
	if rest := expectClosedByServer(t, nc); len(rest) != 0 {
		t.Fatalf("dialer sent %d more bytes to a version 2 acceptor", len(rest))
	}
	waitFor(t, "refusal logged", func() bool { return len(refusals(c.logs, "unsupported protocol version")) > 0 })
	e := refusals(c.logs, "unsupported protocol version")[0].ContextMap()
	if e["dialed"] != uint64(2) || e["protocol"] != uint32(2) {
		t.Fatalf("refusal log %v", e)
	}
	if len(adm[1].calls()) != 0 || n1.tr.Connected(2) {
		t.Fatal("a version 2 peer reached AdmitPeer or connected")
	}
}
