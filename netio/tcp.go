package netio

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
	"go.uber.org/zap"

	"github.com/multipaxos/engine/ids"
)

// tickInterval paces the housekeeping run from gnet's ticker goroutine: handshake and
// idle timeouts, keepalives, the unreachable grace period and refreshing the
// back-pressure gauge. It bounds how late those fire, not any protocol timing.
const tickInterval = 100 * time.Millisecond

// spareBytesMax: a peer keeps its drained queue buffer for reuse only up to this
// capacity, so that one burst does not pin a large buffer for the process's life.
const spareBytesMax = 1 << 20

// TCPTransport is the node's network: one gnet engine whose event loops carry the
// inbound listener's connections and the outbound connections this node dials. See
// the package documentation for the threading model.
type TCPTransport struct {
	opts    Options // after withDefaults; read-only
	log     *zap.Logger
	auth    uint8                // authentication mode this node requires and offers
	peers   map[ids.NodeID]*peer // every member but this node; the map is read-only
	order   []*peer              // peers by ID, for deterministic sweeps
	maxBody int
	stats   counters

	eng     gnet.Engine   // set in OnBoot, before ready is closed
	ready   chan struct{} // closed by the first OnTick: the loops exist
	once    sync.Once     // closes ready
	runDone chan struct{} // closed when gnet.Run has returned
	runErr  error         // gnet.Run's result; read after runDone

	ctx    context.Context // cancelled by Close; dialers stop on it
	cancel context.CancelFunc
	dialWG sync.WaitGroup

	// mu guards conns: every open connection, for the sweeps of the ticker, which
	// must not touch gnet.Conn's loop-only methods.
	mu    sync.Mutex
	conns map[*connState]gnet.Conn

	closeOnce sync.Once
	closed    atomic.Bool
	closeErr  error
}

// connState is a connection's Context(). Fields without a note are loop-only.
type connState struct {
	outbound bool
	// peer is the dialed member (outbound) or, inbound, the member whose Hello was
	// accepted. Written before established is set; readable off the loop after
	// established.Load() returns true.
	peer   *peer
	remote string    // remote address for logs; set in OnOpen, then read-only
	opened time.Time // set in OnOpen, before the state is published in t.conns

	// Handshake state (see onHandshake).
	stage     handshakeStage   // the handshake frame due next
	nonce     [nonceBytes]byte // ours on this connection
	peerNonce [nonceBytes]byte // from the peer's Hello
	// peerIncarnation is the peer's Incarnation from its Hello; AdmitPeer judges it.
	peerIncarnation uint64
	// claimed is the node ID the peer's Hello named (0 before it), for the logs of a
	// refusal; atomic because the ticker's handshake timeout logs it too.
	claimed atomic.Uint64
	// refused: this node closes the connection on purpose and has logged why, so
	// OnClose need not guess. Set by the loop or the ticker.
	refused atomic.Bool

	established atomic.Bool  // the handshake completed (and the peer's proof verified)
	lastRecv    atomic.Int64 // unix nanos of the last OnTraffic, for the idle sweep
	closed      chan struct{}

	// peerAdmitted: the peer sent ctlAdmitted on this connection (its AdmitPeer
	// accepted us). Set on the loop; the dialer reads it after the connection closed.
	peerAdmitted atomic.Bool
}

// handshakeStage is the frame a connection must receive next before it is established.
type handshakeStage uint8

const (
	stageHello handshakeStage = iota // the peer's Hello
	stageProof                       // the peer's proof (only with a cluster secret)
)

func (s handshakeStage) String() string {
	if s == stageProof {
		return "proof"
	}
	return "hello"
}

// peer is one remote member and its outbound queue.
//
// Write batching: Send appends the encoded frame to buf under mu and, if no flush is
// pending, schedules exactly one flush task on the connection's event loop. The task
// takes the whole buffer and writes it with one Conn.Write, so frames sent while a
// flush was pending share its syscall. All writes to a connection happen on its loop
// (OnOpen's Hello, the acceptor's Hello and proof, the dialer's proof, the admitted
// frame each side writes as it establishes, flush tasks),
// which is one send path and therefore one order.
type peer struct {
	t     *TCPTransport
	id    ids.NodeID
	addr  string
	dials bool // this node has the lower ID and dials the connection

	// outbound is gnet's OutboundBuffered() for conn as of the last flush. Written on
	// the loop, read by Send for back-pressure. It can be stale-high once gnet has
	// drained; a Send that it would refuse schedules a flush to refresh it.
	outbound atomic.Int64

	mu           sync.Mutex
	conn         gnet.Conn // established connection; nil while disconnected
	closed       bool      // the transport is closing: schedule nothing more
	unreachable  bool      // disconnected for longer than UnreachableAfter
	downSince    time.Time // when conn last became nil (or the transport started)
	lastSend     time.Time // last flush that wrote bytes; drives keepalives
	buf          []byte    // queued frames, back to back, not yet handed to gnet
	spare        []byte    // a drained buffer kept for reuse
	queuedFrames uint64    // engine frames in buf
	flushPending bool      // a flush task is scheduled (for flushFor)
	flushFor     gnet.Conn
}

// StartTCP validates opts, binds the listener and starts the engine and the dialers. It
// returns once the listener is bound and the event loops run; a bind error is returned.
// Without a ClusterSecret it logs a warning that peers are not authenticated.
func StartTCP(opts Options) (*TCPTransport, error) {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	// Our own copy: the caller may reuse or wipe its slice.
	opts.ClusterSecret = bytes.Clone(opts.ClusterSecret)
	auth := authNone
	if len(opts.ClusterSecret) > 0 {
		auth = authHMACSHA256
	}
	now := time.Now()
	t := &TCPTransport{
		opts:    opts,
		log:     opts.Logger.Named("netio").With(zap.Uint64("node", uint64(opts.NodeID))),
		auth:    auth,
		peers:   make(map[ids.NodeID]*peer, len(opts.Peers)),
		maxBody: MaxBodyBytes(opts.MaxFrameBytes),
		ready:   make(chan struct{}),
		runDone: make(chan struct{}),
		conns:   make(map[*connState]gnet.Conn),
	}
	for id, addr := range opts.Peers {
		if id == opts.NodeID {
			continue
		}
		p := &peer{t: t, id: id, addr: addr, dials: opts.NodeID < id, downSince: now}
		t.peers[id] = p
		t.order = append(t.order, p)
	}
	sort.Slice(t.order, func(i, j int) bool { return t.order[i].id < t.order[j].id })
	t.ctx, t.cancel = context.WithCancel(context.Background())

	h := &loopHandler{t: t}
	go func() {
		defer close(t.runDone)
		t.runErr = gnet.Run(h, "tcp://"+opts.ListenAddr,
			gnet.WithNumEventLoop(opts.EventLoops),
			// Register is called long after start; RoundRobin's counter would race.
			gnet.WithLoadBalancing(gnet.LeastConnections),
			gnet.WithTicker(true),
			// A restarted node must rebind its port while old sockets sit in TIME_WAIT.
			gnet.WithReuseAddr(true),
			gnet.WithTCPNoDelay(gnet.TCPNoDelay),
			// gnet's logger is process-global and defaults to stdout: always pass ours.
			gnet.WithLogger(opts.Logger.Named("gnet").Sugar()),
		)
		select {
		case <-t.ready:
			if t.runErr != nil && !t.closed.Load() {
				t.log.Error("gnet engine stopped", zap.Error(t.runErr))
			}
		default: // StartTCP returns the error
		}
	}()
	select {
	case <-t.ready:
	case <-t.runDone:
		t.cancel()
		if t.runErr == nil {
			t.runErr = errors.New("engine stopped before it started")
		}
		return nil, fmt.Errorf("netio: start on %s: %w", opts.ListenAddr, t.runErr)
	}
	for _, p := range t.order {
		if p.dials {
			t.dialWG.Add(1)
			go t.dialLoop(p)
		}
	}
	if auth == authNone {
		t.log.Warn("NO CLUSTER SECRET: peers are not authenticated; anyone who can reach "+
			"the listen address can join as a member and inject protocol messages. "+
			"Set ClusterSecret on every node; run without it only for loopback tests",
			zap.String("listen", opts.ListenAddr))
	}
	t.log.Info("transport started", zap.String("listen", opts.ListenAddr),
		zap.Int("peers", len(t.order)), zap.Int("event_loops", opts.EventLoops),
		zap.Bool("authenticated", auth != authNone))
	return t, nil
}

// Send implements Transport.
func (t *TCPTransport) Send(to ids.NodeID, group ids.GroupID, typ uint8, body []byte) bool {
	p := t.peers[to]
	if p == nil || typ == TypeControl {
		t.stats.dropUnknownPeer.Add(1)
		return false
	}
	if len(body) > t.maxBody {
		t.stats.dropTooLarge.Add(1)
		return false
	}
	return p.enqueue(group, typ, body)
}

// Connected reports whether the connection to peer `to` has completed its handshake.
func (t *TCPTransport) Connected(to ids.NodeID) bool {
	p := t.peers[to]
	if p == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.conn != nil
}

// Stats implements Transport.
func (t *TCPTransport) Stats() Stats { return t.stats.snapshot() }

// Close implements Transport. It must not be called from the Handler (it waits for
// the event loops, and the Handler runs on one). Frames still queued are discarded;
// bytes already handed to gnet get a best-effort flush as gnet closes the connections.
func (t *TCPTransport) Close() error {
	t.closeOnce.Do(func() {
		t.closed.Store(true)
		// After this no Send or tick schedules work on a loop, so nothing can reach a
		// poller that the engine is closing.
		for _, p := range t.order {
			p.mu.Lock()
			p.closed = true
			p.buf, p.spare = nil, nil
			p.mu.Unlock()
		}
		// Dialers first: one may be inside Register, whose worker waits for OnOpen on
		// a loop. With the loops still running that wait ends; stopping the engine
		// first could strand it.
		t.cancel()
		t.dialWG.Wait()

		// Engine.Stop polls every 500 ms for the engine to finish, but gnet.Run
		// returns as soon as it has; wait for that and then release Stop.
		ctx, cancel := context.WithCancel(context.Background())
		stopErr := make(chan error, 1)
		go func() { stopErr <- t.eng.Stop(ctx) }()
		<-t.runDone
		cancel()
		if err := <-stopErr; err != nil && !errors.Is(err, context.Canceled) {
			t.log.Warn("engine stop", zap.Error(err))
		}
		// gnet.Run files every engine in a process-global registry (for its
		// deprecated package-level Stop) and only that Stop takes it out again: with
		// Engine.Stop alone, the engine - and through our handler this transport and
		// its node - would stay reachable for the life of the process. The engine
		// has stopped, so this only removes the entry.
		if err := gnet.Stop(context.Background(), "tcp://"+t.opts.ListenAddr); err != nil {
			t.log.Debug("gnet engine registry", zap.Error(err))
		}
		t.closeErr = t.runErr
		t.log.Info("transport closed")
	})
	return t.closeErr
}

// enqueue appends one frame to the peer's queue and makes sure a flush is scheduled.
func (p *peer) enqueue(group ids.GroupID, typ uint8, body []byte) bool {
	t := p.t
	size := FrameHeaderSize + len(body)
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.closed:
		t.stats.dropClosed.Add(1)
		return false
	case p.unreachable:
		t.stats.dropUnreachable.Add(1)
		return false
	case len(p.buf)+int(p.outbound.Load())+size > t.opts.PeerQueueBytesMax:
		// The gauge may be stale because gnet has drained since the last flush; the
		// flush refreshes it, so the next Send sees the truth.
		p.scheduleFlushLocked()
		t.stats.dropQueueFull.Add(1)
		return false
	}
	p.buf = AppendFrame(p.buf, t.opts.ClusterID, group, typ, body)
	if typ != TypeControl {
		p.queuedFrames++
	}
	p.scheduleFlushLocked()
	return true
}

// scheduleFlushLocked schedules one flush task on the connection's loop unless one is
// pending or there is no connection. Requires p.mu. Execute only enqueues a task and
// wakes the loop, so calling it under the lock cannot block on the loop.
func (p *peer) scheduleFlushLocked() {
	if p.flushPending || p.conn == nil || p.closed {
		return
	}
	p.flushPending, p.flushFor = true, p.conn
	if err := p.conn.EventLoop().Execute(context.Background(), p); err != nil {
		p.flushPending, p.flushFor = false, nil
	}
}

// Run is the flush task; it runs on flushFor's event loop.
func (p *peer) Run(context.Context) error {
	t := p.t
	p.mu.Lock()
	c := p.flushFor
	p.flushPending, p.flushFor = false, nil
	if c == nil {
		p.mu.Unlock()
		return nil
	}
	if p.conn != c {
		// The connection changed after scheduling. c's loop is not necessarily the new
		// connection's loop, so hand the work over instead of writing from here.
		if len(p.buf) > 0 {
			p.scheduleFlushLocked()
		}
		p.mu.Unlock()
		return nil
	}
	buf, frames := p.buf, p.queuedFrames
	p.buf, p.spare, p.queuedFrames = p.spare, nil, 0
	if len(buf) > 0 {
		p.lastSend = time.Now()
	}
	p.mu.Unlock()

	if len(buf) > 0 {
		// Write sends what the socket takes and copies the rest into gnet's outbound
		// buffer, so buf is free again when it returns. On error gnet has already
		// closed c (OnClose ran inside Write) and the frames are lost with it.
		if _, err := c.Write(buf); err != nil {
			return nil
		}
		t.stats.writes.Add(1)
		t.stats.framesSent.Add(frames)
		t.stats.bytesSent.Add(uint64(len(buf)))
	}
	p.outbound.Store(int64(c.OutboundBuffered()))

	if cap(buf) <= spareBytesMax {
		p.mu.Lock()
		if p.spare == nil && !p.closed {
			p.spare = buf[:0]
		}
		p.mu.Unlock()
	}
	return nil
}

// tick is the periodic housekeeping. It runs on gnet's ticker goroutine, which is not
// an event loop: it may only use concurrency-safe Conn methods (Close, EventLoop).
func (t *TCPTransport) tick(now time.Time) {
	if t.closed.Load() {
		return
	}
	type expired struct {
		c      gnet.Conn
		cs     *connState
		reason string
	}
	var exp []expired
	t.mu.Lock()
	for cs, c := range t.conns {
		switch {
		case !cs.established.Load():
			if now.Sub(cs.opened) > t.opts.HandshakeTimeout {
				exp = append(exp, expired{c, cs, "handshake timeout"})
			}
		case now.UnixNano()-cs.lastRecv.Load() > int64(t.opts.IdleTimeout):
			exp = append(exp, expired{c, cs, "idle timeout"})
		}
	}
	t.mu.Unlock()
	for _, e := range exp {
		e.cs.refused.Store(true)
		if e.cs.established.Load() {
			t.log.Warn("closing connection", zap.String("reason", e.reason),
				zap.String("remote", e.cs.remote), zap.Uint64("peer", uint64(e.cs.peer.id)))
		} else {
			t.stats.connsRefused.Add(1)
			fields := []zap.Field{zap.String("reason", e.reason), zap.String("remote", e.cs.remote)}
			if claimed := e.cs.claimed.Load(); claimed != 0 {
				fields = append(fields, zap.Uint64("claimed", claimed))
			}
			if e.cs.outbound { // peer was set before the state was published
				fields = append(fields, zap.Uint64("dialed", uint64(e.cs.peer.id)))
			}
			t.log.Warn("refused connection", fields...)
		}
		// Close is safe off the loop and harmless on a connection that already closed.
		_ = e.c.Close()
	}

	for _, p := range t.order {
		p.tick(now)
	}
}

func (p *peer) tick(now time.Time) {
	t := p.t
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	switch {
	case p.conn != nil:
		if len(p.buf) == 0 && now.Sub(p.lastSend) >= t.opts.KeepaliveInterval {
			p.buf = AppendFrame(p.buf, t.opts.ClusterID, ctlKeepalive, TypeControl, nil)
			p.lastSend = now // do not pile up keepalives behind a slow flush
			p.scheduleFlushLocked()
		} else if p.outbound.Load() > 0 {
			p.scheduleFlushLocked() // refresh the back-pressure gauge
		}
	case !p.unreachable && now.Sub(p.downSince) > t.opts.UnreachableAfter:
		p.unreachable = true
		if p.queuedFrames > 0 {
			t.stats.dropLost.Add(p.queuedFrames)
			t.log.Info("peer unreachable, discarding queue", zap.Uint64("peer", uint64(p.id)),
				zap.Uint64("frames", p.queuedFrames), zap.Int("bytes", len(p.buf)))
		}
		p.buf, p.spare, p.queuedFrames = nil, nil, 0
	}
}
