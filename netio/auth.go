package netio

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"

	"github.com/multipaxos/engine/ids"
)

// ClusterSecretBytesMin is the shortest ClusterSecret accepted: 128 bits, so that the
// secret cannot be guessed even offline from a recorded handshake.
const ClusterSecretBytesMin = 16

// Authentication errors, logged with the refusal of the connection. They are not
// frame errors: the frames were well formed, the peer just could not prove the secret.
var (
	// ErrAuthFailed: the peer's proof did not verify, so it does not hold this
	// cluster's secret (or it replays a proof made for another connection).
	ErrAuthFailed = errors.New("netio: peer authentication failed")
	// ErrAuthMismatch: one side has a ClusterSecret and the other has none (or another
	// authentication mode). It also matches ErrAuthFailed.
	ErrAuthMismatch error = &authMismatchError{}
)

type authMismatchError struct{}

func (*authMismatchError) Error() string {
	return "netio: peer authentication failed: one side has a cluster secret and the other has none"
}
func (*authMismatchError) Is(target error) bool { return target == ErrAuthFailed }

// MAC input layout. The domain string keeps these MACs from ever being valid for any
// other use of the same secret; the two labels have the same length and differ, so
// that a proof made by one side can never pass as the other side's (reflection).
const (
	macDomain     = "multipaxos-netio-v1\x00"
	labelDialer   = "dialer->acceptor" // in the proof the dialer sends
	labelAcceptor = "acceptor->dialer" // in the proof the acceptor sends
)

// handshakeMAC is the proof of one side of one connection:
//
//	HMAC-SHA256(secret, domain | label | u64 cluster | u64 dialer | u64 acceptor |
//	            dialer nonce | acceptor nonce |
//	            u64 dialer incarnation | u64 acceptor incarnation)
//
// integers big-endian, every field fixed-size, so that no two inputs share an
// encoding. Both nonces are in it: each side's own fresh nonce is what stops a proof
// recorded from an earlier connection (or made for a stranger's chosen nonce) from
// passing on this one. Both incarnations are in it (protocol 3), each as its Hello
// announced it: whoever can alter a Hello on the path cannot plant a false incarnation,
// which would make peers refuse the real node for good.
func handshakeMAC(secret []byte, label string, clusterID uint64, dialer, acceptor ids.NodeID,
	dialerNonce, acceptorNonce *[nonceBytes]byte, dialerInc, acceptorInc uint64) [proofBytes]byte {
	m := hmac.New(sha256.New, secret)
	var ints [24]byte
	binary.BigEndian.PutUint64(ints[0:], clusterID)
	binary.BigEndian.PutUint64(ints[8:], uint64(dialer))
	binary.BigEndian.PutUint64(ints[16:], uint64(acceptor))
	var incs [16]byte
	binary.BigEndian.PutUint64(incs[0:], dialerInc)
	binary.BigEndian.PutUint64(incs[8:], acceptorInc)
	// hash.Hash.Write never returns an error.
	_, _ = m.Write([]byte(macDomain))
	_, _ = m.Write([]byte(label))
	_, _ = m.Write(ints[:])
	_, _ = m.Write(dialerNonce[:])
	_, _ = m.Write(acceptorNonce[:])
	_, _ = m.Write(incs[:])
	var out [proofBytes]byte
	m.Sum(out[:0])
	return out
}

// newNonce fills n from crypto/rand. Since Go 1.24 rand.Read does not return errors:
// it crashes the process rather than hand out predictable bytes.
func newNonce(n *[nonceBytes]byte) {
	_, _ = rand.Read(n[:])
}

// proofFor computes the proof on connection cs under label, from this node's view:
// cs.nonce and t.opts.Incarnation are ours, cs.peerNonce and cs.peerIncarnation the
// peer's (from its Hello), and the lower node ID is the dialer.
func (t *TCPTransport) proofFor(cs *connState, label string) [proofBytes]byte {
	dialer, acceptor := t.opts.NodeID, cs.peer.id
	dn, an := &cs.nonce, &cs.peerNonce
	di, ai := t.opts.Incarnation, cs.peerIncarnation
	if !cs.outbound {
		dialer, acceptor = acceptor, dialer
		dn, an = an, dn
		di, ai = ai, di
	}
	return handshakeMAC(t.opts.ClusterSecret, label, t.opts.ClusterID, dialer, acceptor, dn, an, di, ai)
}
