package netio

import (
	"bytes"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"

	"github.com/multipaxos/engine/ids"
)

// Control frames: type 0 belongs to netio. For them the group field names the control
// message instead of a group; engine messages (type >= 1) never see these.
const (
	// TypeControl is the frame type reserved for netio's own frames. Send refuses it.
	TypeControl uint8 = 0

	ctlHello     ids.GroupID = 0 // first frame in each direction; body = hello
	ctlKeepalive ids.GroupID = 1 // empty body; proves the peer is alive on an idle link
	ctlProof     ids.GroupID = 2 // second frame each way with a cluster secret; body = proof
	// ctlAdmitted: empty body; the sender's AdmitPeer accepted our incarnation. Each
	// side sends it once, as its first frame after it established the connection.
	ctlAdmitted ids.GroupID = 3
)

// ProtocolVersion is the handshake protocol spoken in the Hello. A peer announcing a
// different one is refused: the protocol version, not the frame version, is where
// changes to the meaning of control frames or message types are negotiated.
//
// Version 2 added the nonce, the authentication mode and the proof frame. Version 3
// added the incarnation to the Hello (and to the MAC) and the admitted control frame.
// A peer of an older version is refused by name ("unsupported protocol version") in
// both directions: each version keeps the field order and types of the one before for
// the fields they share, so the version field is always where an old peer looks.
const ProtocolVersion uint32 = 3

// Authentication modes announced in the Hello. Both sides must announce the same one:
// a side with a secret never accepts a peer that offers none, so the mode cannot be
// downgraded by whoever speaks first.
const (
	authNone       uint8 = 0 // no ClusterSecret: no proofs are exchanged
	authHMACSHA256 uint8 = 1 // proof frames carry HMAC-SHA256 over the handshake
)

// Bounds on what a peer may send before it has proved who it is. They keep a
// stranger's cost to us small: the Hello is a few dozen bytes.
const (
	helloFrameBytesMax = 1024 // any frame on the wire before the handshake completes
	helloFieldsMax     = 16   // array length; room for later fields, not for abuse
	helloFields        = 6    // fields of a protocol 3 Hello
	proofFieldsMax     = helloFieldsMax

	nonceBytes = 32 // per connection and side; 256 bits never repeat by chance
	proofBytes = 32 // HMAC-SHA256
)

// hello is the handshake message. On the wire it is a msgpack array
// [protocol, clusterID, nodeID, nonce, auth, incarnation]. Protocol comes first so that
// a later version can change the rest of the layout and still be recognised and
// refused cleanly. Fields after the sixth are ignored, so a later protocol may append
// fields.
type hello struct {
	Protocol  uint32
	ClusterID uint64
	NodeID    ids.NodeID
	// Nonce is fresh from crypto/rand for every connection. The peer's proof covers
	// it, which is what makes a recorded proof useless on another connection.
	Nonce [nonceBytes]byte
	// Auth is the sender's authentication mode (authNone, authHMACSHA256).
	Auth uint8
	// Incarnation is the sender's Options.Incarnation: the identity of its store, so
	// that a node back under its old ID with a wiped disk can be told from the old
	// one. Zero means unknown. With a secret both proofs cover it.
	Incarnation uint64
}

func encodeHello(h hello) []byte {
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	// Writes to a bytes.Buffer cannot fail; the errors are for other writers.
	_ = enc.EncodeArrayLen(helloFields)
	_ = enc.EncodeUint(uint64(h.Protocol))
	_ = enc.EncodeUint(h.ClusterID)
	_ = enc.EncodeUint(uint64(h.NodeID))
	_ = enc.EncodeBytes(h.Nonce[:])
	_ = enc.EncodeUint(uint64(h.Auth))
	_ = enc.EncodeUint(h.Incarnation)
	return buf.Bytes()
}

// appendHelloFrame returns a whole Hello frame ready to be written.
func appendHelloFrame(dst []byte, clusterID uint64, self ids.NodeID, nonce *[nonceBytes]byte,
	auth uint8, incarnation uint64) []byte {
	h := hello{Protocol: ProtocolVersion, ClusterID: clusterID, NodeID: self, Nonce: *nonce, Auth: auth,
		Incarnation: incarnation}
	return AppendFrame(dst, clusterID, ctlHello, TypeControl, encodeHello(h))
}

// decodeHello decodes a Hello body that came from an unauthenticated peer. Every length
// it reads is checked against the bytes that are actually there before anything is
// allocated (msgpack v5.4.1 would otherwise allocate what the peer declares), and the
// result never aliases body.
//
// A Hello of another protocol version is decoded only as far as its version, with no
// error: the rest may have another layout, and the caller refuses it by its version,
// which is the one thing an operator needs to read in the log.
func decodeHello(body []byte) (hello, error) {
	var h hello
	r := bytes.NewReader(body)
	dec := msgpack.NewDecoder(r)
	n, err := dec.DecodeArrayLen()
	if err != nil {
		return h, helloErr("array header", err)
	}
	if n < 1 || n > helloFieldsMax {
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
	if h.Protocol != ProtocolVersion {
		return h, nil
	}
	if n < helloFields {
		return hello{}, helloErr("field count", fmt.Errorf("%d fields", n))
	}
	if h.ClusterID, err = dec.DecodeUint64(); err != nil {
		return hello{}, helloErr("cluster id", err)
	}
	node, err := dec.DecodeUint64()
	if err != nil {
		return hello{}, helloErr("node id", err)
	}
	h.NodeID = ids.NodeID(node)
	if err := decodeFixedBytes(dec, r, h.Nonce[:]); err != nil {
		return hello{}, helloErr("nonce", err)
	}
	auth, err := dec.DecodeUint64()
	if err != nil {
		return hello{}, helloErr("auth", err)
	}
	if auth > 0xff {
		return hello{}, helloErr("auth", fmt.Errorf("value %d", auth))
	}
	h.Auth = uint8(auth)
	if h.Incarnation, err = dec.DecodeUint64(); err != nil {
		return hello{}, helloErr("incarnation", err)
	}
	return h, nil
}

// appendAdmittedFrame appends the admitted control frame (empty body).
func appendAdmittedFrame(dst []byte, clusterID uint64) []byte {
	return AppendFrame(dst, clusterID, ctlAdmitted, TypeControl, nil)
}

// proof is the second handshake frame each way when a cluster secret is set: a msgpack
// array [mac], the MAC being handshakeMAC under the sender's direction label. Fields
// after the first are ignored, as in the Hello.
type proof struct {
	MAC [proofBytes]byte
}

func encodeProof(p proof) []byte {
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	_ = enc.EncodeArrayLen(1)
	_ = enc.EncodeBytes(p.MAC[:])
	return buf.Bytes()
}

func appendProofFrame(dst []byte, clusterID uint64, mac [proofBytes]byte) []byte {
	return AppendFrame(dst, clusterID, ctlProof, TypeControl, encodeProof(proof{MAC: mac}))
}

// decodeProof decodes a proof body from a peer that has not yet proved anything, with
// the same care as decodeHello: nothing is allocated from a declared length.
func decodeProof(body []byte) (proof, error) {
	var p proof
	r := bytes.NewReader(body)
	dec := msgpack.NewDecoder(r)
	n, err := dec.DecodeArrayLen()
	if err != nil {
		return p, proofErr("array header", err)
	}
	if n < 1 || n > proofFieldsMax {
		return p, proofErr("field count", fmt.Errorf("%d fields", n))
	}
	if err := decodeFixedBytes(dec, r, p.MAC[:]); err != nil {
		return proof{}, proofErr("mac", err)
	}
	return p, nil
}

// decodeFixedBytes reads a msgpack bin of exactly len(dst) bytes into dst. The
// declared length is checked before any byte is read, so a lying header costs nothing.
// Only bin is accepted (msgpack would also take a str or nil): one encoding per value.
func decodeFixedBytes(dec *msgpack.Decoder, r *bytes.Reader, dst []byte) error {
	code, err := dec.PeekCode()
	if err != nil {
		return err
	}
	if code != msgpcode.Bin8 && code != msgpcode.Bin16 && code != msgpcode.Bin32 {
		return fmt.Errorf("type code %#x, want bin", code)
	}
	n, err := dec.DecodeBytesLen()
	if err != nil {
		return err
	}
	if n != len(dst) {
		return fmt.Errorf("length %d, want %d", n, len(dst))
	}
	if n > r.Len() {
		return fmt.Errorf("length %d with %d bytes left", n, r.Len())
	}
	return dec.ReadFull(dst)
}

func helloErr(field string, err error) error {
	return fmt.Errorf("%w: %s: %v", ErrBadHello, field, err)
}

func proofErr(field string, err error) error {
	return fmt.Errorf("%w: %s: %v", ErrBadProof, field, err)
}
