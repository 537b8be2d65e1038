package main

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/instance"
	"github.com/multipaxos/engine/logstore"
	"github.com/multipaxos/engine/netio"
)

// The hot paths of one instance, each on its own:
//
//	go test -run XXX -bench . -benchmem ./benchmarks/

var value100 = []byte(strings.Repeat("v", 100))

// BenchmarkFrame: one 100-byte-body frame encoded into a reused buffer, and decoded.
func BenchmarkFrame(b *testing.B) {
	b.Run("encode", func(b *testing.B) {
		buf := make([]byte, 0, 256)
		b.SetBytes(int64(netio.FrameHeaderSize + len(value100)))
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			buf = netio.AppendFrame(buf[:0], 1, ids.GroupID(i), 3, value100)
		}
	})
	b.Run("decode", func(b *testing.B) {
		frame := netio.AppendFrame(nil, 1, 7, 3, value100)
		b.SetBytes(int64(len(frame)))
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, _, _, err := netio.DecodeFrame(frame, 0); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func acceptMsg(inst ids.InstanceID, v []byte) instance.Message {
	return instance.Message{Type: instance.MsgAccept, From: 1, To: 2, Next: inst, Instance: inst,
		Ballot: ids.Ballot{Number: 1, Node: 1}, Value: v}
}

// BenchmarkCodec: the message body of an Accept carrying a 100-byte value.
func BenchmarkCodec(b *testing.B) {
	m := acceptMsg(12345, value100)
	b.Run("encode", func(b *testing.B) {
		c := instance.NewCodec()
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			m.Instance = ids.InstanceID(i)
			_ = c.Encode(&m)
		}
	})
	b.Run("decode", func(b *testing.B) {
		c := instance.NewCodec()
		body := append([]byte(nil), c.Encode(&m)...)
		b.SetBytes(int64(len(body)))
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := c.Decode(instance.MsgAccept, body); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkAcceptorStep: one steady-state instance at an acceptor - Step of the
// proposer's Accept, Ready (the entry to persist and the Accepted reply), Step of
// the Chosen, Ready (the committed value) - so each op moves the acceptor one
// instance on.
func BenchmarkAcceptorStep(b *testing.B) {
	c, err := instance.New(instance.Config{Self: 2, Members: []ids.NodeID{1, 2, 3}}, instance.Recovered{})
	if err != nil {
		b.Fatal(err)
	}
	sum := instance.Checksum(value100)
	ballot := ids.Ballot{Number: 1, Node: 1}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		inst := c.Next()
		if err := c.Step(acceptMsg(inst, value100)); err != nil {
			b.Fatal(err)
		}
		rd := c.Ready()
		if len(rd.Entries) != 1 || len(rd.Messages) != 1 {
			b.Fatalf("instance %d: Ready after Accept has %d entries, %d messages", inst, len(rd.Entries), len(rd.Messages))
		}
		if err := c.Step(instance.Message{Type: instance.MsgChosen, From: 1, To: 2, Next: inst, Instance: inst,
			Ballot: ballot, Checksum: sum}); err != nil {
			b.Fatal(err)
		}
		if rd := c.Ready(); len(rd.Committed) != 1 {
			b.Fatalf("instance %d: not committed after Chosen", inst)
		}
	}
}

// BenchmarkGroupCommit: writers each commit one synced 100-byte entry at a time
// and wait for it, as acceptors do; ns/op is per commit across all writers and
// writes/fsync is what group commit buys.
func BenchmarkGroupCommit(b *testing.B) {
	for _, writers := range []int{1, 64} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			s, err := logstore.Open(b.TempDir(), logstore.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			var next atomic.Int64
			var wg sync.WaitGroup
			b.SetBytes(int64(len(value100)))
			before := s.Stats()
			b.ResetTimer()
			for w := 0; w < writers; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					done := make(chan error, 1)
					for i := next.Add(1) - 1; i < int64(b.N); i = next.Add(1) - 1 {
						s.Commit(logstore.Batch{Sync: true, Writes: []logstore.GroupWrite{{
							Group:   ids.GroupID(w),
							Entries: []logstore.Entry{{Instance: ids.InstanceID(i), Ballot: ids.Ballot{Number: 1, Node: 1}, Value: value100}},
						}}}, func(err error) { done <- err })
						if err := <-done; err != nil {
							b.Error(err)
							return
						}
					}
				}(w)
			}
			wg.Wait()
			b.StopTimer()
			after := s.Stats()
			if syncs := after.Syncs - before.Syncs; syncs > 0 {
				b.ReportMetric(float64(after.Writes-before.Writes)/float64(syncs), "writes/fsync")
			}
		})
	}
}
