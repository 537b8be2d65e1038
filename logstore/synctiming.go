package logstore

import (
	"sync/atomic"
	"time"
)

// SyncLatencyBounds are the upper bounds of the buckets of SyncLatency: 100 µs
// doubling to 3.3 s (an fsync costs 0.1-2 ms on a healthy local SSD, tens of ms
// on a network disk).
var SyncLatencyBounds = func() []time.Duration {
	b := make([]time.Duration, 16)
	for i := range b {
		b[i] = 100 * time.Microsecond << i
	}
	return b
}()

// SyncLatency is a histogram of the WAL fsyncs a PebbleStore made, timed at the
// file system (the same fsyncs Stats.Syncs counts: successful ones).
type SyncLatency struct {
	// Cumulative[i] is the number of fsyncs that took at most
	// SyncLatencyBounds[i].
	Cumulative []uint64
	Count      uint64        // every fsync, those above the last bound included
	Sum        time.Duration // their total duration
}

// syncTiming is the live histogram behind SyncLatency, updated by
// syncCountingFile without locks.
type syncTiming struct {
	buckets [17]atomic.Uint64 // per bound, then one above the last
	sumNS   atomic.Uint64
}

func (t *syncTiming) observe(d time.Duration) {
	if t == nil {
		return
	}
	i := 0
	for i < len(SyncLatencyBounds) && d > SyncLatencyBounds[i] {
		i++
	}
	t.buckets[i].Add(1)
	t.sumNS.Add(uint64(max(d, 0)))
}

func (t *syncTiming) snapshot() SyncLatency {
	l := SyncLatency{Cumulative: make([]uint64, len(SyncLatencyBounds))}
	for i := range t.buckets {
		l.Count += t.buckets[i].Load()
		if i < len(l.Cumulative) {
			l.Cumulative[i] = l.Count
		}
	}
	l.Sum = time.Duration(t.sumNS.Load())
	return l
}

// SyncLatency returns the histogram of the WAL fsyncs' durations since Open.
// Count is the sum of the buckets; Sum is read after them and may already
// include an fsync that they do not.
func (s *PebbleStore) SyncLatency() SyncLatency { return s.ext.timing.snapshot() }
