package sim

import (
	"flag"
	"testing"
	"time"

	"github.com/multipaxos/engine/instance"
)

var (
	traceFlag = flag.Bool("simtrace", false, "with -seed: log the run's events")
	seedFlag  = flag.Uint64("seed", 0, "run only this seed (replay)")
	seedsFlag = flag.Int("seeds", 200, "number of seeds TestSimulation runs")
)

func opts(seed uint64) Options {
	o := Options{
		Seed:       seed,
		Nodes:      3 + 2*int(seed%2), // odd seeds: 5 nodes
		Groups:     3,
		Duration:   1500 * time.Millisecond,
		NetFaults:  true,
		Partitions: seed%3 != 0,
		Crashes:    true,
		ClockDrift: 0.01,
		Reads:      true,
		Transfers:  seed%4 == 1,
		Membership: seed%3 == 1,
	}
	return o
}

// TestSimulation runs whole clusters from many seeds and checks agreement, validity,
// acknowledged-write durability and convergence (see the package doc).
func TestSimulation(t *testing.T) {
	first, n := uint64(1), uint64(*seedsFlag)
	if *seedFlag != 0 {
		first, n = *seedFlag, 1
	}
	var chosen, acked, crashes, reads, masters int
	for seed := first; seed < first+n; seed++ {
		o := opts(seed)
		if *traceFlag {
			o.Trace = func(line string) { t.Log(line) }
		}
		r := Run(o)
		if r.Violation != nil {
			t.Fatalf("%v\nreplay: go test ./sim -run TestSimulation -seed %d", r.Violation, seed)
		}
		chosen += r.Chosen
		acked += r.Acked
		crashes += r.Crashes
		reads += r.Reads
		masters += r.Masters
	}
	if acked == 0 || chosen == 0 {
		t.Fatal("nothing was chosen: the simulation is vacuous")
	}
	t.Logf("%d seeds: %d instances chosen, %d proposals acknowledged, %d crashes, %d reads checked, %d master leases",
		n, chosen, acked, crashes, reads, masters)
}

// TestCheckerBites plants each known bug and demands that the simulation reports a
// violation within its seed budget.
func TestCheckerBites(t *testing.T) {
	for _, tc := range []struct {
		name  string
		knobs instance.Knobs
	}{
		{"ReplyBeforeDurable", instance.Knobs{ReplyBeforeDurable: true}},
		{"ForgetPromiseOnRestart", instance.Knobs{ForgetPromiseOnRestart: true}},
		{"InferChosenFromNext", instance.Knobs{InferChosenFromNext: true}},
		{"LeaseTooLong", instance.Knobs{}},
		{"LeaseReadAnywhere", instance.Knobs{LeaseReadAnywhere: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for seed := uint64(1); seed <= 1000; seed++ {
				o := opts(seed)
				o.Knobs = tc.knobs
				o.LeaseSafetyOff = tc.name == "LeaseTooLong"
				// Membership changes and transfers make the others' runs calmer
				// (fewer duelling proposers); the planted protocol bugs need duels.
				o.Membership, o.Transfers, o.Hunt = false, false, true
				if r := Run(o); r.Violation != nil {
					t.Logf("found at seed %d: %v", seed, r.Violation)
					return
				}
			}
			t.Fatal("the planted bug went unnoticed for 1000 seeds")
		})
	}
}

// TestReplayIsExact: a seed is a complete description of a run.
func TestReplayIsExact(t *testing.T) {
	for _, seed := range []uint64{7, 8} {
		a, b := Run(opts(seed)), Run(opts(seed))
		if a.Violation != nil || a != b {
			t.Fatalf("seed %d: two runs differ or fail:\n%+v\n%+v", seed, a, b)
		}
	}
}
