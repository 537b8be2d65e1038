package netio

import (
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
	t.conns[cs] = c
	t.mu.Unlock()
	if cs.outbound {
		// The dialer speaks first; the acceptor answers only a valid Hello, so a
		// stranger learns nothing about this node before proving who it is.
		return t.hello, gnet.None
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
	if cs.outbound && !cs.established.Load() && !t.closed.Load() {
		// The acceptor logs why it refused; here only the fact is worth a line.
		t.log.Debug("outbound connection closed before the handshake", zap.Uint64("peer", uint64(cs.peer.id)),
			zap.String("remote", cs.remote), zap.Error(err))
	}
	if cs.closed != nil {
		close(cs.closed) // wakes the dialer
	}
	return gnet.None
}

// OnTraffic decodes every complete frame in the inbound buffer. A partial frame stays
// in gnet's buffer until more bytes arrive; the checks on its prefix (length,
// version) run first, so a hostile length is refused before anything is buffered for
// it. Until the Hello is accepted the frame limit is the Hello's small one.
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
			if act := t.onHello(c, cs, hdr, body); act != gnet.None {
				return act // c is closing: do not touch its buffers again
			}
		case hdr.Type == TypeControl:
			if hdr.Group == ctlHello {
				return t.reject(cs, "second hello", ErrUnexpectedFrame)
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

// onHello checks the first frame of a connection. On the accepting side it answers
// with this node's Hello; either side then installs the connection as the peer's.
func (t *TCPTransport) onHello(c gnet.Conn, cs *connState, hdr FrameHeader, body []byte) gnet.Action {
	if hdr.Type != TypeControl || hdr.Group != ctlHello {
		return t.reject(cs, "frame before hello", ErrUnexpectedFrame)
	}
	hl, err := decodeHello(body)
	if err != nil {
		return t.reject(cs, "malformed hello", err)
	}
	if hl.Protocol != ProtocolVersion {
		return t.refuse(cs, "unsupported protocol version", zap.Uint32("protocol", hl.Protocol))
	}
	if hl.ClusterID != t.opts.ClusterID {
		return t.reject(cs, "wrong cluster id in hello", ErrWrongCluster)
	}
	p := t.peers[hl.NodeID] // nil for non-members and for this node itself
	if p == nil {
		return t.refuse(cs, "unknown node id", zap.Uint64("claimed", uint64(hl.NodeID)))
	}
	if cs.outbound {
		if p != cs.peer {
			return t.refuse(cs, "hello from an unexpected node",
				zap.Uint64("claimed", uint64(hl.NodeID)), zap.Uint64("dialed", uint64(cs.peer.id)))
		}
	} else {
		if !p.dialsUs() {
			// The lower ID dials; a connection the other way would be a second path
			// that breaks per-peer ordering (or a confused or hostile peer).
			return t.refuse(cs, "wrong direction", zap.Uint64("claimed", uint64(hl.NodeID)))
		}
		if _, err := c.Write(t.hello); err != nil {
			return gnet.Close // gnet has closed c already; OnClose ran
		}
	}
	t.establish(c, cs, p)
	return gnet.None
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

// refuse logs why the connection closes and asks gnet to close it.
func (t *TCPTransport) refuse(cs *connState, reason string, fields ...zap.Field) gnet.Action {
	fields = append(fields, zap.String("reason", reason), zap.String("remote", cs.remote))
	if cs.established.Load() {
		t.log.Warn("closing connection", append(fields, zap.Uint64("peer", uint64(cs.peer.id)))...)
	} else {
		t.stats.connsRefused.Add(1)
		t.log.Warn("refused connection", fields...)
	}
	return gnet.Close
}
