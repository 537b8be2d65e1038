package checkpoint

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The manifest and chunk encodings are msgpack, written and read by hand here
// rather than through a reflective codec: every length read is checked against the
// bytes that are left before anything is allocated, so a lying length costs an
// error, not gigabytes. Only the few msgpack types these encodings use are known.

// appendArrayLen appends a msgpack array header.
func appendArrayLen(b []byte, n int) []byte {
	switch {
	case n < 16:
		return append(b, 0x90|byte(n))
	case n <= 0xffff:
		return binary.BigEndian.AppendUint16(append(b, 0xdc), uint16(n))
	default:
		return binary.BigEndian.AppendUint32(append(b, 0xdd), uint32(n))
	}
}

// appendUint appends v in the shortest msgpack unsigned integer form.
func appendUint(b []byte, v uint64) []byte {
	switch {
	case v < 128:
		return append(b, byte(v))
	case v <= 0xff:
		return append(b, 0xcc, byte(v))
	case v <= 0xffff:
		return binary.BigEndian.AppendUint16(append(b, 0xcd), uint16(v))
	case v <= 0xffffffff:
		return binary.BigEndian.AppendUint32(append(b, 0xce), uint32(v))
	default:
		return binary.BigEndian.AppendUint64(append(b, 0xcf), v)
	}
}

// appendBin appends p as msgpack bin (an empty p is an empty bin, never nil).
func appendBin(b, p []byte) []byte {
	switch n := len(p); {
	case n <= 0xff:
		b = append(b, 0xc4, byte(n))
	case n <= 0xffff:
		b = binary.BigEndian.AppendUint16(append(b, 0xc5), uint16(n))
	default:
		b = binary.BigEndian.AppendUint32(append(b, 0xc6), uint32(n))
	}
	return append(b, p...)
}

// appendStr appends s as msgpack str.
func appendStr(b []byte, s string) []byte {
	switch n := len(s); {
	case n < 32:
		b = append(b, 0xa0|byte(n))
	case n <= 0xff:
		b = append(b, 0xd9, byte(n))
	case n <= 0xffff:
		b = binary.BigEndian.AppendUint16(append(b, 0xda), uint16(n))
	default:
		b = binary.BigEndian.AppendUint32(append(b, 0xdb), uint32(n))
	}
	return append(b, s...)
}

var errShort = errors.New("input ends early")

// reader decodes msgpack from a byte slice. Its methods never allocate more than
// the input holds.
type reader struct {
	b []byte
}

func (r *reader) left() int { return len(r.b) }

func (r *reader) take(n int) ([]byte, error) {
	if n < 0 || n > len(r.b) {
		return nil, fmt.Errorf("%w: %d bytes wanted, %d left", errShort, n, len(r.b))
	}
	p := r.b[:n:n]
	r.b = r.b[n:]
	return p, nil
}

func (r *reader) byte() (byte, error) {
	p, err := r.take(1)
	if err != nil {
		return 0, err
	}
	return p[0], nil
}

// bigEndian reads an n-byte (1, 2, 4 or 8) big-endian unsigned integer.
func (r *reader) bigEndian(n int) (uint64, error) {
	p, err := r.take(n)
	if err != nil {
		return 0, err
	}
	var v uint64
	for _, c := range p {
		v = v<<8 | uint64(c)
	}
	return v, nil
}

// arrayLen reads an array header. The length is checked against the bytes left:
// every element takes at least one byte.
func (r *reader) arrayLen() (int, error) {
	c, err := r.byte()
	if err != nil {
		return 0, err
	}
	var n uint64
	switch {
	case c&0xf0 == 0x90:
		n = uint64(c & 0x0f)
	case c == 0xdc:
		n, err = r.bigEndian(2)
	case c == 0xdd:
		n, err = r.bigEndian(4)
	default:
		return 0, fmt.Errorf("expected an array, found code 0x%02x", c)
	}
	if err != nil {
		return 0, err
	}
	if n > uint64(r.left()) {
		return 0, fmt.Errorf("array of %d elements in %d bytes", n, r.left())
	}
	return int(n), nil
}

// uint reads an unsigned integer, also accepting non-negative signed forms.
func (r *reader) uint() (uint64, error) {
	c, err := r.byte()
	if err != nil {
		return 0, err
	}
	switch {
	case c <= 0x7f:
		return uint64(c), nil
	case c >= 0xcc && c <= 0xcf:
		return r.bigEndian(1 << (c - 0xcc))
	case c >= 0xd0 && c <= 0xd3:
		n := 1 << (c - 0xd0)
		v, err := r.bigEndian(n)
		if err != nil {
			return 0, err
		}
		if v>>(8*n-1) != 0 {
			return 0, errors.New("negative integer")
		}
		return v, nil
	default:
		return 0, fmt.Errorf("expected an unsigned integer, found code 0x%02x", c)
	}
}

// uintMax reads an unsigned integer no larger than max.
func (r *reader) uintMax(max uint64, what string) (uint64, error) {
	v, err := r.uint()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	if v > max {
		return 0, fmt.Errorf("%s %d is over %d", what, v, max)
	}
	return v, nil
}

// bin reads a bin of at most max bytes; the result aliases the input.
func (r *reader) bin(max int) ([]byte, error) {
	c, err := r.byte()
	if err != nil {
		return nil, err
	}
	var n uint64
	switch c {
	case 0xc4:
		n, err = r.bigEndian(1)
	case 0xc5:
		n, err = r.bigEndian(2)
	case 0xc6:
		n, err = r.bigEndian(4)
	default:
		return nil, fmt.Errorf("expected bin, found code 0x%02x", c)
	}
	if err != nil {
		return nil, err
	}
	if n > uint64(max) {
		return nil, fmt.Errorf("bin of %d bytes, limit %d", n, max)
	}
	return r.take(int(n))
}

// str reads a str of at most max bytes.
func (r *reader) str(max int) (string, error) {
	c, err := r.byte()
	if err != nil {
		return "", err
	}
	var n uint64
	switch {
	case c&0xe0 == 0xa0:
		n = uint64(c & 0x1f)
	case c == 0xd9:
		n, err = r.bigEndian(1)
	case c == 0xda:
		n, err = r.bigEndian(2)
	case c == 0xdb:
		n, err = r.bigEndian(4)
	default:
		return "", fmt.Errorf("expected str, found code 0x%02x", c)
	}
	if err != nil {
		return "", err
	}
	if n > uint64(max) {
		return "", fmt.Errorf("str of %d bytes, limit %d", n, max)
	}
	p, err := r.take(int(n))
	return string(p), err
}
