package group

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/statemachine"
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
		{Type: MsgCheckpointOffer, Data: []byte("manifest")},
		{Type: MsgChunkReq, Image: 100, File: 2, Offset: 4096, Max: 4096},
		{Type: MsgChunk, Image: 100, Data: []byte("chunk")},
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
		if len(m.Data) == 0 && len(again.Data) == 0 {
			m.Data, again.Data = nil, nil
		}
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

// FuzzDecodeSystemState: a system state comes from a trim record on disk and from
// a peer's checkpoint manifest.
func FuzzDecodeSystemState(f *testing.F) {
	f.Add(EncodeSystemState(SystemState{}))
	f.Add(EncodeSystemState(SystemState{
		Master:  statemachine.MasterState{Master: 2, Version: 17, Lease: time.Second},
		Members: statemachine.Membership{Voters: []ids.NodeID{1, 2, 3}, Followers: []ids.NodeID{4}, Version: 9},
	}))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := DecodeSystemState(b)
		if err != nil {
			if !errors.Is(err, ErrBadSystemState) {
				t.Fatalf("error %v does not wrap ErrBadSystemState", err)
			}
			return
		}
		again, err := DecodeSystemState(EncodeSystemState(s))
		if err != nil || !reflect.DeepEqual(again, s) {
			t.Fatalf("system state does not round-trip: %v\n%+v\n%+v", err, s, again)
		}
	})
}
