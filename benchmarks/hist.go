package main

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// Histogram is a log-linear latency histogram in nanoseconds, safe for concurrent
// Record: every power of two is split into 2^histSubBits equal buckets, so a
// recorded value is known to within 1/128 (0.8%) of itself, and values under 128 ns
// exactly. That is far finer than the sub-millisecond resolution the results need,
// and Record is one atomic add, so every proposal of the window is counted (no
// sampling) and the percentiles are over all of them.
type Histogram struct {
	counts [histBuckets]atomic.Uint64
}

const (
	histSubBits = 7
	histSub     = 1 << histSubBits
	histBuckets = (64 - histSubBits + 1) << histSubBits
)

// histIndex maps v to its bucket.
func histIndex(v uint64) int {
	if v < histSub {
		return int(v)
	}
	shift := bits.Len64(v) - histSubBits - 1
	return (shift+1)<<histSubBits + int(v>>uint(shift)) - histSub
}

// histBounds returns the lowest value of bucket i and the bucket's width.
func histBounds(i int) (lo, width uint64) {
	if i < histSub {
		return uint64(i), 1
	}
	shift := uint(i>>histSubBits) - 1
	mant := uint64(i&(histSub-1)) + histSub
	return mant << shift, 1 << shift
}

// Record counts one latency.
func (h *Histogram) Record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.counts[histIndex(uint64(d))].Add(1)
}

// Count is the number of recorded values.
func (h *Histogram) Count() uint64 {
	var n uint64
	for i := range h.counts {
		n += h.counts[i].Load()
	}
	return n
}

// Quantile returns the value at quantile q (0 < q <= 1) with the rank rule of the
// Dragonboat peer harness: the round(q*n)-th smallest value (at least the first).
// The value reported is the middle of its bucket. 0 when empty.
func (h *Histogram) Quantile(q float64) time.Duration {
	n := h.Count()
	if n == 0 {
		return 0
	}
	rank := uint64(q*float64(n) + 0.5)
	if rank < 1 {
		rank = 1
	}
	if rank > n {
		rank = n
	}
	var cum uint64
	for i := range h.counts {
		cum += h.counts[i].Load()
		if cum >= rank {
			lo, w := histBounds(i)
			return time.Duration(lo + (w-1)/2)
		}
	}
	return 0 // not reached
}

// Merge adds o's counts to h.
func (h *Histogram) Merge(o *Histogram) {
	for i := range o.counts {
		if c := o.counts[i].Load(); c != 0 {
			h.counts[i].Add(c)
		}
	}
}

// Sparse returns the non-empty buckets as [index, count] pairs (for JSON).
func (h *Histogram) Sparse() [][2]uint64 {
	var out [][2]uint64
	for i := range h.counts {
		if c := h.counts[i].Load(); c != 0 {
			out = append(out, [2]uint64{uint64(i), c})
		}
	}
	return out
}

// AddSparse adds counts in the form Sparse returns; out-of-range indexes are ignored.
func (h *Histogram) AddSparse(s [][2]uint64) {
	for _, p := range s {
		if p[0] < histBuckets {
			h.counts[p[0]].Add(p[1])
		}
	}
}
