package netio

import (
	"sync/atomic"

	"github.com/multipaxos/engine/ids"
)

// Handler receives every frame that passed the handshake and the frame checks: engine
// frames only (typ >= 1). It runs on the event loop (TCPTransport) or on the delivering
// goroutine (MemNetwork), so it must not block: decode and enqueue. body is valid only
// during the call. With EventLoops > 1 it is called concurrently from several loops.
// It may call Send; it must not call Close.
type Handler func(from ids.NodeID, group ids.GroupID, typ uint8, body []byte)

// Transport is what the engine sends through. TCPTransport and the endpoints of a
// MemNetwork implement it.
type Transport interface {
	// Send queues one frame for peer `to`. It never blocks and is safe from any
	// goroutine. The body is copied before Send returns. Frames to one peer from one
	// goroutine arrive in order or not at all (MemNetwork's delay fault reorders on
	// purpose). If the peer is unreachable or its queue is over the limit the frame is
	// dropped and counted; Paxos retries. Sending to self, to a non-member or with
	// typ 0 (reserved for netio) returns false.
	Send(to ids.NodeID, group ids.GroupID, typ uint8, body []byte) bool
	// Stats returns a snapshot of the counters.
	Stats() Stats
	// Close stops everything the transport started; no goroutine is left behind.
	// Sends after Close return false. Close is idempotent.
	Close() error
}

// Stats counts frames and connections. Frame counters cover engine frames (typ >= 1);
// byte counters cover whole frames on the wire, control frames included.
type Stats struct {
	FramesSent     uint64 // handed to the connection (TCP) or to the network (mem)
	BytesSent      uint64
	Writes         uint64 // TCP: flushes that wrote; FramesSent/Writes is the batching factor
	FramesReceived uint64 // delivered to the Handler
	BytesReceived  uint64
	Dropped        Drops
	Duplicated     uint64 // MemNetwork: extra copies injected by the duplicate fault

	ConnsOpened  uint64 // connections that completed the handshake
	ConnsRefused uint64 // connections this node closed during the handshake (stranger, bad Hello or proof, timeout)
	AuthFailures uint64 // of ConnsRefused: the peer's proof did not verify, or only one side has a secret
	PeersRefused uint64 // of ConnsRefused: Options.AdmitPeer refused the peer (its incarnation)
	ConnsClosed  uint64 // established connections that closed, for any reason
	DialFailures uint64 // outbound connects or registrations that failed
	DecodeErrors uint64 // frames that failed a check; each one closed its connection
}

// Drops counts frames dropped, by reason.
type Drops struct {
	QueueFull   uint64 // the peer's unsent bytes were over PeerQueueBytesMax
	Unreachable uint64 // no connection for longer than UnreachableAfter; mem: no live endpoint
	UnknownPeer uint64 // destination is not a member, is this node, or typ was 0
	TooLarge    uint64 // the frame would exceed MaxFrameBytes
	Closed      uint64 // Send after Close
	Lost        uint64 // queued, then discarded when the peer became unreachable
	Fault       uint64 // MemNetwork: random drop fault
	Partition   uint64 // MemNetwork: blocked by a partition or isolation
}

// Total is the sum over all reasons.
func (d Drops) Total() uint64 {
	return d.QueueFull + d.Unreachable + d.UnknownPeer + d.TooLarge + d.Closed + d.Lost + d.Fault + d.Partition
}

// counters is the concurrently updated form of Stats.
type counters struct {
	framesSent, bytesSent, writes, framesReceived, bytesReceived atomic.Uint64

	dropQueueFull, dropUnreachable, dropUnknownPeer, dropTooLarge atomic.Uint64
	dropClosed, dropLost, dropFault, dropPartition                atomic.Uint64
	duplicated                                                    atomic.Uint64

	connsOpened, connsRefused, connsClosed, dialFailures, decodeErrors atomic.Uint64
	authFailures, peersRefused                                         atomic.Uint64
}

func (c *counters) snapshot() Stats {
	return Stats{
		FramesSent:     c.framesSent.Load(),
		BytesSent:      c.bytesSent.Load(),
		Writes:         c.writes.Load(),
		FramesReceived: c.framesReceived.Load(),
		BytesReceived:  c.bytesReceived.Load(),
		Dropped: Drops{
			QueueFull:   c.dropQueueFull.Load(),
			Unreachable: c.dropUnreachable.Load(),
			UnknownPeer: c.dropUnknownPeer.Load(),
			TooLarge:    c.dropTooLarge.Load(),
			Closed:      c.dropClosed.Load(),
			Lost:        c.dropLost.Load(),
			Fault:       c.dropFault.Load(),
			Partition:   c.dropPartition.Load(),
		},
		Duplicated:   c.duplicated.Load(),
		ConnsOpened:  c.connsOpened.Load(),
		ConnsRefused: c.connsRefused.Load(),
		AuthFailures: c.authFailures.Load(),
		PeersRefused: c.peersRefused.Load(),
		ConnsClosed:  c.connsClosed.Load(),
		DialFailures: c.dialFailures.Load(),
		DecodeErrors: c.decodeErrors.Load(),
	}
}
