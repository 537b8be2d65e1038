package netio

import (
	"bytes"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/multipaxos/engine/ids"
)

// Control frames: type 0 belongs to netio. For them the group field names the control
// message instead of a group; engine messages (type >= 1) never see these.
const (
	// TypeControl is the frame type reserved for netio's own frames. Send refuses it.
	TypeControl uint8 = 0

	ctlHello     ids.GroupID = 0 // first frame in each direction; body = hello
	ctlKeepalive ids.GroupID = 1 // empty body; proves the peer is alive on an idle link
)

// ProtocolVersion is the handshake protocol spoken in the Hello. A peer announcing a
// different one is refused: the protocol version, not the frame version, is where
// changes to the meaning of control frames or message types are negotiated.
const ProtocolVersion uint32 = 1

// Bounds on what a peer may send before it has proved who it is. They keep a
// stranger's cost to us small: the Hello is a few dozen bytes.
const (
	helloFrameBytesMax = 1024 // whole Hello frame on the wire
	helloAuthBytesMax  = 256  // the reserved auth field
	helloFieldsMax     = 16   // array length; room for later fields, not for abuse
)

// hello is the handshake message. On the wire it is a msgpack array
// [protocol, clusterID, nodeID, auth]. Protocol comes first so that a later version
// can change the rest of the layout and still be recognised and refused cleanly.
// Fields after the fourth are ignored, so a later protocol may append fields.
type hello struct {
	Protocol  uint32
	ClusterID uint64
	NodeID    ids.NodeID
	// Auth is reserved for a challenge-response proof of a shared secret (HMAC over a
	// nonce sent by the acceptor). Protocol 1 sends it empty and ignores it.
	Auth []byte
}

func encodeHello(h hello) []byte {
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	// Writes to a bytes.Buffer cannot fail; the errors are for other writers.
	_ = enc.EncodeArrayLen(4)
	_ = enc.EncodeUint(uint64(h.Protocol))
	_ = enc.EncodeUint(h.ClusterID)
	_ = enc.EncodeUint(uint64(h.NodeID))
	_ = enc.EncodeBytes(h.Auth)
	return buf.Bytes()
}

// appendHelloFrame returns a whole Hello frame ready to be written.
func appendHelloFrame(dst []byte, clusterID uint64, self ids.NodeID) []byte {
	body := encodeHello(hello{Protocol: ProtocolVersion, ClusterID: clusterID, NodeID: self})
	return AppendFrame(dst, clusterID, ctlHello, TypeControl, body)
}

// decodeHello decodes a Hello body that came from an unauthenticated peer. Every length
// it reads is checked against the bytes that are actually there before anything is
// allocated (msgpack v5.4.1 would otherwise allocate what the peer declares), and the
// result never aliases body.
func decodeHello(body []byte) (hello, error) {
	var h hello
	r := bytes.NewReader(body)
	dec := msgpack.NewDecoder(r)
	n, err := dec.DecodeArrayLen()
	if err != nil {
		return h, helloErr("array header", err)
	}
	if n < 4 || n > helloFieldsMax {
		return h, helloErr("field count", fmt.Errorf("%d fields", n))
	}
	proto, err := dec.DecodeUint64()
	if err != nil {
		return h, helloErr("protocol", err)
	}
	if proto > 1<<32-1 {
		// DecodeUint32 would truncate; a huge value must not alias a valid version.
		return h, helloErr("protocol", fmt.Errorf("value %d", proto))
	}
	h.Protocol = uint32(proto)
	if h.ClusterID, err = dec.DecodeUint64(); err != nil {
		return h, helloErr("cluster id", err)
	}
	node, err := dec.DecodeUint64()
	if err != nil {
		return h, helloErr("node id", err)
	}
	h.NodeID = ids.NodeID(node)
	alen, err := dec.DecodeBytesLen()
	if err != nil {
		return h, helloErr("auth", err)
	}
	if alen > helloAuthBytesMax || alen > r.Len() {
		return h, helloErr("auth", fmt.Errorf("length %d", alen))
	}
	if alen > 0 {
		h.Auth = make([]byte, alen)
		if err := dec.ReadFull(h.Auth); err != nil {
			return h, helloErr("auth", err)
		}
	}
	return h, nil
}

func helloErr(field string, err error) error {
	return fmt.Errorf("%w: %s: %v", ErrBadHello, field, err)
}
