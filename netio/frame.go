package netio

import (
	"encoding/binary"
	"errors"

	"github.com/multipaxos/engine/ids"
)

// Wire format of one frame (all integers big-endian):
//
//	offset size field
//	0      4    length of the rest of the frame (header after this field + body)
//	4      1    version (FrameVersion)
//	5      8    cluster ID
//	13     4    group
//	17     1    type (0 = netio control frame, >= 1 = engine message)
//	18     ...  body (msgpack, owned by whoever owns the type)
//
// The length prefix comes first so that a reader can bound its buffering before it
// trusts anything else; the version comes right after it so that a future format can
// change everything behind it.
const (
	// FrameVersion is the only frame layout this package speaks.
	FrameVersion uint8 = 1

	// FrameHeaderSize is the size of a frame with an empty body: the length prefix
	// plus the fixed header.
	FrameHeaderSize = 4 + 1 + 8 + 4 + 1

	// DefaultMaxFrameBytes is the default bound on one whole frame on the wire
	// (length prefix, header and body): 16 MiB.
	DefaultMaxFrameBytes = 16 << 20

	// maxWireFrameBytes is the largest frame the 32-bit length prefix can describe.
	maxWireFrameBytes = 4 + (1<<32 - 1)
)

// FrameHeader is the decoded fixed part of a frame.
type FrameHeader struct {
	Version   uint8
	ClusterID uint64
	Group     ids.GroupID
	Type      uint8
}

// ErrNeedMore reports that the bytes given to DecodeFrame hold a valid beginning of a
// frame but not all of it. It is not a protocol violation: read more and retry.
var ErrNeedMore = errors.New("netio: incomplete frame, need more bytes")

// ErrInvalidFrame matches (with errors.Is) every error that means the byte stream is
// not a valid frame stream and the connection must be closed. The specific errors
// below all match it.
var ErrInvalidFrame = errors.New("netio: invalid frame")

// Specific frame errors. Each one is also errors.Is-equal to ErrInvalidFrame.
var (
	// ErrFrameTooLarge: the length prefix announces a frame above the size limit.
	ErrFrameTooLarge error = &frameError{"netio: frame larger than the limit"}
	// ErrShortFrame: the length prefix announces less than the fixed header.
	ErrShortFrame error = &frameError{"netio: frame shorter than its header"}
	// ErrBadVersion: the version byte is not FrameVersion.
	ErrBadVersion error = &frameError{"netio: unknown frame version"}
	// ErrWrongCluster: the frame's cluster ID is not this cluster's. DecodeFrame does
	// not know the cluster, so the transports return this one.
	ErrWrongCluster error = &frameError{"netio: frame from another cluster"}
	// ErrUnexpectedFrame: a frame that is well formed but not allowed at this point of
	// the connection (anything but the Hello or the proof while they are due, a
	// handshake frame after the handshake).
	ErrUnexpectedFrame error = &frameError{"netio: unexpected frame"}
	// ErrBadHello: the Hello body does not decode or breaks a limit.
	ErrBadHello error = &frameError{"netio: malformed hello"}
	// ErrBadProof: the proof body does not decode or its MAC is not exactly 32 bytes.
	// A well-formed proof that does not verify is ErrAuthFailed instead.
	ErrBadProof error = &frameError{"netio: malformed proof"}
)

type frameError struct{ msg string }

func (e *frameError) Error() string        { return e.msg }
func (e *frameError) Is(target error) bool { return target == ErrInvalidFrame }

// AppendFrame appends one encoded frame to dst and returns the extended slice. It does
// not check the size limit: callers that send check the body length first (see
// MaxBodyBytes), so that an oversized frame never leaves the node.
func AppendFrame(dst []byte, clusterID uint64, group ids.GroupID, typ uint8, body []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(FrameHeaderSize-4+len(body)))
	dst = append(dst, FrameVersion)
	dst = binary.BigEndian.AppendUint64(dst, clusterID)
	dst = binary.BigEndian.AppendUint32(dst, uint32(group))
	dst = append(dst, typ)
	return append(dst, body...)
}

// MaxBodyBytes is the largest body a frame can carry under the given whole-frame limit.
func MaxBodyBytes(maxFrameBytes int) int {
	return normMax(maxFrameBytes) - FrameHeaderSize
}

// DecodeFrame decodes the frame at the start of b. maxFrameBytes bounds the whole frame
// on the wire, prefix included (<= 0 means DefaultMaxFrameBytes).
//
// On success n is the size of the frame (bytes consumed) and body aliases b. On
// ErrNeedMore nothing is wrong yet: b is a valid prefix of a frame. Any other error
// matches ErrInvalidFrame. Checks run in the order the bytes arrive, so a hostile
// length or version is reported as soon as its bytes are there, before the reader
// buffers the rest of the frame.
func DecodeFrame(b []byte, maxFrameBytes int) (h FrameHeader, body []byte, n int, err error) {
	n, err = frameSize(b, maxFrameBytes)
	if err != nil {
		return FrameHeader{}, nil, 0, err
	}
	if len(b) < n {
		return FrameHeader{}, nil, 0, ErrNeedMore
	}
	h = FrameHeader{
		Version:   b[4],
		ClusterID: binary.BigEndian.Uint64(b[5:13]),
		Group:     ids.GroupID(binary.BigEndian.Uint32(b[13:17])),
		Type:      b[17],
	}
	return h, b[FrameHeaderSize:n:n], n, nil
}

// frameSize checks the prefix of a frame (length and, once present, version) and
// returns the whole frame's size. It needs 4 bytes; with fewer it returns ErrNeedMore.
func frameSize(b []byte, maxFrameBytes int) (int, error) {
	if len(b) < 4 {
		return 0, ErrNeedMore
	}
	// uint64 arithmetic: 4+length cannot overflow, even where int is 32 bits.
	size := 4 + uint64(binary.BigEndian.Uint32(b))
	if size > uint64(normMax(maxFrameBytes)) {
		return 0, ErrFrameTooLarge
	}
	if size < FrameHeaderSize {
		return 0, ErrShortFrame
	}
	if len(b) > 4 && b[4] != FrameVersion {
		return 0, ErrBadVersion
	}
	return int(size), nil
}

func normMax(maxFrameBytes int) int {
	if maxFrameBytes <= 0 {
		return DefaultMaxFrameBytes
	}
	if uint64(maxFrameBytes) > maxWireFrameBytes {
		return int(min(uint64(maxWireFrameBytes), uint64(^uint(0)>>1)))
	}
	return maxFrameBytes
}
