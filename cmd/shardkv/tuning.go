package main

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/node"
)

// The engine's defaults (node.Options), shown in --help. shardkv passes every
// value to the engine explicitly.
const (
	defaultLease           = time.Second
	defaultTick            = 50 * time.Millisecond
	defaultClockDrift      = 0.01
	defaultBatchCount      = 1024
	defaultBatchBytes      = 4 << 20
	defaultPendingMax      = 65536
	defaultCheckpointEvery = 10000
	defaultKeepInstances   = 500
	defaultTeachRate       = 64 << 20
	defaultLogMemTable     = 64 << 20

	// Bounds shardkv cannot move: it runs ValueBytesMax (1 MiB), MaxFrameBytes
	// (16 MiB) and the protocol timeouts (LearnRetryTimeout 200 ms is the
	// shortest) at the engine's defaults.
	valueBytesMax  = 1 << 20
	batchBytesMost = 8 << 20 // MaxFrameBytes/2
	tickMost       = 200 * time.Millisecond
)

// tuning holds the engine tuning flags. demo has the first group, serve all.
type tuning struct {
	serve           bool
	lease, tick     time.Duration
	batchCount      int
	batchBytes      sizeFlag
	pendingMax      int
	checkpointEvery int
	keepInstances   int
	teachRate       rateFlag
	// serve only
	clockDrift      float64
	logMemTable     sizeFlag
	mayBecomeMaster bool
}

func addTuningFlags(fs *flagSet, serve bool) *tuning {
	t := &tuning{serve: serve, batchBytes: defaultBatchBytes, teachRate: defaultTeachRate,
		clockDrift: defaultClockDrift, logMemTable: defaultLogMemTable, mayBecomeMaster: true}
	fs.DurationVar(&t.lease, "lease", defaultLease, "master lease `DURATION`: a failed master is replaced about one lease after\nits last renewal; shorter fails over faster, but GC pauses and slow disks\nthen cause needless master changes. At least two --tick-interval")
	fs.DurationVar(&t.tick, "tick-interval", defaultTick, "the protocol clock's `DURATION`, 1ms .. 200ms; the protocol timeouts are\nrounded to whole ticks")
	fs.IntVar(&t.batchCount, "batch-count", defaultBatchCount, "most commands (`N`) one Paxos instance carries")
	fs.Var(&t.batchBytes, "batch-bytes", "most command `BYTES` one Paxos instance carries, 1MiB .. 8MiB (a number,\nor with KiB, MiB or GiB)")
	fs.IntVar(&t.pendingMax, "pending-max", defaultPendingMax, "most proposals (`N`) queued per group; beyond it commands fail at once\nwith TRYAGAIN")
	fs.IntVar(&t.checkpointEvery, "checkpoint-every", defaultCheckpointEvery, "applied instances (`N`) between two checkpoint images of a group; the log\nis trimmed below the image")
	fs.IntVar(&t.keepInstances, "keep-instances", defaultKeepInstances, "recent instances (`N`) each group's log keeps whatever its image, so that\na replica a little behind catches up from the log")
	fs.Var(&t.teachRate, "teach-rate", "`BYTES` per second this replica spends teaching lagging replicas, all groups\ntogether (log streams and checkpoint images), or unlimited")
	if serve {
		fs.Float64Var(&t.clockDrift, "clock-drift", defaultClockDrift, "bound (`FRACTION`, above 0 and below 0.25) on the rate difference of the\nreplicas' monotonic clocks; the master trusts its lease for\nlease*(1-2*drift). Raise it on hosts that may be suspended")
		fs.Var(&t.logMemTable, "log-memtable", "`BYTES` of one memtable of the log's Pebble DB, 1MiB .. 1GiB; up to four\nare held, in memory and in the WAL")
		fs.BoolVar(&t.mayBecomeMaster, "may-become-master", true, "whether this replica may become a group's master: --may-become-master=false\nkeeps masters off it (it still votes, stores and serves). SHARDKV\nMASTERCANDIDATE changes it until the next start")
	}
	return t
}

// check reports the first flag value the engine would refuse, as a usage error.
func (t *tuning) check() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{errUsage}, args...)...)
	}
	switch {
	case t.tick < time.Millisecond || t.tick > tickMost:
		return bad("--tick-interval is %v, want 1ms .. %v", t.tick, tickMost)
	case t.lease < 2*t.tick:
		return bad("--lease is %v, want at least two --tick-interval (%v)", t.lease, 2*t.tick)
	case t.batchCount < 1:
		return bad("--batch-count is %d, want at least 1", t.batchCount)
	case t.batchBytes < valueBytesMax || t.batchBytes > batchBytesMost:
		return bad("--batch-bytes is %v, want 1MiB .. 8MiB", t.batchBytes)
	case t.pendingMax < 1:
		return bad("--pending-max is %d, want at least 1", t.pendingMax)
	case t.checkpointEvery < 1:
		return bad("--checkpoint-every is %d, want at least 1", t.checkpointEvery)
	case t.keepInstances < 1:
		return bad("--keep-instances is %d, want at least 1", t.keepInstances)
	case t.serve && (t.clockDrift <= 0 || t.clockDrift >= 0.25):
		return bad("--clock-drift is %v, want above 0 and below 0.25", t.clockDrift)
	case t.serve && (t.logMemTable < 1<<20 || t.logMemTable > 1<<30):
		return bad("--log-memtable is %v, want 1MiB .. 1GiB", t.logMemTable)
	}
	return nil
}

// apply sets the engine options the flags name.
func (t *tuning) apply(o *node.Options) {
	o.Lease, o.TickInterval = t.lease, t.tick
	o.BatchCountMax, o.BatchBytesMax = t.batchCount, int(t.batchBytes)
	o.PendingMax = t.pendingMax
	o.CheckpointEvery, o.KeepInstances = t.checkpointEvery, t.keepInstances
	o.TeachBytesPerSecond = int64(t.teachRate)
	if t.serve {
		o.ClockDrift = t.clockDrift
		o.LogMemTableBytes = int(t.logMemTable)
		if !t.mayBecomeMaster {
			o.MasterCandidate = func(ids.GroupID) bool { return false }
		}
	}
}

// sizeFlag is a byte count: 4194304, 4096KiB, 4MiB, 1GiB.
type sizeFlag int64

var sizeUnits = []struct {
	suffix string
	n      int64
}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}}

func (s sizeFlag) String() string {
	for _, u := range sizeUnits {
		if s != 0 && int64(s)%u.n == 0 {
			return fmt.Sprintf("%d%s", int64(s)/u.n, u.suffix)
		}
	}
	return strconv.FormatInt(int64(s), 10)
}

func (s *sizeFlag) Set(v string) error {
	mult := int64(1)
	num := v
	for _, u := range sizeUnits {
		if strings.HasSuffix(v, u.suffix) {
			mult, num = u.n, strings.TrimSuffix(v, u.suffix)
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return errors.New("want a byte count: a number, or with KiB, MiB or GiB (e.g. 4MiB)")
	}
	*s = sizeFlag(n * mult)
	return nil
}

// rateFlag is --teach-rate: bytes per second, or unlimited (-1).
type rateFlag int64

func (r rateFlag) String() string {
	if r < 0 {
		return "unlimited"
	}
	return sizeFlag(r).String()
}

func (r *rateFlag) Set(v string) error {
	if v == "unlimited" {
		*r = -1
		return nil
	}
	var s sizeFlag
	if err := s.Set(v); err != nil || s == 0 {
		return errors.New("want bytes per second above 0 (e.g. 64MiB) or unlimited")
	}
	*r = rateFlag(s)
	return nil
}

// idsFlag is --initial-voters: 1,2,3.
type idsFlag []ids.NodeID

func (f *idsFlag) String() string {
	var parts []string
	for _, id := range *f {
		parts = append(parts, strconv.FormatUint(uint64(id), 10))
	}
	return strings.Join(parts, ",")
}

func (f *idsFlag) Set(v string) error {
	var out []ids.NodeID
	for _, part := range strings.Split(v, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		id, err := strconv.ParseUint(part, 10, 64)
		if err != nil || id == 0 {
			return fmt.Errorf("%q: a node ID is a positive integer", part)
		}
		if slices.Contains(out, ids.NodeID(id)) {
			return fmt.Errorf("node %d appears twice", id)
		}
		out = append(out, ids.NodeID(id))
	}
	if len(out) == 0 {
		return errors.New("no node IDs")
	}
	slices.Sort(out)
	*f = out
	return nil
}
