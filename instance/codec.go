package instance

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/multipaxos/engine/ids"
	"github.com/vmihailenco/msgpack/v5"
)

// ErrBadMessage is wrapped by every decoding failure of a message body.
var ErrBadMessage = errors.New("instance: bad message body")

// Message bodies are msgpack arrays, hand-coded rather than reflected: this is the
// hot path, and a peer's declared lengths must never drive an allocation unchecked
// (msgpack v5.4 does not limit slice or bytes allocations; see
// ../shared/notes/dependencies.md). Every length read is checked against the bytes
// left in the body before anything is allocated.
//
// Layout (all integers compact msgpack uints):
//
//	[next, instance, ballot.n, ballot.node, reject, promised.n, promised.node,
//	 accepted.n, accepted.node, value(bin), checksum, entries]
//
// entries is an array of [instance, ballot.n, ballot.node, value(bin)].
// Type, From and To are not in the body: the frame header and the connection carry
// them.
const bodyFields = 12

// Codec encodes and decodes message bodies, reusing its buffers. It is not safe for
// concurrent use: keep one per goroutine.
type Codec struct {
	buf bytes.Buffer
	enc *msgpack.Encoder
	rd  bytes.Reader
	dec *msgpack.Decoder
}

// NewCodec returns a Codec.
func NewCodec() *Codec {
	c := &Codec{}
	c.enc = msgpack.NewEncoder(&c.buf)
	c.dec = msgpack.NewDecoder(&c.rd)
	return c
}

// Encode returns the body of m. The slice is valid until the next call to Encode.
func (c *Codec) Encode(m *Message) []byte {
	c.buf.Reset()
	e := c.enc
	// Writes to a bytes.Buffer cannot fail, so the errors are not checked.
	_ = e.EncodeArrayLen(bodyFields)
	_ = e.EncodeUint(uint64(m.Next))
	_ = e.EncodeUint(uint64(m.Instance))
	encodeBallot(e, m.Ballot)
	_ = e.EncodeBool(m.Reject)
	encodeBallot(e, m.Promised)
	encodeBallot(e, m.AcceptedBallot)
	_ = e.EncodeBytes(m.Value)
	_ = e.EncodeUint(uint64(m.Checksum))
	_ = e.EncodeArrayLen(len(m.Entries))
	for i := range m.Entries {
		en := &m.Entries[i]
		_ = e.EncodeArrayLen(4)
		_ = e.EncodeUint(uint64(en.Instance))
		encodeBallot(e, en.Ballot)
		_ = e.EncodeBytes(en.Value)
	}
	return c.buf.Bytes()
}

func encodeBallot(e *msgpack.Encoder, b ids.Ballot) {
	_ = e.EncodeUint(b.Number)
	_ = e.EncodeUint(uint64(b.Node))
}

// Decode parses a body of message type typ. Byte slices in the result are fresh
// copies, independent of body.
func (c *Codec) Decode(typ MsgType, body []byte) (Message, error) {
	if !typ.Valid() {
		return Message{}, fmt.Errorf("%w: unknown type %d", ErrBadMessage, typ)
	}
	c.rd.Reset(body)
	d := &decoder{c: c}
	m := Message{Type: typ}
	if n := d.arrayLen(); n != bodyFields && d.err == nil {
		d.err = fmt.Errorf("%w: %d fields, want %d", ErrBadMessage, n, bodyFields)
	}
	m.Next = ids.InstanceID(d.uint())
	m.Instance = ids.InstanceID(d.uint())
	m.Ballot = d.ballot()
	m.Reject = d.bool()
	m.Promised = d.ballot()
	m.AcceptedBallot = d.ballot()
	m.Value = d.bytes()
	m.Checksum = uint32(d.uintMax(1<<32 - 1))
	n := d.arrayLen()
	if n > 0 && d.err == nil {
		m.Entries = make([]Entry, 0, n)
		for i := 0; i < n && d.err == nil; i++ {
			if k := d.arrayLen(); k != 4 && d.err == nil {
				d.err = fmt.Errorf("%w: entry with %d fields", ErrBadMessage, k)
			}
			m.Entries = append(m.Entries, Entry{Instance: ids.InstanceID(d.uint()), Ballot: d.ballot(), Value: d.bytes()})
		}
	}
	if d.err == nil && c.rd.Len() != 0 {
		d.err = fmt.Errorf("%w: %d trailing bytes", ErrBadMessage, c.rd.Len())
	}
	if d.err != nil {
		return Message{}, d.err
	}
	return m, nil
}

// decoder keeps the first error so that the field list above reads straight.
type decoder struct {
	c   *Codec
	err error
}

func (d *decoder) fail(err error) {
	if d.err == nil && err != nil {
		d.err = fmt.Errorf("%w: %v", ErrBadMessage, err)
	}
}

func (d *decoder) uint() uint64 { return d.uintMax(^uint64(0)) }

func (d *decoder) uintMax(max uint64) uint64 {
	if d.err != nil {
		return 0
	}
	v, err := d.c.dec.DecodeUint64()
	d.fail(err)
	if err == nil && v > max {
		d.fail(fmt.Errorf("integer %d above %d", v, max))
	}
	return v
}

func (d *decoder) bool() bool {
	if d.err != nil {
		return false
	}
	v, err := d.c.dec.DecodeBool()
	d.fail(err)
	return v
}

func (d *decoder) ballot() ids.Ballot {
	return ids.Ballot{Number: d.uint(), Node: ids.NodeID(d.uint())}
}

// arrayLen returns a length no larger than the bytes left: every element takes at
// least one byte, so a larger claim is a lie.
func (d *decoder) arrayLen() int {
	if d.err != nil {
		return 0
	}
	n, err := d.c.dec.DecodeArrayLen()
	d.fail(err)
	if err == nil && (n < 0 || n > d.c.rd.Len()) {
		d.fail(fmt.Errorf("array of %d elements in %d bytes", n, d.c.rd.Len()))
		return 0
	}
	return n
}

func (d *decoder) bytes() []byte {
	if d.err != nil {
		return nil
	}
	n, err := d.c.dec.DecodeBytesLen()
	d.fail(err)
	if err != nil || n <= 0 {
		return nil
	}
	if n > d.c.rd.Len() {
		d.fail(fmt.Errorf("bytes of length %d in %d bytes", n, d.c.rd.Len()))
		return nil
	}
	b := make([]byte, n)
	d.fail(d.c.dec.ReadFull(b))
	return b
}
