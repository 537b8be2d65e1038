package node

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"time"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/instance"
	"github.com/multipaxos/engine/learner"
	"github.com/multipaxos/engine/netio"
	"github.com/multipaxos/engine/statemachine"
	"go.uber.org/zap"
)

// Options configure a node. Zero values take the defaults documented on each field;
// Start fills them in and then validates the result, reporting every violation.
type Options struct {
	// NodeID names this node; non-zero and a key of Members.
	NodeID ids.NodeID
	// ClusterID is stamped on every frame; peers with another one are refused.
	// Default 1.
	ClusterID uint64
	// ClusterSecret authenticates peers (netio.Options.ClusterSecret): every node
	// must have the same one, at least 16 random bytes, and a peer that cannot prove
	// it holds it is refused before any of its frames reaches a group. Keep it out of
	// logs and version control. Empty: peers are not authenticated, which is only for
	// loopback tests, and the node logs a warning at start. Unused with Transport.
	ClusterSecret []byte
	// Addr is the host:port the node listens on for peers. Default Members[NodeID].
	Addr string
	// Members maps every node of the cluster, this node included, to its peer
	// address. Each group starts with all of them as voters unless InitialMembers
	// says otherwise; later changes (AddMember, ...) are chosen in each group's log
	// and may only name nodes listed here.
	Members map[ids.NodeID]string
	// InitialMembers gives group g's voters and followers when the group's log is
	// empty. Every node must give the same answer. nil: every node votes.
	InitialMembers func(g ids.GroupID) (voters, followers []ids.NodeID)
	// Groups is the number of Paxos groups, numbered 0 .. Groups-1. 1 .. 65536.
	Groups int
	// DataDir holds the node's Pebble database (DataDir/log). Required.
	DataDir string
	// StateMachines returns each group's state machine. Required.
	StateMachines statemachine.Factory
	// Logger receives the node's logs; nil = no-op.
	Logger *zap.Logger

	// TickInterval is the period of the protocol's logical clock. Default 50 ms.
	// The protocol timeouts below are rounded to whole ticks.
	TickInterval time.Duration
	// ProposeRetryTimeout is how long a proposer waits for a quorum (of promises or
	// of accepts) before it retries with a higher ballot. Default 500 ms.
	ProposeRetryTimeout time.Duration
	// LearnRetryTimeout is how long a lagging member waits for a teacher before it
	// asks again. Default 200 ms.
	LearnRetryTimeout time.Duration
	// StatusInterval is the period of the node-wide status exchange: one frame per
	// peer carrying every group's progress, by which a member that fell behind in an
	// idle group notices it. Default 2 s.
	StatusInterval time.Duration
	// Lease is the master lease. A member that sees no valid master claims
	// mastership when it has work; a failed master is replaced about one Lease after
	// its last renewal. Default 1 s.
	Lease time.Duration
	// ClockDrift bounds the rate difference between members' monotonic clocks (0.01
	// = 1%); the master trusts its lease for Lease*(1-2*ClockDrift). Default 0.01.
	ClockDrift float64
	// MasterCandidate says whether this node may become master of group g. nil: of
	// every group. SetMasterCandidate changes it at run time.
	MasterCandidate func(g ids.GroupID) bool
	// RejectIfNotMaster makes Propose on a node that knows another master fail with
	// a *NotMasterError naming it, instead of forwarding the command there.
	RejectIfNotMaster bool

	// ValueBytesMax bounds one proposed command, in bytes. Larger ones fail with
	// ErrValueTooLarge. Default 1 MiB; at most a quarter of MaxFrameBytes.
	ValueBytesMax int
	// BatchCountMax bounds the commands packed into one instance. Default 1024.
	BatchCountMax int
	// BatchBytesMax bounds the command bytes of one instance. Default 4 MiB; at least
	// ValueBytesMax, and with the batch overhead under MaxFrameBytes.
	BatchBytesMax int
	// PendingMax bounds the proposals queued per group (back-pressure: ErrBusy).
	// Default 65536.
	PendingMax int
	// MaxFrameBytes bounds one network frame. Default 16 MiB.
	MaxFrameBytes int
	// Workers is the number of goroutines that run groups. Default GOMAXPROCS.
	Workers int
	// MetricsPerGroup also exports every group-level metric of Collector per group
	// (a "group" label): 10-20 series per group. Default off: sums and maxima over
	// the node's groups only.
	MetricsPerGroup bool
	// LogMemTableBytes is the size of one memtable of the log's Pebble DB. The
	// log's disk use is about the retained instances plus up to four memtables'
	// worth of WAL (a trimmed range is reclaimed when its memtable is flushed and
	// compacted). Default 64 MiB (package logstore).
	LogMemTableBytes int

	// Learner bounds each stream that catches a lagging member up (package
	// learner): values and bytes in flight per learner, message size, resend
	// timeout (ResendTicks and IdleTicks count TickIntervals), learners per group.
	// Zero fields take the package's defaults; MessageBytes is at most
	// MaxFrameBytes/2.
	Learner learner.Config
	// Checkpoints: a group whose state machine can make checkpoint images (it
	// implements statemachine.Checkpointer, or CheckpointCopies is set and it
	// implements statemachine.Installer) keeps one image, made every
	// CheckpointEvery applied instances, trims its log below it, and sends it to
	// members that need trimmed instances. Other groups keep their whole log.
	//
	// CheckpointDir holds the images, one directory per group. Default
	// DataDir/checkpoint.
	CheckpointDir string
	// CheckpointCopies gives the checkpoint copy of each group's state machine
	// for the library's replayer (statemachine.Copy). nil: only state machines
	// that are Checkpointers make images.
	CheckpointCopies statemachine.CopyFactory
	// CheckpointEvery is how many applied instances pass between two images of a
	// group. Default 10000.
	CheckpointEvery int
	// KeepInstances is how many recent instances each group's log keeps whatever
	// its image, so that members a little behind catch up from the log. Default
	// 500.
	KeepInstances int
	// CheckpointChunkBytes bounds one chunk of an image transfer; every node of
	// the cluster must use the same. Default 1 MiB, at most MaxFrameBytes/2.
	CheckpointChunkBytes int

	// TeachBytesPerSecond is the share of bandwidth this node spends teaching
	// lagging members, all groups together, so that catching others up never
	// starves its own groups' traffic. Default 64 MiB/s; negative: no limit.
	TeachBytesPerSecond int64

	// Transport, when set, replaces the TCP transport (tests: netio.MemNetwork). It
	// gets the handler for inbound frames.
	Transport func(h netio.Handler) (netio.Transport, error)
	// Knobs plant protocol bugs; test use only.
	Knobs instance.Knobs
	// CrashPoint, if set, is called at every named persistence step of every group
	// (group.CrashPoints) just before the step; crash tests kill the process there.
	// Test use only.
	CrashPoint func(name string)

	testHooks // this package's tests only (testhooks.go)
}

// ErrInvalidOptions is wrapped by every option violation Start reports.
var ErrInvalidOptions = errors.New("node: invalid options")

func (o Options) withDefaults() Options {
	if o.ClusterID == 0 {
		o.ClusterID = 1
	}
	if o.Addr == "" {
		o.Addr = o.Members[o.NodeID]
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&o.TickInterval, 50*time.Millisecond)
	def(&o.ProposeRetryTimeout, 500*time.Millisecond)
	def(&o.LearnRetryTimeout, 200*time.Millisecond)
	def(&o.StatusInterval, 2*time.Second)
	def(&o.Lease, time.Second)
	if o.ClockDrift == 0 {
		o.ClockDrift = 0.01
	}
	defInt := func(d *int, v int) {
		if *d == 0 {
			*d = v
		}
	}
	defInt(&o.ValueBytesMax, 1<<20)
	defInt(&o.BatchCountMax, 1024)
	defInt(&o.BatchBytesMax, 4<<20)
	defInt(&o.PendingMax, 65536)
	defInt(&o.MaxFrameBytes, 16<<20)
	defInt(&o.Workers, runtime.GOMAXPROCS(0))
	o.Learner = o.Learner.WithDefaults()
	if o.CheckpointDir == "" && o.DataDir != "" {
		o.CheckpointDir = filepath.Join(o.DataDir, "checkpoint")
	}
	defInt(&o.CheckpointEvery, 10000)
	defInt(&o.KeepInstances, 500)
	defInt(&o.CheckpointChunkBytes, 1<<20)
	if o.TeachBytesPerSecond == 0 {
		o.TeachBytesPerSecond = 64 << 20
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	return o
}

func (o Options) validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidOptions}, args...)...))
	}
	if o.NodeID == 0 {
		bad("NodeID is 0")
	}
	if _, ok := o.Members[o.NodeID]; !ok {
		bad("NodeID %d is not in Members", o.NodeID)
	}
	if o.Groups < 1 || o.Groups > 1<<16 {
		bad("Groups is %d, want 1 .. 65536", o.Groups)
	}
	if o.DataDir == "" {
		bad("DataDir is empty")
	}
	if o.StateMachines == nil {
		bad("StateMachines is nil")
	}
	if o.TickInterval < time.Millisecond {
		bad("TickInterval is %v, want >= 1ms", o.TickInterval)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"ProposeRetryTimeout", o.ProposeRetryTimeout}, {"LearnRetryTimeout", o.LearnRetryTimeout}, {"StatusInterval", o.StatusInterval}} {
		if d.v < o.TickInterval {
			bad("%s is %v, below TickInterval %v", d.name, d.v, o.TickInterval)
		}
	}
	if o.Lease < 2*o.TickInterval {
		bad("Lease is %v, want at least two ticks (%v)", o.Lease, 2*o.TickInterval)
	}
	if o.ClockDrift < 0 || o.ClockDrift >= 0.25 {
		bad("ClockDrift is %v, want 0 .. 0.25", o.ClockDrift)
	}
	if o.ValueBytesMax < 1 || o.ValueBytesMax > o.MaxFrameBytes/4 {
		bad("ValueBytesMax is %d, want 1 .. MaxFrameBytes/4 (%d)", o.ValueBytesMax, o.MaxFrameBytes/4)
	}
	if o.BatchBytesMax < o.ValueBytesMax || o.BatchBytesMax > o.MaxFrameBytes/2 {
		bad("BatchBytesMax is %d, want ValueBytesMax (%d) .. MaxFrameBytes/2 (%d)", o.BatchBytesMax, o.ValueBytesMax, o.MaxFrameBytes/2)
	}
	if o.BatchCountMax < 1 {
		bad("BatchCountMax is %d, want >= 1", o.BatchCountMax)
	}
	if o.PendingMax < 1 {
		bad("PendingMax is %d, want >= 1", o.PendingMax)
	}
	if o.Workers < 1 {
		bad("Workers is %d, want >= 1", o.Workers)
	}
	if o.CheckpointEvery < 1 || o.KeepInstances < 1 {
		bad("CheckpointEvery (%d) and KeepInstances (%d) must be >= 1", o.CheckpointEvery, o.KeepInstances)
	}
	if o.CheckpointChunkBytes < 1 || o.CheckpointChunkBytes > o.MaxFrameBytes/2 {
		bad("CheckpointChunkBytes is %d, want 1 .. MaxFrameBytes/2 (%d)", o.CheckpointChunkBytes, o.MaxFrameBytes/2)
	}
	if o.Learner.MessageBytes > o.MaxFrameBytes/2 {
		bad("Learner.MessageBytes is %d, want at most MaxFrameBytes/2 (%d)", o.Learner.MessageBytes, o.MaxFrameBytes/2)
	}
	return errors.Join(errs...)
}

func (o Options) ticks(d time.Duration) int {
	t := int(d / o.TickInterval)
	if t < 1 {
		t = 1
	}
	return t
}

func (o Options) memberIDs() []ids.NodeID {
	var ms []ids.NodeID
	for id := range o.Members {
		ms = append(ms, id)
	}
	sortIDs(ms)
	return ms
}
