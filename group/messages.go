package group

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// Group-level message types travel on the same connection as the protocol's, with
// types from MsgTypeBase up; the instance package owns the types below it.
const (
	// MsgTypeBase is the first group-level message type.
	MsgTypeBase uint8 = 64
	// MsgForward carries proposals from a member to the master: [hops, value,
	// since] (since: none of them was chosen below that instance; executed.go).
	MsgForward uint8 = MsgTypeBase + iota - 1
	// MsgReadIndex asks a member for its read index: [id].
	MsgReadIndex
	// MsgReadIndexReply answers MsgReadIndex: [id, index, membership version].
	MsgReadIndexReply
	// MsgCheckpointOffer offers a checkpoint image to a learner that needs
	// trimmed instances: [manifest].
	MsgCheckpointOffer
	// MsgChunkReq asks for one chunk of an image: [image instance, file, offset,
	// max bytes].
	MsgChunkReq
	// MsgChunk carries one chunk of an image: [image instance, chunk].
	MsgChunk
	msgGroupEnd
)

// ErrBadGroupMessage is wrapped by every decoding failure of a group-level message.
var ErrBadGroupMessage = errors.New("group: bad group message")

// GroupMessage is a decoded group-level message.
type GroupMessage struct {
	Type     uint8
	Hops     uint64
	Since    uint64
	Commands []Command
	ID       uint64
	Index    uint64
	Version  uint64
	// Image transfer: the image's instance, a chunk's place, and the encoded
	// manifest or chunk (package checkpoint).
	Image  uint64
	File   uint64
	Offset uint64
	Max    uint64
	Data   []byte
}

// IsGroupMessage reports whether typ is a group-level message type.
func IsGroupMessage(typ uint8) bool { return typ >= MsgForward && typ < msgGroupEnd }

// EncodeGroupMessage returns the body of m.
func EncodeGroupMessage(m *GroupMessage) []byte {
	var buf bytes.Buffer
	e := msgpack.NewEncoder(&buf)
	switch m.Type {
	case MsgForward:
		_ = e.EncodeArrayLen(3)
		_ = e.EncodeUint(m.Hops)
		_ = e.EncodeBytes(encodeValue(m.Commands))
		_ = e.EncodeUint(m.Since)
	case MsgReadIndex:
		_ = e.EncodeArrayLen(1)
		_ = e.EncodeUint(m.ID)
	case MsgReadIndexReply:
		_ = e.EncodeArrayLen(3)
		_ = e.EncodeUint(m.ID)
		_ = e.EncodeUint(m.Index)
		_ = e.EncodeUint(m.Version)
	case MsgCheckpointOffer:
		_ = e.EncodeArrayLen(1)
		_ = e.EncodeBytes(m.Data)
	case MsgChunkReq:
		_ = e.EncodeArrayLen(4)
		_ = e.EncodeUint(m.Image)
		_ = e.EncodeUint(m.File)
		_ = e.EncodeUint(m.Offset)
		_ = e.EncodeUint(m.Max)
	case MsgChunk:
		_ = e.EncodeArrayLen(2)
		_ = e.EncodeUint(m.Image)
		_ = e.EncodeBytes(m.Data)
	}
	return buf.Bytes()
}

// DecodeGroupMessage parses a group-level body; lengths are checked before any
// allocation.
func DecodeGroupMessage(typ uint8, body []byte) (GroupMessage, error) {
	m := GroupMessage{Type: typ}
	r := bytes.NewReader(body)
	d := msgpack.NewDecoder(r)
	want := map[uint8]int{MsgForward: 3, MsgReadIndex: 1, MsgReadIndexReply: 3,
		MsgCheckpointOffer: 1, MsgChunkReq: 4, MsgChunk: 2}[typ]
	if want == 0 {
		return m, fmt.Errorf("%w: type %d", ErrBadGroupMessage, typ)
	}
	n, err := d.DecodeArrayLen()
	if err != nil || n != want {
		return m, fmt.Errorf("%w: array of %d, %v", ErrBadGroupMessage, n, err)
	}
	switch typ {
	case MsgForward:
		if m.Hops, err = d.DecodeUint64(); err != nil {
			return m, fmt.Errorf("%w: %v", ErrBadGroupMessage, err)
		}
		v, err := decodeBytes(d, r)
		if err != nil {
			return m, err
		}
		if m.Commands, err = decodeValue(v); err != nil {
			return m, fmt.Errorf("%w: %v", ErrBadGroupMessage, err)
		}
		m.Since, err = d.DecodeUint64()
	case MsgCheckpointOffer:
		m.Data, err = decodeBytes(d, r)
	case MsgChunkReq:
		for _, p := range []*uint64{&m.Image, &m.File, &m.Offset, &m.Max} {
			if err == nil {
				*p, err = d.DecodeUint64()
			}
		}
	case MsgChunk:
		if m.Image, err = d.DecodeUint64(); err == nil {
			m.Data, err = decodeBytes(d, r)
		}
	case MsgReadIndex:
		m.ID, err = d.DecodeUint64()
	case MsgReadIndexReply:
		m.ID, err = d.DecodeUint64()
		if err == nil {
			m.Index, err = d.DecodeUint64()
		}
		if err == nil {
			m.Version, err = d.DecodeUint64()
		}
	}
	if err != nil {
		return m, fmt.Errorf("%w: %v", ErrBadGroupMessage, err)
	}
	if r.Len() != 0 {
		return m, fmt.Errorf("%w: %d trailing bytes", ErrBadGroupMessage, r.Len())
	}
	return m, nil
}

// decodeBytes reads a msgpack bin whose length is checked against the bytes left
// before it is allocated.
func decodeBytes(d *msgpack.Decoder, r *bytes.Reader) ([]byte, error) {
	l, err := d.DecodeBytesLen()
	if err != nil || l < 0 || l > r.Len() {
		return nil, fmt.Errorf("%w: bytes of %d in %d, %v", ErrBadGroupMessage, l, r.Len(), err)
	}
	v := make([]byte, l)
	if err := d.ReadFull(v); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadGroupMessage, err)
	}
	return v, nil
}
