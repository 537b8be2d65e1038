// Package netio is the node's network: framing, the peer handshake, one TCP
// connection per peer pair carrying every group, reconnects, per-peer write batching
// and back-pressure, all on one gnet engine. MemNetwork provides the same Transport in
// memory with injected faults, for tests and the deterministic simulation.
//
// # Frames
//
// Every frame is [u32 length][u8 version][u64 cluster][u32 group][u8 type][body]
// (frame.go). Type 0 is netio's own (Hello, proof, admitted, keepalive); types 1..255 belong to
// the engine and reach the Handler with the group they were sent in. A frame that fails a
// check (length over MaxFrameBytes or under the header, unknown version, another
// cluster, a frame out of place) closes its connection with a logged reason and never
// reaches the Handler.
//
// # Connections and the handshake
//
// For each pair of members the one with the lower NodeID dials the higher and both use
// that connection in both directions, so there is exactly one ordered path per pair.
// With a ClusterSecret the handshake is a mutual challenge-response (control.go,
// auth.go); D is the dialer, A the acceptor:
//
//	D -> A  Hello {protocol, cluster, node D, nonce D, auth, incarnation D}
//	A -> D  Hello {protocol, cluster, node A, nonce A, auth, incarnation A}, Proof{MAC_A}
//	D -> A  Proof{MAC_D}, Admitted, then engine frames
//	A -> D  Admitted, then engine frames
//
//	MAC_x = HMAC-SHA256(secret, "multipaxos-netio-v1\x00" | label_x | cluster |
//	                    node D | node A | nonce D | nonce A |
//	                    incarnation D | incarnation A)
//
// with label_A = "acceptor->dialer", label_D = "dialer->acceptor" and integers as
// big-endian u64. Nonces are 32 bytes from crypto/rand, fresh per connection and side.
// What each step proves:
//
//   - D's Hello claims a member, the cluster and the protocol; A checks those (cluster,
//     membership, direction, same auth mode) before it answers at all, so a stranger
//     that does not name a member learns nothing.
//   - MAC_A proves to D that A holds the secret now: it covers D's fresh nonce, so it
//     cannot have been recorded earlier. D verifies it before it proves anything
//     itself, so D never hands a proof to a node that does not hold the secret.
//   - MAC_D proves the same to A over A's fresh nonce: a replayed handshake fails
//     because A's nonce differs. The labels differ, so neither side's proof can be
//     reflected back as the other's; both node IDs and the cluster are covered, so a
//     proof is good for one pair in one cluster on one connection only.
//   - Both incarnations are covered too, so whoever can alter a Hello on the path
//     cannot plant a false incarnation (which would make peers refuse the real node).
//
// A side is established (the peer registered, its frames delivered to the Handler,
// frames queued for it flushed) only after the peer's proof verified (hmac.Equal) and
// AdmitPeer accepted the peer's incarnation (see below).
// Until then frames are limited to 1 KiB and must be exactly the handshake frame due;
// anything else, a malformed or failing proof, or not finishing within
// HandshakeTimeout closes the connection, counted in Stats.ConnsRefused (and
// AuthFailures when the proof failed) and logged with the reason, the remote address
// and the node the peer claimed to be. The secret never goes on the wire.
//
// Without a secret (loopback tests only; StartTCP warns) the Hellos alone complete the
// handshake, nothing is authenticated and there are no proofs. The Hello carries the
// auth mode so that the two sides agree: a node with a secret and one without refuse
// each other ("authentication mismatch"), never falling back to no authentication.
// A peer of another protocol version (version 1 had no nonce and no proof, version 2
// no incarnation) is refused by name in both directions.
//
// This authenticates the peer at connect time; it does not encrypt or protect the
// frames after the handshake, so an attacker on the path can still read or alter
// traffic. Run peers on a private network or through a tunnel (WireGuard, stunnel).
//
// # Incarnations
//
// Each node's store has a random 64-bit incarnation (Options.Incarnation, 0 for
// unknown), chosen when the store is created. A node back under its old NodeID with a
// wiped disk has a new one, and has forgotten its Paxos promises: peers that knew the
// old incarnation must refuse it. netio only carries and checks it: every Hello
// carries the sender's, and Options.AdmitPeer judges the peer's once per connection,
// after the peer authenticated (its proof verified; without a secret, its Hello
// passed the checks) and before the connection is established. The dialer asks
// before it sends its own proof, and without a secret the acceptor asks before it
// answers the Hello, so a refused peer gets nothing. A refusal closes the connection
// and is logged at Error level (an operator must act) with both incarnations, and
// counted in Stats.PeersRefused; the peer keeps redialing with backoff and is asked
// each time. With a secret the proofs cover both incarnations; without one nothing,
// the incarnation included, is authenticated.
//
// Each side that established the connection sends Admitted (empty body, once per
// connection) as its first frame after the handshake; receiving it calls
// Options.OnAdmitted, which is how a node with a fresh store learns which peers have
// accepted it. The dialer establishes before the acceptor has checked its proof, so to
// the dialer the acceptor's Admitted is an ordinary control frame on an established
// connection; it may never come, if the acceptor refuses. Admitted before the
// handshake completes, a second one, or one with a body closes the connection.
//
// Incarnation checks are TCP-only: MemNetwork has no handshake, so it neither carries
// incarnations nor calls AdmitPeer or OnAdmitted.
//
// If a peer connects again while its old connection still looks alive, the newer one
// wins (the old one is most likely half-open from before a restart); with a secret
// only a peer that proved it can displace a connection.
//
// # Threading model
//
// One gnet engine carries the listener's connections and, through Engine.Register, the
// connections this node dials, by default on a single event loop (EventLoops for
// more). Per goroutine:
//
//   - Event loop(s): OnOpen, OnTraffic, OnClose, the flush tasks, the Handler,
//     AdmitPeer and OnAdmitted. The loop decodes frames and calls the Handler, which
//     must not block (AdmitPeer may, briefly: it is rare, once per connection). With one loop,
//     all network work of the node is serial; with several, the Handler runs
//     concurrently on each.
//   - Any goroutine: Send, Stats, Connected and Close (Close not from the Handler).
//     Send only appends to the peer's queue under the peer's mutex and, when no flush
//     is pending, schedules one flush task with EventLoop.Execute; it never blocks on
//     the network or the loop.
//   - gnet's ticker goroutine (every 100 ms): handshake and idle timeouts, keepalives,
//     the unreachable grace period. It uses only the concurrency-safe Conn methods.
//   - One dialer goroutine per higher-ID peer: connect with DialTimeout (gnet has no
//     dial timeout), hand the socket to the engine, wait for the registration result
//     (which can never be awaited on a loop: it waits for OnOpen on that loop), then
//     wait for the connection to close and redial with jittered exponential backoff.
//
// Close stops the dialers first (while the loops still run, so a registration in
// flight completes), then the engine, and returns only when gnet.Run has returned:
// no goroutine of netio remains. gnet's process-global worker pool (ants), which
// Register uses to hand sockets over, keeps its own idle workers for a few seconds.
//
// # Write batching and back-pressure
//
// Frames for a peer are encoded straight into one contiguous per-peer buffer. The first
// Send after a flush schedules a flush task on the connection's loop; the task swaps
// the buffer out and writes all of it with one Conn.Write, so every frame queued while
// the task was pending shares one syscall. All writes to a connection happen on its
// loop, which keeps one send path and therefore one order: frames to a peer arrive in
// the order Send accepted them, or not at all.
//
// gnet has no back-pressure of its own (its buffers are unbounded). A peer's unsent
// bytes are counted as its queue plus gnet's OutboundBuffered() for the connection,
// sampled on the loop after each flush; Send drops the frame (Stats.Dropped.QueueFull)
// when that would exceed PeerQueueBytesMax. The sample can be stale-high after gnet has
// drained, so a refused Send, and the ticker, schedule a flush that refreshes it.
//
// # Disconnected peers
//
// Frames sent while a peer has no connection are kept (within PeerQueueBytesMax) and
// sent right after the next handshake, so a short reconnect loses nothing queued. If
// the peer stays disconnected for UnreachableAfter, the queue is discarded
// (Dropped.Lost) and Sends are dropped (Dropped.Unreachable) until it connects again:
// stale protocol messages are not worth sending late, and Paxos retries. Bytes already
// handed to gnet when a connection breaks are lost with it. Receivers must tolerate
// duplicates and gaps (the protocol deduplicates).
package netio
