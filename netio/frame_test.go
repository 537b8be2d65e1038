package netio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/multipaxos/engine/ids"
)

func TestFrameRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var stream []byte
	type want struct {
		cluster uint64
		group   ids.GroupID
		typ     uint8
		body    []byte
	}
	var wants []want
	for i := 0; i < 200; i++ {
		body := make([]byte, rng.IntN(3000))
		for j := range body {
			body[j] = byte(rng.Uint32())
		}
		if i == 0 {
			body = nil
		}
		w := want{rng.Uint64(), ids.GroupID(rng.Uint32()), uint8(rng.Uint32()), body}
		wants = append(wants, w)
		stream = AppendFrame(stream, w.cluster, w.group, w.typ, w.body)
	}
	// Decode the concatenation; at every cut short of a frame's end the decoder must
	// ask for more bytes rather than fail or succeed.
	for i, w := range wants {
		size := FrameHeaderSize + len(w.body)
		for _, cut := range []int{0, 1, 3, 4, 5, FrameHeaderSize - 1, size - 1} {
			if cut < 0 || cut >= size {
				continue
			}
			if _, _, _, err := DecodeFrame(stream[:cut], 0); !errors.Is(err, ErrNeedMore) {
				t.Fatalf("frame %d cut at %d: err = %v, want ErrNeedMore", i, cut, err)
			}
		}
		h, body, n, err := DecodeFrame(stream, 0)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if n != size || h.Version != FrameVersion || h.ClusterID != w.cluster || h.Group != w.group ||
			h.Type != w.typ || !bytes.Equal(body, w.body) {
			t.Fatalf("frame %d: got %+v n=%d len(body)=%d, want %+v", i, h, n, len(body), w)
		}
		stream = stream[n:]
	}
	if len(stream) != 0 {
		t.Fatalf("%d bytes left over", len(stream))
	}
}

func TestDecodeFrameRejects(t *testing.T) {
	good := AppendFrame(nil, 7, 3, 1, []byte("hello"))
	withLen := func(l uint32) []byte {
		b := bytes.Clone(good)
		binary.BigEndian.PutUint32(b, l)
		return b
	}
	withVersion := func(v byte) []byte {
		b := bytes.Clone(good)
		b[4] = v
		return b
	}
	cases := []struct {
		name string
		b    []byte
		max  int
		want error
	}{
		{"length over limit", withLen(100), 64, ErrFrameTooLarge},
		{"length at limit is fine but incomplete", withLen(60), 64, ErrNeedMore},
		{"max uint32 length", withLen(^uint32(0)), 0, ErrFrameTooLarge},
		{"max uint32 length, prefix only", withLen(^uint32(0))[:4], 0, ErrFrameTooLarge},
		{"length under header", withLen(FrameHeaderSize - 5), 0, ErrShortFrame},
		{"zero length", withLen(0), 0, ErrShortFrame},
		{"version 0", withVersion(0), 0, ErrBadVersion},
		{"version 2", withVersion(2), 0, ErrBadVersion},
		{"bad version seen before the frame is complete", withVersion(9)[:6], 0, ErrBadVersion},
		{"limit below header", good, FrameHeaderSize - 1, ErrFrameTooLarge},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, n, err := DecodeFrame(c.b, c.max)
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			if n != 0 {
				t.Fatalf("n = %d on error", n)
			}
			invalid := errors.Is(err, ErrInvalidFrame)
			if invalid == errors.Is(c.want, ErrNeedMore) {
				t.Fatalf("errors.Is(%v, ErrInvalidFrame) = %v", err, invalid)
			}
		})
	}
	if _, _, n, err := DecodeFrame(good, len(good)); err != nil || n != len(good) {
		t.Fatalf("frame exactly at the limit: n=%d err=%v", n, err)
	}
	if MaxBodyBytes(len(good)) != len("hello") {
		t.Fatalf("MaxBodyBytes = %d", MaxBodyBytes(len(good)))
	}
}

func TestHelloRoundTrip(t *testing.T) {
	in := hello{Protocol: ProtocolVersion, ClusterID: 1 << 60, NodeID: 42, Auth: []byte("proof")}
	out, err := decodeHello(encodeHello(in))
	if err != nil {
		t.Fatal(err)
	}
	if out.Protocol != in.Protocol || out.ClusterID != in.ClusterID || out.NodeID != in.NodeID ||
		!bytes.Equal(out.Auth, in.Auth) {
		t.Fatalf("got %+v, want %+v", out, in)
	}
	// A later protocol may append fields; they are ignored.
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	_ = enc.EncodeArrayLen(6)
	_ = enc.EncodeUint(1)
	_ = enc.EncodeUint(5)
	_ = enc.EncodeUint(6)
	_ = enc.EncodeBytes(nil)
	_ = enc.EncodeString("future")
	_ = enc.EncodeUint(99)
	if h, err := decodeHello(buf.Bytes()); err != nil || h.NodeID != 6 || h.ClusterID != 5 {
		t.Fatalf("extended hello: %+v, %v", h, err)
	}
}

func TestDecodeHelloRejects(t *testing.T) {
	enc := func(f func(e *msgpack.Encoder)) []byte {
		var buf bytes.Buffer
		f(msgpack.NewEncoder(&buf))
		return buf.Bytes()
	}
	cases := map[string][]byte{
		"empty":           nil,
		"not an array":    enc(func(e *msgpack.Encoder) { _ = e.EncodeUint(1) }),
		"too few fields":  enc(func(e *msgpack.Encoder) { _ = e.EncodeArrayLen(3) }),
		"too many fields": enc(func(e *msgpack.Encoder) { _ = e.EncodeArrayLen(1000) }),
		// array32 header claiming 4 billion elements: must not allocate for them.
		"huge array": {0xdd, 0xff, 0xff, 0xff, 0xff},
		"truncated":  encodeHello(hello{Protocol: 1, ClusterID: 1, NodeID: 2})[:3],
		"protocol wraps uint32": enc(func(e *msgpack.Encoder) {
			_ = e.EncodeArrayLen(4)
			_ = e.EncodeUint(1<<32 + 1)
			_ = e.EncodeUint(1)
			_ = e.EncodeUint(2)
			_ = e.EncodeBytes(nil)
		}),
		// bin32 header claiming 1 GiB with 3 bytes behind it: msgpack would allocate 1 GiB.
		"auth length lies": append(enc(func(e *msgpack.Encoder) {
			_ = e.EncodeArrayLen(4)
			_ = e.EncodeUint(1)
			_ = e.EncodeUint(1)
			_ = e.EncodeUint(2)
		}), 0xc6, 0x40, 0x00, 0x00, 0x00, 1, 2, 3),
		"auth over limit": enc(func(e *msgpack.Encoder) {
			_ = e.EncodeArrayLen(4)
			_ = e.EncodeUint(1)
			_ = e.EncodeUint(1)
			_ = e.EncodeUint(2)
			_ = e.EncodeBytes(make([]byte, helloAuthBytesMax+1))
		}),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			allocs := testing.AllocsPerRun(1, func() { _, _ = decodeHello(b) })
			if _, err := decodeHello(b); !errors.Is(err, ErrBadHello) || !errors.Is(err, ErrInvalidFrame) {
				t.Fatalf("err = %v, want ErrBadHello", err)
			}
			if allocs > 20 {
				t.Fatalf("%v allocations decoding a hostile hello", allocs)
			}
		})
	}
}

// FuzzDecodeFrame: DecodeFrame never panics, never reads past its input, and every
// frame it accepts re-encodes to exactly the bytes it consumed. The seed corpus is in
// testdata/fuzz/FuzzDecodeFrame.
func FuzzDecodeFrame(f *testing.F) {
	f.Add(AppendFrame(nil, 1, 0, 0, nil), 0)
	f.Add(AppendFrame(nil, 9, 77, 3, []byte("body")), 64)
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1}, 0)
	f.Fuzz(func(t *testing.T, b []byte, max int) {
		h, body, n, err := DecodeFrame(b, max)
		if err != nil {
			if n != 0 || body != nil {
				t.Fatalf("error %v with n=%d body=%d bytes", err, n, len(body))
			}
			if errors.Is(err, ErrNeedMore) == errors.Is(err, ErrInvalidFrame) {
				t.Fatalf("error %v is neither (or both) need-more and invalid", err)
			}
			return
		}
		if n < FrameHeaderSize || n > len(b) || n > normMax(max) {
			t.Fatalf("n = %d for %d input bytes, max %d", n, len(b), max)
		}
		again := AppendFrame(nil, h.ClusterID, h.Group, h.Type, body)
		if !bytes.Equal(again, b[:n]) {
			t.Fatalf("re-encoded frame differs:\n got %x\nwant %x", again, b[:n])
		}
	})
}

// FuzzDecodeHello: the Hello decoder faces unauthenticated input; it must never panic
// and whatever it accepts must survive a round trip.
func FuzzDecodeHello(f *testing.F) {
	f.Add(encodeHello(hello{Protocol: 1, ClusterID: 3, NodeID: 4}))
	f.Add(encodeHello(hello{Protocol: 1, ClusterID: 3, NodeID: 4, Auth: []byte("x")}))
	f.Add([]byte{0xdd, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := decodeHello(b)
		if err != nil {
			return
		}
		if len(h.Auth) > helloAuthBytesMax {
			t.Fatalf("auth of %d bytes accepted", len(h.Auth))
		}
		h2, err := decodeHello(encodeHello(h))
		if err != nil || h2.Protocol != h.Protocol || h2.ClusterID != h.ClusterID || h2.NodeID != h.NodeID ||
			!bytes.Equal(h2.Auth, h.Auth) {
			t.Fatalf("round trip: %+v -> %+v, %v", h, h2, err)
		}
	})
}
