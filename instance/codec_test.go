package instance

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/multipaxos/engine/ids"
)

func sampleMessages() []Message {
	b := ids.Ballot{Number: 7, Node: 2}
	return []Message{
		{Type: MsgPrepare, Next: 3, Instance: 3, Ballot: b},
		{Type: MsgPromise, Next: 3, Instance: 3, Ballot: b, AcceptedBallot: ids.Ballot{Number: 5, Node: 1}, Value: []byte("old")},
		{Type: MsgAccepted, Next: 9, Instance: 3, Ballot: b, Reject: true, Promised: ids.Ballot{Number: 1 << 40, Node: 3}},
		{Type: MsgChosen, Next: 4, Instance: 3, Ballot: b, Checksum: 0xdeadbeef},
		{Type: MsgLearnValues, Next: 10, Entries: []Entry{{Instance: 3, Ballot: b, Value: []byte("x")}, {Instance: 4, Ballot: b, Value: bytes.Repeat([]byte("y"), 300)}}},
	}
}

func TestCodecRoundTrip(t *testing.T) {
	c := NewCodec()
	for _, m := range sampleMessages() {
		got, err := c.Decode(m.Type, append([]byte(nil), c.Encode(&m)...))
		if err != nil {
			t.Fatalf("%v: %v", m.Type, err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, m)
		}
	}
}

func TestCodecRejectsLies(t *testing.T) {
	c := NewCodec()
	m := sampleMessages()[4]
	body := append([]byte(nil), c.Encode(&m)...)
	for cut := 0; cut < len(body); cut++ {
		if _, err := c.Decode(m.Type, body[:cut]); err == nil {
			t.Fatalf("truncated at %d of %d: no error", cut, len(body))
		}
	}
	// A bin32 header claiming 1 GiB must fail without allocating it.
	lie := []byte{0x9c, 0, 0, 0, 0, 0xc2, 0, 0, 0, 0, 0xc6, 0x40, 0, 0, 0}
	if _, err := c.Decode(MsgAccept, lie); err == nil {
		t.Fatal("a 1 GiB bytes claim in 15 bytes was accepted")
	}
	if _, err := c.Decode(0, nil); err == nil {
		t.Fatal("type 0 accepted")
	}
}

func FuzzDecodeMessage(f *testing.F) {
	c := NewCodec()
	for _, m := range sampleMessages() {
		f.Add(uint8(m.Type), append([]byte(nil), c.Encode(&m)...))
	}
	f.Fuzz(func(t *testing.T, typ uint8, body []byte) {
		m, err := c.Decode(MsgType(typ), body)
		if err != nil {
			return
		}
		again, err := c.Decode(m.Type, append([]byte(nil), c.Encode(&m)...))
		if err != nil || !reflect.DeepEqual(again, m) {
			t.Fatalf("accepted body does not round-trip: %v\n%+v\n%+v", err, m, again)
		}
	})
}
