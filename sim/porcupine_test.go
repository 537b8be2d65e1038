package sim

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/anishathalye/porcupine"
	"github.com/multipaxos/engine/ids"
)

// TestLogModel pins down porcupine's model of a group's log on small histories.
func TestLogModel(t *testing.T) {
	w := func(g, pos int, call, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: logOp{g: ids.GroupID(g), write: true}, Call: call, Output: pos, Return: ret}
	}
	r := func(g, count int, call, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: logOp{g: ids.GroupID(g), lease: true}, Call: call, Output: count, Return: ret}
	}
	for _, tc := range []struct {
		name string
		ok   bool
		h    []porcupine.Operation
	}{
		{"read concurrent with write sees either", true, []porcupine.Operation{w(0, 1, 0, 10), r(0, 0, 5, 6), r(0, 1, 7, 8)}},
		{"stale read after ack", false, []porcupine.Operation{w(0, 1, 0, 10), r(0, 0, 20, 30)}},
		{"read goes back in time", false, []porcupine.Operation{w(0, 1, 0, 100), r(0, 1, 5, 6), r(0, 0, 7, 8)}},
		{"unacknowledged write may land late", true, []porcupine.Operation{w(0, 1, 0, math.MaxInt64), r(0, 0, 50, 60), r(0, 1, 70, 80)}},
		{"writes out of real-time order", false, []porcupine.Operation{w(0, 2, 0, 10), w(0, 1, 20, 30)}},
		{"groups are separate", true, []porcupine.Operation{w(0, 1, 0, 10), r(1, 0, 20, 30), w(1, 1, 40, 50), r(0, 1, 20, 30)}},
	} {
		if got := porcupine.CheckOperations(logModel, tc.h); got != tc.ok {
			t.Errorf("%s: linearizable = %v, want %v", tc.name, got, tc.ok)
		}
		if got := porcupine.CheckOperations(logModel, tighten(tc.h)); got != tc.ok {
			t.Errorf("%s, tightened: linearizable = %v, want %v", tc.name, got, tc.ok)
		}
	}
}

// TestTightenKeepsVerdict: on random small histories of one group - writes at
// shuffled positions, reads of random counts, random intervals on a coarse clock
// so that ties are common, some writes never answered - porcupine gives the same
// verdict with and without tighten.
func TestTightenKeepsVerdict(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	legal := 0
	for i := 0; i < 3000; i++ {
		var h []porcupine.Operation
		writes := 1 + rng.IntN(5)
		for pos := 1; pos <= writes; pos++ {
			call := rng.Int64N(8)
			ret := call + rng.Int64N(6)
			if rng.IntN(5) == 0 {
				ret = math.MaxInt64
			}
			h = append(h, porcupine.Operation{Input: logOp{write: true}, Call: call, Output: pos, Return: ret})
		}
		for r := rng.IntN(5); r > 0; r-- {
			call := rng.Int64N(10)
			h = append(h, porcupine.Operation{Input: logOp{lease: true}, Call: call, Output: rng.IntN(writes + 1), Return: call + rng.Int64N(5)})
		}
		rng.Shuffle(len(h), func(a, b int) { h[a], h[b] = h[b], h[a] })
		want := porcupine.CheckOperations(logModel, h)
		if got := porcupine.CheckOperations(logModel, tighten(h)); got != want {
			t.Fatalf("history %v: linearizable %v, tightened %v", h, want, got)
		}
		if want {
			legal++
		}
	}
	if legal == 0 || legal == 3000 {
		t.Fatalf("%d of 3000 random histories legal: the test compares nothing", legal)
	}
	t.Logf("3000 random histories, %d linearizable: same verdict after tighten", legal)
}
