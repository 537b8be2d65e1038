package group

import (
	"reflect"
	"testing"
)

// FuzzDecodeValue: instance values come from peers (in Accepts, learned values and
// forwards); decoding garbage must fail cleanly, and what decodes must round-trip.
func FuzzDecodeValue(f *testing.F) {
	f.Add(encodeValue(nil))
	f.Add(encodeValue([]Command{{ID: RequestID{1, 2}, Kind: KindApp, Data: []byte("x")}, {ID: RequestID{3, 1 << 63}, Kind: KindMaster}}))
	f.Add([]byte{0x92, 0x02, 0xdd, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, v []byte) {
		cmds, err := decodeValue(v)
		if err != nil {
			return
		}
		again, err := decodeValue(encodeValue(cmds))
		if err != nil || !reflect.DeepEqual(normalize(again), normalize(cmds)) {
			t.Fatalf("decoded value does not round-trip: %v\n%+v\n%+v", err, cmds, again)
		}
	})
}

// FuzzDecodeGroupMessage covers forwards and read-index messages.
func FuzzDecodeGroupMessage(f *testing.F) {
	for _, m := range []GroupMessage{
		{Type: MsgForward, Hops: 1, Commands: []Command{{ID: RequestID{1, 2}, Data: []byte("a")}}},
		{Type: MsgReadIndex, ID: 7},
		{Type: MsgReadIndexReply, ID: 7, Index: 9, Version: 3},
	} {
		f.Add(m.Type, EncodeGroupMessage(&m))
	}
	f.Fuzz(func(t *testing.T, typ uint8, body []byte) {
		m, err := DecodeGroupMessage(typ, body)
		if err != nil {
			return
		}
		again, err := DecodeGroupMessage(typ, EncodeGroupMessage(&m))
		m.Commands, again.Commands = normalize(m.Commands), normalize(again.Commands)
		if err != nil || !reflect.DeepEqual(again, m) {
			t.Fatalf("decoded message does not round-trip: %v\n%+v\n%+v", err, m, again)
		}
	})
}

// normalize maps empty data to nil: the encoding does not tell them apart.
func normalize(cmds []Command) []Command {
	for i := range cmds {
		if len(cmds[i].Data) == 0 {
			cmds[i].Data = nil
		}
	}
	if len(cmds) == 0 {
		return nil
	}
	return cmds
}
