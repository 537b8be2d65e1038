package netio

import (
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/multipaxos/engine/ids"
)

// BenchmarkTCPSend measures one-way throughput of small frames between two transports
// on loopback, from `senders` goroutines, and reports how many frames shared each
// write (the batching factor).
func BenchmarkTCPSend(b *testing.B) {
	for _, size := range []int{100, 4096} {
		b.Run(map[int]string{100: "100B", 4096: "4KiB"}[size], func(b *testing.B) {
			addrs := freeAddrs(b, 2)
			peers := map[ids.NodeID]string{1: addrs[0], 2: addrs[1]}
			var got atomic.Int64
			mk := func(id ids.NodeID, h Handler) *TCPTransport {
				tr, err := StartTCP(Options{NodeID: id, ClusterID: 1, ListenAddr: peers[id], Peers: peers, Handler: h})
				if err != nil {
					b.Fatal(err)
				}
				return tr
			}
			t1 := mk(1, func(ids.NodeID, ids.GroupID, uint8, []byte) {})
			t2 := mk(2, func(ids.NodeID, ids.GroupID, uint8, []byte) { got.Add(1) })
			defer t1.Close()
			defer t2.Close()
			for !t1.Connected(2) {
				runtime.Gosched()
			}
			body := make([]byte, size)
			b.SetBytes(int64(size))
			b.ResetTimer()
			sent := int64(0)
			b.RunParallel(func(pb *testing.PB) {
				n := int64(0)
				for pb.Next() {
					for !t1.Send(2, ids.GroupID(n%64), 1, body) {
						runtime.Gosched() // queue full: let the loop drain
					}
					n++
				}
				atomic.AddInt64(&sent, n)
			})
			for got.Load() < sent {
				runtime.Gosched()
			}
			b.StopTimer()
			s := t1.Stats()
			if s.Writes > 0 {
				b.ReportMetric(float64(s.FramesSent)/float64(s.Writes), "frames/write")
			}
		})
	}
}
