package logstore

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"go.uber.org/zap"

	"github.com/multipaxos/engine/ids"
)

// BenchmarkGroupCommit: writers each commit one 100-byte Sync entry at a time
// and wait for its done, as acceptors do; ns/op is per commit across all writers.
// writes/fsync is what group commit buys. depth is Options.CommitPipelineDepth:
// a committer that takes the queue once the previous fsync is done (1, the
// default) against one that builds the next batch while an fsync runs (2).
//
//	go test -run XXX -bench GroupCommit -benchtime 3s ./logstore/
func BenchmarkGroupCommit(b *testing.B) {
	for _, writers := range []int{1, 64} {
		for _, depth := range []int{1, 2} {
			b.Run(fmt.Sprintf("writers=%d/depth=%d", writers, depth), func(b *testing.B) {
				benchGroupCommit(b, writers, Options{CommitPipelineDepth: depth})
			})
		}
	}
}

func benchGroupCommit(b *testing.B, writers int, opts Options) {
	opts.Logger = zap.NewNop()
	s, err := Open(b.TempDir(), opts)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	value := []byte(strings.Repeat("v", 100))
	var next atomic.Int64
	var wg sync.WaitGroup
	b.SetBytes(int64(len(value)))
	b.ResetTimer()
	before := s.Stats()
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			done := make(chan error, 1)
			for i := next.Add(1) - 1; i < int64(b.N); i = next.Add(1) - 1 {
				s.Commit(Batch{Sync: true, Writes: []GroupWrite{{
					Group:   ids.GroupID(w),
					Entries: []Entry{{Instance: ids.InstanceID(i), Ballot: ids.Ballot{Number: 1, Node: 1}, Value: value}},
				}}}, func(err error) { done <- err })
				if err := <-done; err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	after := s.Stats()
	if syncs := after.Syncs - before.Syncs; syncs > 0 {
		b.ReportMetric(float64(after.Writes-before.Writes)/float64(syncs), "writes/fsync")
	}
}
