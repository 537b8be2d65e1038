package netio

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/multipaxos/engine/ids"
)

// Options configure a TCPTransport. Zero values take the documented defaults
// (withDefaults); validate then reports every remaining violation at once.
type Options struct {
	// NodeID is this node. Must be non-zero and a key of Peers.
	NodeID ids.NodeID
	// ClusterID is stamped on every frame; frames and Hellos with another value are
	// refused. Must be non-zero, so that a forgotten setting is caught.
	ClusterID uint64
	// ClusterSecret authenticates peers: on every connection both sides prove that
	// they hold it (challenge-response, HMAC-SHA256; the secret never goes on the
	// wire), and a peer that cannot is refused before any of its frames reaches the
	// Handler. Every member must have the same secret, at least ClusterSecretBytesMin
	// (16) bytes, random (e.g. 32 bytes from crypto/rand). StartTCP keeps a copy.
	//
	// Empty means no authentication: anyone who can reach ListenAddr can join as a
	// member. That is for loopback tests only, and StartTCP logs a warning saying so.
	// A node with a secret and one without refuse each other.
	ClusterSecret []byte
	// ListenAddr is the host:port the listener binds (inbound peer connections).
	ListenAddr string
	// Peers maps every member, this node included, to its host:port. The entry for
	// NodeID is ignored for dialing. The set is fixed for the transport's life.
	Peers map[ids.NodeID]string
	// Handler receives every accepted engine frame (type >= 1). Required.
	Handler Handler

	// Incarnation identifies this node's store: random, chosen when the store was
	// created, so that a node back under its old NodeID with an empty disk (having
	// forgotten its promises) differs from the node its peers knew. It is sent in every
	// Hello and, with a ClusterSecret, covered by both proofs. Zero means unknown (tests
	// that do not care). Only TCPTransport carries it; MemNetwork has no handshake.
	Incarnation uint64
	// AdmitPeer decides whether a peer may connect, given the incarnation its Hello
	// announced. It is called once per connection, after the peer is authenticated
	// (with a ClusterSecret: once its proof verified; without: once its Hello passed
	// the checks) and before the connection is established: before any engine frame
	// of the peer reaches the Handler, before anything queued for it is sent and, on
	// the dialing side, before this node sends its own proof, so a refused peer gets
	// nothing. A non-nil error refuses the connection: it is logged at Error level
	// with the peer, both incarnations and the error, and counted in
	// Stats.ConnsRefused and Stats.PeersRefused. The peer will reconnect and be asked
	// again. nil admits every peer.
	//
	// It runs on an event loop, so it stalls every connection of that loop while it
	// runs. It may block briefly (a synced disk write on the first sight of a peer,
	// which is rare); it must not wait on the network, on Send's peers or on Close.
	// With EventLoops > 1 it may be called concurrently.
	AdmitPeer func(peer ids.NodeID, incarnation uint64) error
	// OnAdmitted is called when the peer tells us, on an established connection, that
	// its AdmitPeer accepted this node's Incarnation (the admitted control frame; each
	// side sends it once per connection, right after establishing). It is called at
	// most once per connection, possibly again on every reconnect. It runs on an event
	// loop and must not block. nil = not told.
	OnAdmitted func(peer ids.NodeID)
	// Logger receives connection-level events (refusals with reason and remote
	// address, connects, disconnects). nil = no logging. gnet logs through
	// Logger.Named("gnet"); note that gnet's logger is process-global, so with several
	// transports in one process the most recently started one's logger wins.
	Logger *zap.Logger

	// MaxFrameBytes bounds one whole frame on the wire (prefix, header and body), in
	// bytes. Default 16 MiB. A peer sending a larger one is disconnected; Send drops
	// bodies that would make a larger one.
	MaxFrameBytes int
	// PeerQueueBytesMax bounds the unsent bytes per peer, in bytes: frames queued in
	// netio plus bytes buffered in gnet for the connection. Default 64 MiB. Must be at
	// least MaxFrameBytes. Over it, Send drops (reason QueueFull).
	PeerQueueBytesMax int
	// DialTimeout bounds one TCP connect to a peer. Default 1 s.
	DialTimeout time.Duration
	// ReconnectMin and ReconnectMax bound the redial backoff (doubling, with jitter
	// between half and all of the current step). Defaults 50 ms and 2 s.
	ReconnectMin, ReconnectMax time.Duration
	// HandshakeTimeout is how long a new connection may take to complete the
	// handshake (Hellos and, with a ClusterSecret, proofs) before it is closed.
	// Default 3 s.
	HandshakeTimeout time.Duration
	// ConnectionsMax bounds the connections open at once, inbound and outbound,
	// established or not. A member needs one per peer (two while one replaces the
	// other); beyond the bound, new inbound connections are closed at once, so a
	// flood of strangers costs at most that many sockets, each for at most
	// HandshakeTimeout. Default 2 x peers + 32.
	ConnectionsMax int
	// KeepaliveInterval: a connected peer that has been sent nothing for this long is
	// sent a keepalive frame. Default 1 s.
	KeepaliveInterval time.Duration
	// IdleTimeout: a connection that has received nothing (not even a keepalive) for
	// this long is closed as dead. Default 10 s; must exceed 2 x KeepaliveInterval.
	IdleTimeout time.Duration
	// UnreachableAfter: frames to a peer that has no connection are kept (up to
	// PeerQueueBytesMax) and sent once it connects, but only for this long; after it
	// the queue is discarded (reason Lost) and Send drops (reason Unreachable) until
	// the peer connects again. Default 2 s.
	UnreachableAfter time.Duration
	// EventLoops is the number of gnet event loops carrying all connections. Default 1.
	EventLoops int
}

// Defaults, each with its unit in the name of the field it fills.
const (
	DefaultPeerQueueBytesMax = 64 << 20
	DefaultDialTimeout       = time.Second
	DefaultReconnectMin      = 50 * time.Millisecond
	DefaultReconnectMax      = 2 * time.Second
	DefaultHandshakeTimeout  = 3 * time.Second
	DefaultKeepaliveInterval = time.Second
	DefaultIdleTimeout       = 10 * time.Second
	DefaultUnreachableAfter  = 2 * time.Second
	DefaultEventLoops        = 1

	maxEventLoops = 256
)

// ErrInvalidOptions matches (errors.Is) the error StartTCP returns for bad options.
var ErrInvalidOptions = errors.New("netio: invalid options")

// OptionsError lists every violation found in one Options value.
type OptionsError struct {
	Problems []string
}

func (e *OptionsError) Error() string {
	return "netio: invalid options: " + strings.Join(e.Problems, "; ")
}

func (e *OptionsError) Is(target error) bool { return target == ErrInvalidOptions }

// withDefaults returns o with every zero field set to its default. It never fails and
// never changes a value the caller set, however wrong; validate judges those.
func (o Options) withDefaults() Options {
	if o.MaxFrameBytes == 0 {
		o.MaxFrameBytes = DefaultMaxFrameBytes
	}
	if o.PeerQueueBytesMax == 0 {
		o.PeerQueueBytesMax = max(DefaultPeerQueueBytesMax, o.MaxFrameBytes)
	}
	setDur := func(d *time.Duration, def time.Duration) {
		if *d == 0 {
			*d = def
		}
	}
	setDur(&o.DialTimeout, DefaultDialTimeout)
	setDur(&o.ReconnectMin, DefaultReconnectMin)
	setDur(&o.ReconnectMax, max(DefaultReconnectMax, o.ReconnectMin))
	setDur(&o.HandshakeTimeout, DefaultHandshakeTimeout)
	setDur(&o.KeepaliveInterval, DefaultKeepaliveInterval)
	setDur(&o.IdleTimeout, max(DefaultIdleTimeout, 10*o.KeepaliveInterval))
	setDur(&o.UnreachableAfter, DefaultUnreachableAfter)
	if o.ConnectionsMax == 0 {
		o.ConnectionsMax = 2*len(o.Peers) + 32
	}
	if o.EventLoops == 0 {
		o.EventLoops = DefaultEventLoops
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	return o
}

// validate reports every violation in o (after withDefaults) with the field and bound.
func (o Options) validate() error {
	var p []string
	bad := func(format string, args ...any) { p = append(p, fmt.Sprintf(format, args...)) }

	if o.NodeID == 0 {
		bad("NodeID must be non-zero")
	}
	if o.ClusterID == 0 {
		bad("ClusterID must be non-zero")
	}
	if n := len(o.ClusterSecret); n > 0 && n < ClusterSecretBytesMin {
		// The length only: the secret itself must never reach an error or a log.
		bad("ClusterSecret is %d bytes, must be at least %d (or empty, for no authentication)", n, ClusterSecretBytesMin)
	}
	if _, _, err := net.SplitHostPort(o.ListenAddr); err != nil {
		bad("ListenAddr %q is not host:port: %v", o.ListenAddr, err)
	}
	if o.Handler == nil {
		bad("Handler is required")
	}
	if _, ok := o.Peers[o.NodeID]; !ok && o.NodeID != 0 {
		bad("Peers must contain this node (%d)", o.NodeID)
	}
	peerIDs := make([]ids.NodeID, 0, len(o.Peers))
	for id := range o.Peers {
		peerIDs = append(peerIDs, id)
	}
	sort.Slice(peerIDs, func(i, j int) bool { return peerIDs[i] < peerIDs[j] })
	for _, id := range peerIDs {
		addr := o.Peers[id]
		if id == 0 {
			bad("Peers has node ID 0")
			continue
		}
		if id == o.NodeID {
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			bad("Peers[%d] %q is not host:port: %v", id, addr, err)
		}
	}
	if o.MaxFrameBytes < helloFrameBytesMax || uint64(o.MaxFrameBytes) > maxWireFrameBytes {
		bad("MaxFrameBytes %d must be in [%d, %d]", o.MaxFrameBytes, helloFrameBytesMax, uint64(maxWireFrameBytes))
	}
	if o.PeerQueueBytesMax < o.MaxFrameBytes {
		bad("PeerQueueBytesMax %d must be >= MaxFrameBytes %d", o.PeerQueueBytesMax, o.MaxFrameBytes)
	}
	positive := func(name string, d time.Duration) {
		if d <= 0 {
			bad("%s %v must be > 0", name, d)
		}
	}
	positive("DialTimeout", o.DialTimeout)
	positive("ReconnectMin", o.ReconnectMin)
	positive("HandshakeTimeout", o.HandshakeTimeout)
	positive("KeepaliveInterval", o.KeepaliveInterval)
	positive("UnreachableAfter", o.UnreachableAfter)
	if o.ReconnectMax < o.ReconnectMin {
		bad("ReconnectMax %v must be >= ReconnectMin %v", o.ReconnectMax, o.ReconnectMin)
	}
	if o.IdleTimeout <= 2*o.KeepaliveInterval {
		bad("IdleTimeout %v must be > 2 x KeepaliveInterval %v", o.IdleTimeout, o.KeepaliveInterval)
	}
	if o.EventLoops < 1 || o.EventLoops > maxEventLoops {
		bad("EventLoops %d must be in [1, %d]", o.EventLoops, maxEventLoops)
	}
	if len(p) > 0 {
		return &OptionsError{Problems: p}
	}
	return nil
}
