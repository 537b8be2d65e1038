package netio

import (
	"crypto/hmac"
	"errors"
	"time"

	"github.com/panjf2000/gnet/v2"
	"go.uber.org/zap"
)

// loopHandler is the gnet.EventHandler of a TCPTransport. It is a separate type so
// that gnet's callbacks do not become methods of the public TCPTransport. Every method
// but OnBoot and OnTick runs on the connection's event loop.
type loopHandler struct {
	gnet.BuiltinEventEngine
	t *TCPTransport
}

func (h *loopHandler) OnBoot(eng gnet.Engine) gnet.Action {
	// Only remember the engine: its loops do not exist yet, so Register would fail
	// (ErrEmptyEngine) and race on the loop list. Dialers start after the first tick.
	h.t.eng = eng
	return gnet.None
}

// OnTick runs on gnet's ticker goroutine, first right after the loops have started.
func (h *loopHandler) OnTick() (time.Duration, gnet.Action) {
	h.t.once.Do(func() { close(h.t.ready) })
	h.t.tick(time.Now())
	return tickInterval, gnet.None
}

func (h *loopHandler) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	t := h.t
	cs, ok := c.Context().(*connState) // outbound: set by the dialer through NewContext
	if !ok {
		cs = &connState{}
		c.SetContext(cs)
	}
	if ra := c.RemoteAddr(); ra != nil {
		cs.remote = ra.String()
	}
	now := time.Now()
	cs.opened = now
	cs.lastRecv.Store(now.UnixNano())
	t.mu.Lock()
	if !cs.outbound && len(t.conns) >= t.opts.ConnectionsMax {
		t.mu.Unlock()
		t.stats.connsRefused.Add(1)
		// Debug, not warn: a flood would flood the log too (Stats counts them).
		t.log.Debug("too many connections: inbound connection closed", zap.String("remote", cs.remote), zap.Int("max", t.opts.ConnectionsMax))
		return nil, gnet.Close
	}
	t.conns[cs] = c
	t.mu.Unlock()
	if cs.outbound {
		// The dialer speaks first; the acceptor answers only a valid Hello, so a
		// stranger learns nothing about this node before claiming to be a member.
		newNonce(&cs.nonce)
		return appendHelloFrame(nil, t.opts.ClusterID, t.opts.NodeID, &cs.nonce, t.auth, t.opts.Incarnation), gnet.None
	}
	return nil, gnet.None
}

func (h *loopHandler) OnClose(c gnet.Conn, err error) gnet.Action {
	t := h.t
	cs, ok := c.Context().(*connState)
	if !ok {
		return gnet.None
	}
	t.mu.Lock()
	delete(t.conns, cs)
	t.mu.Unlock()
	if cs.established.Load() {
		p := cs.peer
		p.mu.Lock()
		current := p.conn == c
		if current {
			p.conn = nil
			p.downSince = time.Now()
			p.outbound.Store(0)
		}
		p.mu.Unlock()
		t.stats.connsClosed.Add(1)
		if current && !t.closed.Load() {
			t.log.Info("peer disconnected", zap.Uint64("peer", uint64(p.id)),
				zap.String("remote", cs.remote), zap.Error(err))
		}
	}
	if !cs.established.Load() && !cs.refused.Load() && !t.closed.Load() {
		switch {
		case !cs.outbound && cs.stage == stageProof:
			// We answered a member's Hello with our proof and it hung up instead of
			// sending its own: most likely it refused ours, so it holds another
			// secret, or its AdmitPeer refused our incarnation. Only the dialer can
			// tell, so say here where to look.
			t.log.Warn("peer closed the connection during the handshake, before proving the cluster secret",
				zap.Uint64("claimed", cs.claimed.Load()), zap.String("remote", cs.remote),
				zap.String("hint", "check that both nodes have the same ClusterSecret, and whether the peer refused this node's incarnation; the peer's log says why"),
				zap.Error(err))
		case cs.outbound:
			// The acceptor logs why it refused; here only the fact is worth a line.
			t.log.Debug("outbound connection closed before the handshake", zap.Uint64("peer", uint64(cs.peer.id)),
				zap.String("remote", cs.remote), zap.Error(err))
		}
	}
	if cs.closed != nil {
		close(cs.closed) // wakes the dialer
	}
	return gnet.None
}

// OnTraffic decodes every complete frame in the inbound buffer. A partial frame stays
// in gnet's buffer until more bytes arrive; the checks on its prefix (length,
// version) run first, so a hostile length is refused before anything is buffered for
// it. Until the handshake completes the frame limit is the handshake's small one.
func (h *loopHandler) OnTraffic(c gnet.Conn) gnet.Action {
	t := h.t
	cs := c.Context().(*connState)
	cs.lastRecv.Store(time.Now().UnixNano())
	for {
		established := cs.established.Load()
		limit := t.opts.MaxFrameBytes
		if !established {
			limit = min(limit, helloFrameBytesMax)
		}
		avail := c.InboundBuffered()
		head, _ := c.Peek(min(avail, FrameHeaderSize))
		size, err := frameSize(head, limit)
		if errors.Is(err, ErrNeedMore) {
			return gnet.None
		}
		if err != nil {
			return t.reject(cs, "bad frame", err)
		}
		if avail < size {
			return gnet.None
		}
		b, _ := c.Peek(size)
		hdr, body, n, err := DecodeFrame(b, limit)
		if err != nil {
			return t.reject(cs, "bad frame", err)
		}
		if hdr.ClusterID != t.opts.ClusterID {
			return t.reject(cs, "wrong cluster id in frame", ErrWrongCluster)
		}
		switch {
		case !established:
			if act := t.onHandshake(c, cs, hdr, body); act != gnet.None {
				return act // c is closing: do not touch its buffers again
			}
		case hdr.Type == TypeControl:
			switch hdr.Group {
			case ctlHello:
				return t.reject(cs, "second hello", ErrUnexpectedFrame)
			case ctlProof:
				return t.reject(cs, "proof after the handshake", ErrUnexpectedFrame)
			case ctlAdmitted:
				if len(body) != 0 {
					return t.reject(cs, "admitted frame with a body", ErrUnexpectedFrame)
				}
				if cs.peerAdmitted.Load() {
					return t.reject(cs, "second admitted frame", ErrUnexpectedFrame)
				}
				cs.peerAdmitted.Store(true)
				if t.opts.OnAdmitted != nil {
					t.opts.OnAdmitted(cs.peer.id)
				}
			}
			// Keepalives only refresh lastRecv. Unknown control frames are ignored
			// so that a later protocol can add some without breaking this one.
		default:
			t.stats.framesReceived.Add(1)
			t.opts.Handler(cs.peer.id, hdr.Group, hdr.Type, body)
		}
		t.stats.bytesReceived.Add(uint64(n))
		_, _ = c.Discard(n)
	}
}

// onHandshake takes a frame of a connection that is not established yet. The order
// is fixed (see the package documentation):
//
//	dialer -> acceptor  Hello{protocol, cluster, node, nonce D, auth, incarnation D}
//	acceptor -> dialer  Hello{protocol, cluster, node, nonce A, auth, incarnation A}, Proof(acceptor label)
//	dialer -> acceptor  Proof(dialer label), Admitted, then engine frames
//	acceptor -> dialer  Admitted, then engine frames
//
// Each side asks AdmitPeer about the peer's incarnation once the peer's proof verified
// and sends Admitted as it establishes; the dialer establishes first, so the
// acceptor's Admitted is an ordinary post-handshake control frame to it. Without a
// cluster secret on both sides there are no proofs: the Hellos complete the handshake
// (the acceptor admits the dialer before it answers with its Hello and Admitted, the
// dialer admits the acceptor on its Hello). Anything out of this order closes the
// connection.
func (t *TCPTransport) onHandshake(c gnet.Conn, cs *connState, hdr FrameHeader, body []byte) gnet.Action {
	switch {
	case hdr.Type != TypeControl:
	case cs.stage == stageHello && hdr.Group == ctlHello:
		return t.onHello(c, cs, body)
	case cs.stage == stageProof && hdr.Group == ctlProof:
		return t.onProof(c, cs, body)
	}
	return t.reject(cs, "frame before "+cs.stage.String(), ErrUnexpectedFrame)
}

// onHello checks the peer's Hello. On the accepting side it answers with this node's
// Hello and, with a secret, its proof. Without a secret the Hello is all the peer will
// show: it is admitted (AdmitPeer) or refused here, and on admission either side is
// established; with a secret, each waits for the peer's proof.
func (t *TCPTransport) onHello(c gnet.Conn, cs *connState, body []byte) gnet.Action {
	hl, err := decodeHello(body)
	if err != nil {
		return t.reject(cs, "malformed hello", err)
	}
	if hl.Protocol != ProtocolVersion {
		return t.refuse(cs, "unsupported protocol version", zap.Uint32("protocol", hl.Protocol),
			zap.Uint32("supported", ProtocolVersion))
	}
	if hl.ClusterID != t.opts.ClusterID {
		return t.reject(cs, "wrong cluster id in hello", ErrWrongCluster)
	}
	cs.claimed.Store(uint64(hl.NodeID))
	p := t.peers[hl.NodeID] // nil for non-members and for this node itself
	if p == nil {
		return t.refuse(cs, "unknown node id")
	}
	if cs.outbound {
		if p != cs.peer {
			return t.refuse(cs, "hello from an unexpected node")
		}
	} else if !p.dialsUs() {
		// The lower ID dials; a connection the other way would be a second path
		// that breaks per-peer ordering (or a confused or hostile peer).
		return t.refuse(cs, "wrong direction")
	}
	if hl.Auth != t.auth {
		// Never fall back to the weaker mode: a side with a secret accepts nothing
		// but a verified proof, whoever proposes otherwise.
		t.stats.authFailures.Add(1)
		return t.refuse(cs, "authentication mismatch", zap.Error(ErrAuthMismatch),
			zap.Bool("secret_set", t.auth != authNone), zap.Uint8("peer_auth", hl.Auth))
	}
	cs.peerNonce = hl.Nonce
	cs.peerIncarnation = hl.Incarnation
	cs.peer = p // outbound: already p
	if t.auth == authNone {
		// Refused here, the acceptor has not even answered the Hello.
		if act := t.admit(cs); act != gnet.None {
			return act
		}
	}
	var reply []byte
	if !cs.outbound {
		newNonce(&cs.nonce)
		reply = appendHelloFrame(nil, t.opts.ClusterID, t.opts.NodeID, &cs.nonce, t.auth, t.opts.Incarnation)
		if t.auth != authNone {
			// The acceptor proves first: the dialer then gives out a proof only to a
			// node that holds the secret, never to whoever it reached.
			reply = appendProofFrame(reply, t.opts.ClusterID, t.proofFor(cs, labelAcceptor))
		}
	}
	if t.auth == authNone {
		// Admitted goes out before establish schedules any flush, so it is the first
		// frame after the Hellos.
		reply = appendAdmittedFrame(reply, t.opts.ClusterID)
	}
	if _, err := c.Write(reply); err != nil {
		return gnet.Close // gnet has closed c already; OnClose ran
	}
	if t.auth == authNone {
		t.establish(c, cs, p)
		return gnet.None
	}
	cs.stage = stageProof
	return gnet.None
}

// onProof verifies the peer's proof and asks AdmitPeer about the peer's incarnation.
// The dialer answers an admitted peer with its own proof; both sides are established
// once the peer's proof verified and AdmitPeer agreed, so no engine frame is accepted
// from, or sent to, a peer that has not proved the secret on this connection or whose
// incarnation is refused. Each side's Admitted frame follows right away.
func (t *TCPTransport) onProof(c gnet.Conn, cs *connState, body []byte) gnet.Action {
	pr, err := decodeProof(body)
	if err != nil {
		return t.reject(cs, "malformed proof", err)
	}
	label := labelDialer // the label the peer must have used
	if cs.outbound {
		label = labelAcceptor
	}
	want := t.proofFor(cs, label)
	if !hmac.Equal(pr.MAC[:], want[:]) {
		t.stats.authFailures.Add(1)
		return t.refuse(cs, "authentication failed", zap.Error(ErrAuthFailed))
	}
	if act := t.admit(cs); act != gnet.None {
		return act // a dialer's proof is not sent yet: a refused acceptor gets nothing
	}
	var reply []byte
	if cs.outbound {
		reply = appendProofFrame(nil, t.opts.ClusterID, t.proofFor(cs, labelDialer))
	}
	// Written before establish schedules any flush, and on this loop like every write
	// to c, so the peer reads the proof and Admitted before the first engine frame.
	if _, err := c.Write(appendAdmittedFrame(reply, t.opts.ClusterID)); err != nil {
		return gnet.Close
	}
	t.establish(c, cs, cs.peer)
	return gnet.None
}

// admit asks Options.AdmitPeer whether the authenticated peer of cs, with the
// incarnation its Hello announced, may connect. A refusal is an operator's problem
// (most likely a node back under its old ID with a wiped disk), so it is logged at
// Error level, not Warn, and counted in PeersRefused.
func (t *TCPTransport) admit(cs *connState) gnet.Action {
	if t.opts.AdmitPeer == nil {
		return gnet.None
	}
	err := t.opts.AdmitPeer(cs.peer.id, cs.peerIncarnation)
	if err == nil {
		return gnet.None
	}
	cs.refused.Store(true)
	t.stats.connsRefused.Add(1)
	t.stats.peersRefused.Add(1)
	t.log.Error("refused connection", zap.String("reason", "peer not admitted"),
		zap.Uint64("peer", uint64(cs.peer.id)), zap.Uint64("peer_incarnation", cs.peerIncarnation),
		zap.Uint64("incarnation", t.opts.Incarnation), zap.String("remote", cs.remote),
		zap.Bool("outbound", cs.outbound), zap.Error(err))
	return gnet.Close
}

// dialsUs reports whether p is the side that dials this node.
func (p *peer) dialsUs() bool { return p.id < p.t.opts.NodeID }

// establish makes c the peer's connection and flushes what was queued meanwhile. It
// runs on c's loop. If the peer already had a connection, the newer one wins: the
// old one is most likely half-open from before the peer restarted.
func (t *TCPTransport) establish(c gnet.Conn, cs *connState, p *peer) {
	now := time.Now()
	cs.peer = p
	cs.lastRecv.Store(now.UnixNano())
	cs.established.Store(true)

	p.mu.Lock()
	old := p.conn
	p.conn = c
	p.unreachable = false
	p.lastSend = now
	p.outbound.Store(0)
	if len(p.buf) > 0 {
		p.scheduleFlushLocked()
	}
	p.mu.Unlock()

	t.stats.connsOpened.Add(1)
	fields := []zap.Field{zap.Uint64("peer", uint64(p.id)), zap.String("remote", cs.remote),
		zap.Bool("outbound", cs.outbound)}
	if old != nil {
		_ = old.Close()
		fields = append(fields, zap.Bool("replaced", true))
	}
	t.log.Info("peer connected", fields...)
}

// reject closes a connection over a bad frame: a decode error, a wrong cluster, a
// frame out of place. Before the handshake that is also a refusal.
func (t *TCPTransport) reject(cs *connState, reason string, err error) gnet.Action {
	t.stats.decodeErrors.Add(1)
	return t.refuse(cs, reason, zap.Error(err))
}

// refuse logs why the connection closes and asks gnet to close it. A refusal names
// the node the peer claimed to be (once its Hello said) and, outbound, the one dialed.
func (t *TCPTransport) refuse(cs *connState, reason string, fields ...zap.Field) gnet.Action {
	cs.refused.Store(true)
	fields = append(fields, zap.String("reason", reason), zap.String("remote", cs.remote))
	if cs.established.Load() {
		t.log.Warn("closing connection", append(fields, zap.Uint64("peer", uint64(cs.peer.id)))...)
		return gnet.Close
	}
	t.stats.connsRefused.Add(1)
	if claimed := cs.claimed.Load(); claimed != 0 {
		fields = append(fields, zap.Uint64("claimed", claimed))
	}
	if cs.outbound {
		fields = append(fields, zap.Uint64("dialed", uint64(cs.peer.id)))
	}
	t.log.Warn("refused connection", fields...)
	return gnet.Close
}
