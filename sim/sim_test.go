package sim

import (
	"flag"
	"fmt"
	"runtime/debug"
	"testing"
	"time"

	"github.com/multipaxos/engine/group"
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
		// A fifth of the seeds trim their logs and rebuild lagging members from
		// checkpoint images, among all the other faults.
		Checkpoints: seed%5 == 2,
		// Some restarts find a chosen log record damaged, to be repaired from peers.
		Corrupt: seed%3 == 2,
		// Every run's reads and writes also go through porcupine (porcupine.go).
		Porcupine: true,
	}
	return o
}

// runSeed runs one simulation and turns a panic inside it (guard re-raises every
// panic that is not a planned crash) into a test failure that names the seed and
// the command that replays it, with the panic value and its stack.
func runSeed(t *testing.T, o Options, replay string) Result {
	t.Helper()
	defer func() {
		if p := recover(); p != nil {
			t.Fatalf("seed %d: panic: %v\n%s\nreplay: %s", o.Seed, p, debug.Stack(), replay)
		}
	}()
	return Run(o)
}

// TestSimulation runs whole clusters from many seeds and checks agreement, validity,
// acknowledged-write durability and convergence (see the package doc).
func TestSimulation(t *testing.T) {
	first, n := uint64(1), uint64(*seedsFlag)
	if *seedFlag != 0 {
		first, n = *seedFlag, 1
	}
	var chosen, acked, crashes, reads, masters, corruptions, porcOps, porcMax int
	for seed := first; seed < first+n; seed++ {
		o := opts(seed)
		if *traceFlag {
			o.Trace = func(line string) { t.Log(line) }
		}
		replay := fmt.Sprintf("go test ./sim -run TestSimulation -seed %d", seed)
		r := runSeed(t, o, replay)
		if r.Violation != nil {
			t.Fatalf("%v\nreplay: %s", r.Violation, replay)
		}
		chosen += r.Chosen
		acked += r.Acked
		crashes += r.Crashes
		reads += r.Reads
		masters += r.Masters
		corruptions += r.Corruptions
		porcOps += r.PorcupineOps
		porcMax = max(porcMax, r.PorcupineOps)
		if r.PorcupineTimeouts > 0 || (o.Porcupine && r.PorcupineOps == 0) {
			t.Fatalf("seed %d: porcupine did not check the history (%d timeouts, %d operations)\nreplay: %s", seed, r.PorcupineTimeouts, r.PorcupineOps, replay)
		}
	}
	if acked == 0 || chosen == 0 {
		t.Fatal("nothing was chosen: the simulation is vacuous")
	}
	t.Logf("%d seeds: %d instances chosen, %d proposals acknowledged, %d crashes, %d reads checked, %d master leases, %d log records corrupted and repaired; porcupine: %d operations checked, at most %d in a run, no timeouts",
		n, chosen, acked, crashes, reads, masters, corruptions, porcOps, porcMax)
}

// catchUpOpts are the options of a run in which the last node is cut off for
// `isolate` while its peers choose and trim thousands of instances.
func catchUpOpts(seed uint64, dir string, isolate time.Duration) Options {
	o := opts(seed)
	o.Checkpoints, o.Dir = true, dir
	o.Duration = isolate + time.Second
	o.IsolateLast = isolate
	o.ProposeEvery = 2 * time.Millisecond // about what two groups choose one by one
	o.BatchCountMax = 1
	o.Reads = false // checked in TestSimulation; here they would only slow the run
	o.Groups = 2
	o.Membership = false // the isolated node must stay a member to be checked
	// Faults among the others stop progress while one member is cut off (no
	// quorum); keep them to loss, duplication, reordering and, with five nodes,
	// crashes.
	o.Partitions, o.Crashes = false, o.Nodes == 5
	return o
}

// TestCatchUpByCheckpoint cuts one member off while thousands of instances are
// chosen and its peers trim their logs, then heals it: it must catch up through a
// checkpoint image and the log after it, under loss, duplication, reordering and
// crashes, and end with the same state as the others (finalChecks compares the
// digests and every acknowledged write).
func TestCatchUpByCheckpoint(t *testing.T) {
	first, n := uint64(1), uint64(max(1, *seedsFlag/40))
	if *seedFlag != 0 {
		first, n = *seedFlag, 1
	}
	var chosen, installs, trims int
	for seed := first; seed < first+n; seed++ {
		o := catchUpOpts(seed, t.TempDir(), 19*time.Second)
		if *traceFlag {
			o.Trace = func(line string) { t.Log(line) }
		}
		replay := fmt.Sprintf("go test ./sim -run TestCatchUpByCheckpoint -args -seed %d", seed)
		r := runSeed(t, o, replay)
		if r.Violation != nil {
			t.Fatalf("%v\nreplay: %s", r.Violation, replay)
		}
		if r.Installs == 0 || r.Trims == 0 {
			t.Fatalf("seed %d: %d instances chosen, %d images installed, %d logs trimmed: the isolated member did not need a checkpoint",
				seed, r.Chosen, r.Installs, r.Trims)
		}
		chosen += r.Chosen
		installs += r.Installs
		trims += r.Trims
		t.Logf("seed %d (%d nodes): %d instances, %d images installed (transfers and restarts), %d logs trimmed, %d crashes",
			seed, o.Nodes, r.Chosen, r.Installs, r.Trims, r.Crashes)
	}
	t.Logf("%d seeds: %d instances chosen, %d images installed (transfers and restarts), %d (node, group) logs trimmed", n, chosen, installs, trims)
}

// TestCrashPoints walks every named persistence step (group.CrashPoints): for
// each, clusters whose members are killed exactly there - at different hits, with
// checkpoints, trims and image installs going on - must keep every check.
func TestCrashPoints(t *testing.T) {
	seeds := uint64(max(4, *seedsFlag/25))
	for _, point := range group.CrashPoints {
		t.Run(point, func(t *testing.T) {
			hits, crashes := 0, 0
			first, last := uint64(1), seeds
			if *seedFlag != 0 {
				first, last = *seedFlag, *seedFlag
			}
			for seed := first; seed <= last; seed++ {
				o := catchUpOpts(seed, t.TempDir(), 2*time.Second)
				o.Crashes = false // only the crash point kills
				o.CrashAt, o.CrashEvery = point, 1+int(seed%3)
				replay := fmt.Sprintf("go test ./sim -run 'TestCrashPoints/%s' -args -seed %d", point, seed)
				r := runSeed(t, o, replay)
				if r.Violation != nil {
					t.Fatalf("%v\nreplay: %s", r.Violation, replay)
				}
				hits += r.CrashPointHits
				crashes += r.Crashes
			}
			if crashes == 0 {
				t.Fatalf("no member was ever killed at %q (%d hits in %d seeds)", point, hits, seeds)
			}
			t.Logf("%d seeds: %d hits, %d kills", seeds, hits, crashes)
		})
	}
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
		{"ClaimWhileLeaseValid", instance.Knobs{ClaimWhileLeaseValid: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			first, last := uint64(1), uint64(1000)
			if *seedFlag != 0 {
				first, last = *seedFlag, *seedFlag
			}
			for seed := first; seed <= last; seed++ {
				o := opts(seed)
				o.Knobs = tc.knobs
				o.LeaseSafetyOff = tc.name == "LeaseTooLong"
				// Membership changes and transfers make the others' runs calmer
				// (fewer duelling proposers); the planted protocol bugs need duels.
				o.Membership, o.Transfers, o.Hunt = false, false, true
				// Repairs and image installs take members out of the vote for a
				// while: fewer duels, and the protocol bugs need duels.
				o.Corrupt, o.Checkpoints = false, false
				replay := fmt.Sprintf("go test ./sim -run 'TestCheckerBites/%s' -args -seed %d", tc.name, seed)
				if r := runSeed(t, o, replay); r.Violation != nil {
					t.Logf("found at seed %d: %v", seed, r.Violation)
					return
				}
			}
			t.Fatalf("the planted bug went unnoticed for seeds %d..%d", first, last)
		})
	}
}

// TestReplayIsExact: a seed is a complete description of a run.
func TestReplayIsExact(t *testing.T) {
	for _, seed := range []uint64{7, 8} {
		replay := "go test ./sim -run TestReplayIsExact"
		a, b := runSeed(t, opts(seed), replay), runSeed(t, opts(seed), replay)
		if a.Violation != nil || a != b {
			t.Fatalf("seed %d: two runs differ or fail:\n%+v\n%+v", seed, a, b)
		}
	}
}

// TestPorcupineBites: with the linear read checks off, porcupine alone must find
// the stale lease reads the LeaseReadAnywhere knob plants, within the seed budget,
// and must pass the same seeds without the knob (the model is not just strict).
func TestPorcupineBites(t *testing.T) {
	first, last := uint64(1), uint64(200)
	if *seedFlag != 0 {
		first, last = *seedFlag, *seedFlag
	}
	for seed := first; seed <= last; seed++ {
		o := opts(seed)
		o.Knobs = instance.Knobs{LeaseReadAnywhere: true}
		o.NoReadCheck = true
		o.Membership, o.Transfers, o.Hunt = false, false, true
		o.Corrupt, o.Checkpoints = false, false
		replay := fmt.Sprintf("go test ./sim -run TestPorcupineBites -args -seed %d", seed)
		r := runSeed(t, o, replay)
		if r.PorcupineTimeouts > 0 {
			t.Fatalf("seed %d: porcupine timed out on %d operations", seed, r.PorcupineOps)
		}
		if r.PorcupineViolation != nil {
			t.Logf("found at seed %d: %v", seed, r.PorcupineViolation)
			o.Knobs = instance.Knobs{}
			if r := runSeed(t, o, replay); r.Violation != nil || r.PorcupineOps == 0 {
				t.Fatalf("seed %d without the knob: %v (%d operations checked)", seed, r.Violation, r.PorcupineOps)
			}
			return
		}
		if r.Violation != nil {
			t.Logf("seed %d: another check fired first: %v", seed, r.Violation)
		}
	}
	t.Fatalf("porcupine missed the stale lease reads for seeds %d..%d", first, last)
}
