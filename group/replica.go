package group

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/instance"
	"github.com/multipaxos/engine/learner"
	"github.com/multipaxos/engine/logstore"
	"github.com/multipaxos/engine/statemachine"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Storage is the part of a logstore.Store a group uses.
type Storage interface {
	LoadMeta(g ids.GroupID) (logstore.Meta, error)
	Entry(g ids.GroupID, inst ids.InstanceID) (logstore.Entry, error)
	Entries(g ids.GroupID, from ids.InstanceID, maxCount, maxBytes int) ([]logstore.Entry, error)
	Commit(b logstore.Batch, done func(error))
	Trim(g ids.GroupID, below ids.InstanceID, base []byte) error
}

// Sender delivers messages to peers. Its methods must not block; a lost message is
// fine (Paxos and the group's timers retry).
type Sender interface {
	Send(to ids.NodeID, g ids.GroupID, m *instance.Message)
	SendGroup(to ids.NodeID, g ids.GroupID, m *GroupMessage)
}

// Config configures one Replica.
type Config struct {
	Group ids.GroupID
	Self  ids.NodeID
	// Members and Followers are the group's initial voters and followers (every
	// node must start a group with the same lists); later changes are chosen in the
	// log.
	Members   []ids.NodeID
	Followers []ids.NodeID
	Storage   Storage
	Sender    Sender
	// Checkpoints, if set, makes checkpoint images, trims the log below them and
	// transfers them to members that need trimmed instances (checkpoint.go).
	Checkpoints *CheckpointConfig
	// StateMachine receives the group's chosen application commands.
	StateMachine statemachine.StateMachine
	// Schedule runs fn later in the replica's serial context (the goroutine that
	// calls the Replica's methods). Storage completions come back through it.
	Schedule func(fn func())
	// Clock is the replica's monotonic clock, used for the master lease only. Default
	// time.Now (whose readings carry Go's monotonic clock).
	Clock func() time.Time
	// Protocol holds the protocol timing (in ticks), seed and test knobs; Self and
	// Members are taken from above.
	Protocol instance.Config
	// Lease is the master lease length. Default 1 s.
	Lease time.Duration
	// ClockDrift bounds the rate difference between members' clocks (0.01 = 1%).
	// The master trusts its lease for Lease*(1-2*ClockDrift) only. Default 0.01.
	ClockDrift float64
	// NotCandidate keeps this member from becoming master of the group.
	NotCandidate bool
	// Abstain starts the member without its vote (instance.Core.SetAbstain):
	// its store may have forgotten promises an earlier store under the same node
	// ID gave. SetAbstain(false) gives the vote back.
	Abstain bool
	// RejectIfNotMaster makes Propose on a member that is not the master fail with
	// a *NotMasterError instead of forwarding the command to the master.
	RejectIfNotMaster bool
	// BatchCountMax bounds how many commands one instance value carries. Default 1024.
	BatchCountMax int
	// BatchBytesMax bounds the command bytes of one instance value. Default 4 MiB.
	BatchBytesMax int
	// PendingMax bounds the proposals queued in this group; beyond it Propose fails
	// with ErrBusy. Default 65536.
	PendingMax int
	// Learner bounds the streams this member teaches to members that fell behind
	// (window, message size, resend timeout; see package learner).
	Learner learner.Config
	// TeachBudget is the node-wide bandwidth share for teaching; nil: no limit.
	TeachBudget learner.Budget
	Logger      *zap.Logger
	// RequestSeqBase starts the sequence of the replica's own request IDs (master
	// claims). It must differ between incarnations of a member, or a claim made
	// before a crash and chosen after it could pass for a new one and lend it a lease
	// it does not have. 0: random.
	RequestSeqBase uint64
	// OnPropose, if set, is told the number of commands of every instance value
	// this member proposes (a batch-size histogram).
	OnPropose func(commands int)
	// CrashPoint, if set, is called at each named persistence step (the
	// CrashPoint* constants) just before the step: a test kills the member there,
	// like Ceph's paxos_kill_at. Never set in production.
	CrashPoint func(name string)
	// LeaseObserver, if set, is told of every lease this member holds as master:
	// [start, end) on its own clock. Tests check that leases never overlap.
	LeaseObserver func(start, end time.Time)
}

func (c *Config) fillDefaults() {
	if c.BatchCountMax == 0 {
		c.BatchCountMax = 1024
	}
	if c.BatchBytesMax == 0 {
		c.BatchBytesMax = 4 << 20
	}
	if c.PendingMax == 0 {
		c.PendingMax = 65536
	}
	c.Learner = c.Learner.WithDefaults()
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.Lease == 0 {
		c.Lease = time.Second
	}
	if c.ClockDrift == 0 {
		c.ClockDrift = 0.01
	}
}

// decodedValue is one instance's decoded value, kept between applySystem and
// execute so that a value is decoded once (the second decoding was 3% of the
// CPU at 64 groups).
type decodedValue struct {
	inst ids.InstanceID
	cmds []Command
	ok   bool
}

// forwardHopsMax bounds how often a proposal is passed on between members that are
// not the master, so a stale view cannot bounce it forever.
const forwardHopsMax = 3

// seenForwardTicks is how long a member remembers a forwarded proposal it took, to
// drop duplicated frames of it: far longer than any network delay.
const seenForwardTicks = 1024

// Replica is one member's part in one group: it drives an instance.Core - persists
// what it hands out, sends, applies - keeps the master lease, batches proposals into
// instance values (on the master) or forwards them (elsewhere), serves lease reads
// and read barriers, and tells callers their results. It is single-threaded: every
// method must be called from one serial context (the node's worker for the group,
// or the simulation's one goroutine). It starts no goroutine.
//
// The order of work for each Ready (see instance.Ready):
//
//	SendNow, Committed, Teach       at once
//	HardState, Entries              one storage batch; fsync only if Messages wait on it
//	Messages                        after that batch is durable
//
// Only one synced batch is in flight at a time, so Messages never overtake the
// durability of earlier state. Batches with no waiting Messages (a chosen mark, a
// learned value) are written without fsync and without waiting: nothing has been
// promised on them, and a crash only means the member learns them again.
type Replica struct {
	cfg  Config
	log  *zap.Logger
	core *instance.Core

	persisting bool               // a synced batch is in flight
	waiting    []instance.Message // Messages of that batch
	failed     error              // storage failed: fail-stop

	queue        []*Proposal // application proposals not yet in an instance
	inflight     map[RequestID]*Proposal
	inflightInst ids.InstanceID
	forwarded    map[RequestID]*Proposal // ours, sent to the master; settled when executed here
	bounced      map[RequestID]*Proposal // ours, passed back to us and gone on as a copy; settled with it
	seenForward  map[RequestID]uint64    // forwarded proposals taken, with the tick they came
	executed     executedWindow          // application commands executed lately (replay included; executed.go)
	seq          uint64                  // for the replica's own (master claim) request IDs
	// fwdIdle counts ticks with ours forwarded, unsettled, and no master known;
	// at forwardRetryTicks they go to the next member in turn (fwdTurn).
	fwdIdle, fwdTurn int

	applyQueue []instance.Entry // chosen, not yet executed (the state machine stalled)
	decoded    decodedValue     // the value applySystem decoded last, for execute
	applied    ids.InstanceID   // next instance to execute
	replaying  bool

	lease            masterLease
	members          statemachine.Membership
	sysApplied       ids.InstanceID       // next instance whose system commands to apply
	sysResults       map[RequestID][]byte // results of system commands, until execute
	publishedMembers atomic.Pointer[statemachine.Membership]
	leaseReads       []*leaseRead
	barriers         map[uint64]*barrier
	barrierSeq       uint64

	teacher     *learner.Teacher
	minRetained ids.InstanceID // the lowest instance the log holds
	cp          *checkpoints   // nil: no checkpoints, the log is never trimmed
	repair      *repair        // non-nil while chosen records lost to corruption are learned again
	sysHistory  []sysPoint     // SystemState changes since minRetained, the first at it
	// smFloor: the state machine holds every instance below it (it was ahead of
	// the log at start, or installed an image); those are never executed again.
	smFloor ids.InstanceID
	// storedNext: every instance below it has its chosen value applied in the
	// store, so a read shows it. The core's Next runs ahead of it while the
	// batch that records a learned value is on its way, and until then the log
	// may still show the value that was accepted there before: never teach that.
	// Set from the store's callbacks (its goroutine), hence atomic.
	storedNext atomic.Uint64

	ticks     uint64
	published atomic.Pointer[MasterInfo] // the master view, for other goroutines
	next      atomic.Uint64
	stats     Stats
}

// Stats are a replica's counters.
type Stats struct {
	Next           ids.InstanceID // first instance not known chosen
	HighestSeen    ids.InstanceID // the highest Next any member reported: Next is behind by the difference
	Master         ids.NodeID     // the master as this member sees it (0: none)
	IsMaster       bool           // this member is the master and holds the lease
	MasterChanges  uint64         // executed claims that changed who is master
	Applied        ids.InstanceID // next instance to execute
	Promised       ids.Ballot     // the acceptor's promise
	Abstaining     bool           // the member votes in nothing yet (Config.Abstain)
	Queued         int
	Proposed       uint64 // instance values this replica proposed
	Commands       uint64 // own commands executed
	Forwarded      uint64 // commands forwarded to the master
	ForwardsTooOld uint64 // forwarded commands not proposed: older than the executed window (executed.go)
	MasterClaims   uint64 // claims this replica proposed (elections and renewals)
	SyncedWrites   uint64 // storage batches that waited for an fsync
	LazyWrites     uint64 // storage batches written without fsync
	ApplyErrors    uint64
	Repairs        uint64         // starts with a corrupt or missing chosen record, repaired from peers
	MinRetained    ids.InstanceID // the lowest instance the log holds
	Images         uint64         // checkpoint images made or installed
	Trims          uint64
	Installs       uint64 // images received and installed
	ChunksSent     uint64
	ChunksReceived uint64
	Core           instance.Stats
	Teacher        learner.Stats
}

// New opens the group from storage: it loads the acceptor state, replays chosen
// instances the state machine has not made durable, and returns a replica ready to
// take messages.
func New(cfg Config) (*Replica, error) {
	cfg.fillDefaults()
	r := &Replica{cfg: cfg, inflight: map[RequestID]*Proposal{}, forwarded: map[RequestID]*Proposal{},
		bounced:     map[RequestID]*Proposal{},
		seenForward: map[RequestID]uint64{}, barriers: map[uint64]*barrier{}, sysResults: map[RequestID][]byte{},
		teacher: learner.New(cfg.Learner)}
	r.members = statemachine.Membership{Voters: sortedIDs(cfg.Members), Followers: sortedIDs(cfg.Followers)}
	r.lease.init(&r.cfg)
	// The replica's own request IDs have the top bit set, so they never meet the
	// node's, and start at a fresh point in every incarnation.
	base := cfg.RequestSeqBase
	if base == 0 {
		base = rand.Uint64()
	}
	r.seq = 1<<63 | base>>1
	r.log = cfg.Logger.With(zap.Uint32("group", uint32(cfg.Group)))
	if cfg.Checkpoints != nil {
		cc := *cfg.Checkpoints
		cc.fillDefaults()
		if cc.Dir == "" || cc.Installer == nil {
			return nil, fmt.Errorf("group %d: checkpoints need a Dir and an Installer", cfg.Group)
		}
		r.cp = &checkpoints{cfg: cc, serving: map[ids.NodeID]uint64{}}
	}
	meta := metaView{r: r}
	if err := meta.reload(); err != nil {
		return nil, err
	}
	smApplied, err := r.openCheckpoints(&meta)
	if err != nil {
		return nil, fmt.Errorf("group %d: %w", cfg.Group, err)
	}
	r.minRetained = meta.MinRetained
	r.smFloor = smApplied
	r.storedNext.Store(uint64(meta.ChosenNext))
	rec := instance.Recovered{HardState: instance.HardState{Promised: meta.Promised, Next: meta.ChosenNext}}
	if e, err := cfg.Storage.Entry(cfg.Group, meta.ChosenNext); err == nil {
		rec.Accepted = instance.Entry{Instance: e.Instance, Ballot: e.Ballot, Value: e.Value}
	} else if !errors.Is(err, logstore.ErrNotFound) {
		// What this acceptor accepted there is unknown now, and Paxos needs it
		// to remember (see repair.go): no repair from peers can replace it.
		return nil, fmt.Errorf("group %d: the record of instance %d, where this member may have accepted a value, is unreadable; "+
			"replace the member (remove it from the group, add a fresh one): %w", cfg.Group, meta.ChosenNext, err)
	}
	pc := cfg.Protocol
	pc.Self, pc.Members, pc.Followers = cfg.Self, cfg.Members, cfg.Followers
	pc.Seed ^= uint64(cfg.Group) << 32
	if r.core, err = instance.New(pc, rec); err != nil {
		return nil, fmt.Errorf("group %d: %w", cfg.Group, err)
	}
	r.core.SetAbstain(cfg.Abstain)
	if meta.MinRetained > 0 {
		base, err := DecodeSystemState(meta.Base)
		if err != nil {
			return nil, fmt.Errorf("group %d: the log's base state at its trim point %d: %w", cfg.Group, meta.MinRetained, err)
		}
		r.resetSystemState(meta.MinRetained, base)
	} else {
		r.sysHistory = []sysPoint{{from: 0, state: r.systemState()}}
	}
	if err := r.replay(meta.MinRetained, meta.ChosenNext, smApplied); err != nil {
		return nil, err
	}
	r.publish()
	return r, nil
}

// metaView is the group's logstore meta, reloaded when start-up changes it.
type metaView struct {
	r *Replica
	logstore.Meta
}

func (m *metaView) reload() (err error) {
	if m.Meta, err = m.r.cfg.Storage.LoadMeta(m.r.cfg.Group); err != nil {
		return fmt.Errorf("group %d: load meta: %w", m.r.cfg.Group, err)
	}
	return nil
}

// replay rebuilds the engine's system state from the retained log, on top of the
// base state stored at its start, and runs the application's state machine over
// [smApplied, next).
func (r *Replica) replay(from, next, smApplied ids.InstanceID) error {
	if smApplied < from {
		return fmt.Errorf("group %d: state machine at instance %d but the log starts at %d", r.cfg.Group, smApplied, from)
	}
	r.replaying = true
	defer func() { r.replaying = false }()
	r.applied, r.sysApplied = from, from
	r.executed.reset(from)
	for r.applied < next {
		es, err := r.cfg.Storage.Entries(r.cfg.Group, r.applied, 256, 4<<20)
		if err != nil && !errors.Is(err, logstore.ErrCorrupt) {
			return fmt.Errorf("group %d: replay from %d: %w", r.cfg.Group, r.applied, err)
		}
		if err != nil || len(es) == 0 || es[0].Instance != r.applied {
			// A chosen record that fails its checksum or is gone: find the first
			// bad one and learn the rest from peers, never from it (repair.go).
			if es, err = r.readGoodPrefix(r.applied, next, zapcore.ErrorLevel); err != nil {
				return err
			}
			if len(es) == 0 {
				r.startRepair(r.applied, next)
				return nil
			}
		}
		for _, e := range es {
			if e.Instance >= next {
				break
			}
			ie := instance.Entry{Instance: e.Instance, Ballot: e.Ballot, Value: e.Value}
			r.applySystem(ie)
			if err := r.execute(ie, e.Instance < smApplied); err != nil {
				return fmt.Errorf("group %d: replay: %w", r.cfg.Group, err)
			}
		}
	}
	if r.applied > 0 {
		r.log.Debug("replayed", zap.Uint64("applied", uint64(r.applied)))
	}
	return nil
}

// Propose queues p. It fails with ErrBusy beyond PendingMax and ErrStopped after a
// storage failure; with RejectIfNotMaster, with a *NotMasterError on a member that
// knows another master.
func (r *Replica) Propose(p *Proposal) {
	switch {
	case r.failed != nil:
		p.fail(fmt.Errorf("%w: %w", ErrStopped, r.failed))
		return
	case len(r.queue) >= r.cfg.PendingMax:
		p.fail(ErrBusy)
		return
	case r.cfg.RejectIfNotMaster && r.lease.otherValid(r.cfg.Clock()):
		p.fail(&NotMasterError{Master: r.lease.state.Master})
		return
	}
	p.since = r.applied // it did not exist when the instances below were chosen
	r.queue = append(r.queue, p)
	r.lease.active = true
	r.drive()
	r.flush()
}

// Step feeds one protocol message from a peer.
func (r *Replica) Step(m instance.Message) error {
	if r.failed != nil {
		return nil
	}
	if r.repair != nil {
		r.repairStep(m)
		return nil
	}
	if err := r.core.Step(m); err != nil {
		return err
	}
	r.flush()
	return nil
}

// StepGroup feeds one group-level message from a peer.
func (r *Replica) StepGroup(from ids.NodeID, m GroupMessage) error {
	if r.failed != nil {
		return nil
	}
	if r.repair != nil && m.Type != MsgCheckpointOffer && m.Type != MsgChunk {
		return nil // repairing: nothing but what repairs (forwarders and readers time out)
	}
	// Any node of the cluster may forward a proposal or ask for a read index (a
	// follower does both); only voters' read indexes count for a barrier.
	switch m.Type {
	case MsgForward:
		for _, c := range m.Commands {
			if c.Kind == KindMaster || len(r.queue) >= r.cfg.PendingMax {
				continue // master claims are never forwarded (their lease counts from the claimant's clock); a full queue sheds load
			}
			if orig, mine := r.forwarded[c.ID]; mine && orig.ID.Node == r.cfg.Self {
				// Our own command, passed back to us by members that are not
				// master either. It goes on as a copy (forwardQueue then tracks
				// the copy); the caller waits on the original, which is settled
				// with the copy when the command executes here.
				r.bounced[c.ID] = orig
			}
			if _, dup := r.seenForward[c.ID]; dup && !r.resent(c.ID) {
				continue // a duplicated frame of a command this member holds
			}
			if c.Kind == KindApp && !r.mayPropose(c.ID, ids.InstanceID(m.Since)) {
				// Chosen already (perhaps a frame that outlived a restart of this
				// member, which forgot seenForward but not the log it replayed), or
				// too old to tell: proposing it could choose it twice.
				continue
			}
			r.seenForward[c.ID] = r.ticks
			p := NewProposal(c.ID, c.Data)
			p.hops, p.kind = m.Hops, c.Kind
			p.since, p.mayDup = ids.InstanceID(m.Since), true
			r.queue = append(r.queue, p)
		}
		r.lease.active = true
		r.drive()
	case MsgReadIndex:
		if r.core.IsMember(r.cfg.Self) { // only voters answer: their indexes make the quorum
			r.cfg.Sender.SendGroup(from, r.cfg.Group, &GroupMessage{Type: MsgReadIndexReply, ID: m.ID,
				Index: uint64(r.readIndex()), Version: r.members.Version})
		}
	case MsgReadIndexReply:
		r.onReadIndexReply(from, m.ID, ids.InstanceID(m.Index), m.Version)
	case MsgCheckpointOffer:
		r.onCheckpointOffer(from, m)
	case MsgChunkReq:
		r.onChunkReq(from, m)
	case MsgChunk:
		r.onChunk(from, m)
	}
	r.flush()
	return nil
}

// Tick advances the replica's logical clock.
func (r *Replica) Tick() {
	if r.failed != nil {
		return
	}
	r.ticks++
	r.executed.expire(r.cfg.Clock())
	if r.repair != nil {
		r.repairTick()
		r.tickCheckpoints()
		return
	}
	r.core.Tick()
	r.teacher.Tick()
	r.pumpTeacher()
	r.tickCheckpoints()
	r.drainApply() // retry a stalled state machine
	r.retryForwarded()
	r.tickMasterTransfer()
	r.tickBarriers()
	if r.ticks%64 == 0 {
		for id, p := range r.forwarded {
			if p.abandoned() {
				delete(r.forwarded, id)
			}
		}
		for id, p := range r.bounced {
			if p.abandoned() || p.state.Load() == stateDone {
				delete(r.bounced, id)
			}
		}
		for id, at := range r.seenForward {
			if r.ticks-at > seenForwardTicks {
				delete(r.seenForward, id)
			}
		}
	}
	r.drive()
	r.flush()
}

// NeedsSweep reports whether the replica holds memory that Sweep may give back once
// it has been quiet for a while (the executed window's older entries).
func (r *Replica) NeedsSweep() bool { return r.executed.expiring() }

// Sweep gives back memory held for recent activity that has aged out. Tick does
// the same; Sweep is for a quiet group that is not ticked.
func (r *Replica) Sweep() { r.executed.expire(r.cfg.Clock()) }

// NeedsTick reports whether the replica has a timer running. An idle group needs no
// ticks; the node skips it, which keeps thousands of idle groups cheap.
func (r *Replica) NeedsTick() bool {
	return r.failed == nil && (r.repair != nil || r.core.Busy() || r.persisting || len(r.applyQueue) > 0 || len(r.queue) > 0 ||
		len(r.forwarded) > 0 || len(r.barriers) > 0 || len(r.leaseReads) > 0 || len(r.inflight) > 0 ||
		r.lease.claim != nil || r.lease.holding(r.cfg.Clock()) || r.teacher.Active() || r.cp.busy() || r.lease.transfer != nil)
}

// SetAbstain takes this member's vote away (on) or gives it back (off); see
// Config.Abstain.
func (r *Replica) SetAbstain(on bool) {
	r.core.SetAbstain(on)
	r.drive()
	r.flush()
}

// StoredNext is the first instance whose chosen value may not be readable from
// the log yet (every one below it is); safe to call from any goroutine. A
// checkpoint.Replayer feeds its copy up to it.
func (r *Replica) StoredNext() ids.InstanceID { return ids.InstanceID(r.storedNext.Load()) }

// Next is the first instance this member does not know chosen; safe to call from
// any goroutine.
func (r *Replica) Next() ids.InstanceID { return ids.InstanceID(r.next.Load()) }

// Stop fails every proposal and read still waiting. The replica must not be used
// afterwards.
func (r *Replica) Stop() {
	r.failAll(ErrStopped)
}

// Stats returns the replica's counters.
func (r *Replica) Stats() Stats {
	s := r.stats
	s.Next, s.Applied, s.Queued, s.Core = r.core.Next(), r.applied, len(r.queue), r.core.Stats()
	s.Promised = r.core.Promised()
	s.Abstaining = r.core.Abstaining()
	s.Teacher = r.teacher.Stats()
	s.HighestSeen = r.core.HighestSeen()
	mi := r.Master()
	s.Master, s.IsMaster = mi.Master, mi.IsSelf
	s.MinRetained = r.minRetained
	return s
}

// Core exposes the protocol state for tests and the simulation's checks.
func (r *Replica) Core() *instance.Core { return r.core }

// drive moves queued work along according to who is master: propose it (master),
// forward it (another master is valid), or claim mastership (nobody is).
func (r *Replica) drive() {
	if r.failed != nil || r.repair != nil {
		return
	}
	now := r.cfg.Clock()
	if r.cfg.Protocol.Knobs.LeaseReadAnywhere {
		r.serveLeaseReads(now)
	}
	switch {
	case r.lease.isMaster(now):
		if r.lease.shouldRenew(now) {
			r.claim(r.cfg.Self, now)
		}
		r.serveLeaseReads(now)
	case r.lease.otherValid(now):
		r.forwardQueue(r.lease.state.Master)
		r.rejectLeaseReads(r.lease.state.Master)
	case len(r.queue) > 0 || len(r.leaseReads) > 0 || len(r.forwarded) > 0 || r.lease.wanted:
		// Work is waiting - including ours sent to a master that has since gone
		// silent - and nobody is master: elect one now.
		if r.lease.resign && r.lease.claim == nil && r.core.IsMember(r.cfg.Self) { // see applyClaim
			r.lease.resign = false
			r.claimFor(r.cfg.Self, 0, now)
		}
		switch {
		case !r.cfg.NotCandidate && r.core.IsMember(r.cfg.Self):
			r.claim(r.cfg.Self, now)
		case r.core.Abstaining():
			// A new store waiting for its peers' admission (node/identity.go):
			// hold the work until a master shows up rather than pass it around
			// members that may be waiting too; a caller that gives up first gets
			// ErrCanceled, nothing was proposed.
			r.rejectLeaseReads(0)
		default:
			r.forwardQueue(r.forwardTarget())
			r.rejectLeaseReads(0)
		}
	}
	r.maybePropose(now)
	r.publish()
}

// claim queues a master claim for candidate (ourselves: election or renewal; another
// node: a transfer), unless one is already on its way.
func (r *Replica) claim(candidate ids.NodeID, now time.Time) {
	r.claimFor(candidate, r.cfg.Lease, now)
}

// claimFor is claim with the lease length to ask for (0: a resignation, see
// applyClaim).
func (r *Replica) claimFor(candidate ids.NodeID, lease time.Duration, now time.Time) {
	if r.lease.claim != nil {
		return
	}
	r.seq++
	id := RequestID{Node: r.cfg.Self, Seq: r.seq}
	p := NewProposal(id, statemachine.EncodeClaim(statemachine.MasterClaim{
		Candidate: candidate, Expect: r.lease.state.Version, Lease: lease}))
	p.kind = KindMaster
	r.lease.claim, r.lease.claimStart, r.lease.wanted, r.lease.active = p, now, false, false
	r.lease.claimVersion = r.lease.state.Version
	r.stats.MasterClaims++
}

// nextMember is where a member that may not become master sends work when nobody is
// master: the next member in ID order, which may claim.
func (r *Replica) nextMember() ids.NodeID {
	ms := r.members.Voters
	for _, m := range ms {
		if m > r.cfg.Self {
			return m
		}
	}
	return ms[0]
}

// forwardTarget is where a member that may not become master sends work while
// nobody is master: nextMember at first, then, each time retryForwarded gives up on
// one, the next voter other than itself in ID order (wrapping round).
func (r *Replica) forwardTarget() ids.NodeID {
	var others []ids.NodeID
	for _, m := range r.members.Voters {
		if m > r.cfg.Self {
			others = append(others, m)
		}
	}
	for _, m := range r.members.Voters {
		if m < r.cfg.Self {
			others = append(others, m)
		}
	}
	if len(others) == 0 {
		return r.nextMember()
	}
	return others[r.fwdTurn%len(others)]
}

// forwardRetryTicks is how long a member that may not become master waits, with no
// master known, for the proposals it forwarded before it sends them to the next
// member in turn: long enough for a live receiver to claim mastership and propose
// them (a prepare and an accept round), even with retries.
func (r *Replica) forwardRetryTicks() int {
	pt, at := r.cfg.Protocol.PrepareTimeoutTicks, r.cfg.Protocol.AcceptTimeoutTicks
	if pt == 0 {
		pt = 20
	}
	if at == 0 {
		at = 20
	}
	return pt + at
}

// retryForwarded, on every tick, re-sends our forwarded proposals that are still
// unsettled while no master is known, if this member may not claim mastership
// itself: the member they went to (nextMember, or a master whose lease has since
// lapsed) may be down while a majority with a candidate is up. After
// forwardRetryTicks they go back to the queue and drive forwards them to the next
// member in turn. Only while no master is known: once one is, they are settled by
// execution or failed by applyClaim as before.
//
// Duplicates: the same command ID may now sit in the queues of two members (the
// first receiver was slow, not down). It is executed once all the same: whichever
// of them becomes master drops the other's forward of it (seenForward, while it
// holds the command: see resent) or finds it in its executed window (executed.go),
// which is exact for the instances it covers: a master proposes a forwarded
// command only once it has executed every instance it knows chosen, and refuses
// one whose copy might be in instances the window no longer covers (older than
// the window, or skipped by an installed checkpoint image). A copy the first
// receiver proposed in an instance is either chosen there - and the new master
// executes it before proposing - or never chosen anywhere (accepted values do not
// carry over to other instances). What remains: a receiver that keeps the command
// queued past seenForwardTicks, while the other copy is proposed but not yet
// chosen, and then meets that copy's forward.
func (r *Replica) retryForwarded() {
	now := r.cfg.Clock()
	if len(r.forwarded) == 0 || r.lease.isMaster(now) || r.lease.otherValid(now) ||
		(!r.cfg.NotCandidate && r.core.IsMember(r.cfg.Self)) || r.core.Abstaining() {
		r.fwdIdle = 0 // a candidate claims itself (drive); an abstaining member holds its work
		return
	}
	if r.fwdIdle++; r.fwdIdle < r.forwardRetryTicks() {
		return
	}
	r.fwdIdle = 0
	r.fwdTurn++
	var back []*Proposal
	for id, p := range r.forwarded {
		delete(r.forwarded, id)
		if orig, ok := r.bounced[id]; ok {
			// p is the copy our own command went on as after it was passed
			// back to us (StepGroup): send the original again, which the
			// caller waits on, so that forwarded holds it as before the bounce.
			delete(r.bounced, id)
			p = orig
		}
		if p.requeue() { // false: its caller gave up
			p.hops = 0 // our own retry, not a bounce
			back = append(back, p)
		}
	}
	sortByID(back)
	r.queue = append(back, r.queue...)
	if len(back) > 0 {
		r.log.Debug("no master: forwarded proposals sent again", zap.Int("count", len(back)),
			zap.Uint64("to", uint64(r.forwardTarget())))
	}
}

// resent reports whether a forwarded command this member took before may be
// taken again: it no longer holds the command - it passed it on, to a
// master it saw, or it was dropped - so this is its proposer's re-send
// (retryForwarded) or a duplicated frame of one it passed on; either way taking it
// again is as safe as the re-send itself (see retryForwarded): wherever else it is,
// the member that becomes master either drops the other copy's forward
// (seenForward, as this member does while it holds the command) or has executed it
// first. (Ticks do not tell a re-send from a late duplicate here: an idle member
// gets none.) With a long queue it does not look and answers no, so a burst of
// re-sends costs no quadratic scan: the proposer then tries the next member.
func (r *Replica) resent(id RequestID) bool {
	if _, ok := r.inflight[id]; ok || len(r.queue) > 1024 {
		return false
	}
	for _, p := range r.queue {
		if p.ID == id {
			return false
		}
	}
	return true
}

// forwardQueue sends queued proposals to another member (the master, normally).
func (r *Replica) forwardQueue(to ids.NodeID) {
	if len(r.queue) == 0 || to == r.cfg.Self || to == 0 {
		return
	}
	var cmds []Command
	hops, bytes, since := uint64(0), 0, ids.InstanceID(0)
	for _, p := range r.queue {
		if !p.take() {
			continue
		}
		if p.hops >= forwardHopsMax {
			p.fail(ErrNoMaster) // a stranger's proposal that bounced too often
			continue
		}
		// Bound each message like an instance value (count and bytes), or the
		// transport drops one frame carrying many large commands as too large;
		// a command over BatchBytesMax goes alone.
		if len(cmds) > 0 && bytes+len(p.Data) > r.cfg.BatchBytesMax {
			r.sendForward(to, hops, since, cmds)
			cmds, hops, bytes = nil, 0, 0
		}
		if len(cmds) == 0 || p.since < since {
			since = p.since // one bound for the message: the lowest holds for all
		}
		hops = max(hops, p.hops)
		bytes += len(p.Data)
		cmds = append(cmds, Command{ID: p.ID, Kind: p.kind, Data: p.Data})
		p.mayDup = true // from now on a copy of it may be anywhere
		if p.ID.Node == r.cfg.Self {
			p.sentTo = to
			r.forwarded[p.ID] = p
		}
		if len(cmds) == r.cfg.BatchCountMax {
			r.sendForward(to, hops, since, cmds)
			cmds, hops, bytes = nil, 0, 0
		}
	}
	clear(r.queue)
	r.queue = r.queue[:0]
	r.sendForward(to, hops, since, cmds)
}

func (r *Replica) sendForward(to ids.NodeID, hops uint64, since ids.InstanceID, cmds []Command) {
	if len(cmds) == 0 {
		return
	}
	r.stats.Forwarded += uint64(len(cmds))
	r.cfg.Sender.SendGroup(to, r.cfg.Group, &GroupMessage{Type: MsgForward, Hops: hops + 1, Since: uint64(since), Commands: cmds})
}

// mayPropose asks the executed window (executed.go) whether a command that may have
// a copy elsewhere, and was not chosen below since, may be proposed here: it was
// not chosen already, and the window reaches back far enough to be sure.
func (r *Replica) mayPropose(id RequestID, since ids.InstanceID) bool {
	executed, known := r.executed.lookup(id, since)
	if !executed && !known {
		r.stats.ForwardsTooOld++
		r.log.Debug("forwarded command older than the executed window: not proposed",
			zap.Uint64("since", uint64(since)), zap.Uint64("floor", uint64(r.executed.floor)))
	}
	return !executed && known
}

// maybePropose packs the pending master claim and, on the master, queued
// application proposals into the next instance value once the previous one is
// resolved.
func (r *Replica) maybePropose(now time.Time) {
	if len(r.inflight) > 0 || !r.core.ProposerIdle() || r.failed != nil {
		return
	}
	var cmds []Command
	if c := r.lease.claim; c != nil && r.lease.claimStale(now) {
		// The master changed, or one became valid, since the claim was made.
		// Proposing it anyway would be harmless to the master state (its version
		// check fails) but not to the master's lease: its phase 1 could adopt and
		// choose the master's in-flight value without the master knowing, and the
		// master's next lease read would miss it.
		r.lease.claim = nil
		c.fail(ErrBusy)
	}
	if c := r.lease.claim; c != nil && c.take() {
		cmds = append(cmds, Command{ID: c.ID, Kind: KindMaster, Data: c.Data})
		r.inflight[c.ID] = c
	}
	if r.lease.isMaster(now) {
		bytes, n := 0, 0
		for n < len(r.queue) && len(cmds) < r.cfg.BatchCountMax {
			p := r.queue[n]
			if len(cmds) > 0 && bytes+len(p.Data) > r.cfg.BatchBytesMax {
				break
			}
			if p.mayDup && p.kind == KindApp {
				if r.applied < r.core.Next() {
					// Chosen instances wait to be executed (a stalled state machine,
					// a new master's backlog): the window cannot yet tell whether a
					// copy of this one is in them. Propose it after.
					break
				}
				if !r.mayPropose(p.ID, p.since) {
					n++
					// Chosen already: a duplicate that came in before its original
					// was executed here. Or too old to tell. Either way its outcome
					// is not here to give (a copy, nobody waits on it; our own,
					// requeued by retryForwarded, whose copy went elsewhere).
					p.fail(fmt.Errorf("%w: a copy of it may have been chosen already", ErrUnknownOutcome))
					continue
				}
			}
			n++
			if !p.take() {
				continue // its caller gave up
			}
			bytes += len(p.Data)
			cmds = append(cmds, Command{ID: p.ID, Kind: p.kind, MayDup: p.mayDup, Data: p.Data})
			r.inflight[p.ID] = p
		}
		clear(r.queue[:n])
		r.queue = r.queue[n:]
	}
	if len(cmds) == 0 {
		return
	}
	r.inflightInst = r.core.Next()
	if err := r.core.Propose(encodeValue(cmds)); err != nil {
		r.requeueInflight() // only a non-member gets here
		r.log.Warn("propose failed", zap.Error(err))
		return
	}
	r.stats.Proposed++
	if r.cfg.OnPropose != nil {
		r.cfg.OnPropose(len(cmds))
	}
}

// flush hands the core's output to storage, the network and the state machine.
func (r *Replica) flush() {
	for r.failed == nil {
		if r.persisting {
			r.handleUnpersisted(r.core.TakeUnpersisted())
			return
		}
		if !r.core.HasReady() {
			return
		}
		rd := r.core.Ready()
		r.handleUnpersisted(rd)
		if !rd.MustPersist() {
			r.sendAll(rd.Messages)
			continue
		}
		batch := r.batchOf(rd)
		stored := r.noteStored(rd.HardState)
		if len(rd.Messages) == 0 {
			// Nothing waits on it: write it without fsync and go on. The storage
			// commits batches in order, so a later synced batch covers it.
			r.crashPoint(CrashBeforeChosenWrite)
			r.stats.LazyWrites++
			r.cfg.Storage.Commit(batch, func(err error) {
				if err != nil {
					r.cfg.Schedule(func() { r.storageFailed(err) })
					return
				}
				stored()
			})
			continue
		}
		r.crashPoint(CrashBeforeAcceptorSync)
		r.stats.SyncedWrites++
		batch.Sync = true
		r.persisting = true
		r.waiting = rd.Messages
		if r.cfg.Protocol.Knobs.ReplyBeforeDurable {
			r.waiting = nil
			r.sendAll(rd.Messages) // the planted bug: replies before the fsync
		}
		r.cfg.Storage.Commit(batch, func(err error) {
			if err == nil {
				stored()
			}
			r.cfg.Schedule(func() { r.persisted(err) })
		})
		return
	}
}

// noteStored returns the callback that records, once its batch is applied in the
// store, that the chosen values below hs.Next are readable.
func (r *Replica) noteStored(hs *instance.HardState) func() {
	if hs == nil {
		return func() {}
	}
	next := uint64(hs.Next)
	return func() {
		for {
			old := r.storedNext.Load()
			if old >= next || r.storedNext.CompareAndSwap(old, next) {
				return
			}
		}
	}
}

func (r *Replica) persisted(err error) {
	if err != nil {
		r.storageFailed(err)
		return
	}
	r.crashPoint(CrashAfterAcceptorSync)
	r.persisting = false
	msgs := r.waiting
	r.waiting = nil
	r.sendAll(msgs)
	r.flush()
}

// storageFailed stops the group: it must not reply as if durable what it could not
// persist (fail-stop). The node's other groups go on if their writes succeed.
func (r *Replica) storageFailed(err error) {
	if r.failed != nil {
		return
	}
	r.failed = err
	r.log.Error("storage write failed: group stopped (fail-stop)", zap.Error(err))
	r.failAll(fmt.Errorf("%w: %w", ErrStorage, err))
}

func (r *Replica) failAll(err error) {
	for _, p := range r.inflight {
		p.fail(err)
	}
	clear(r.inflight)
	for _, p := range r.forwarded {
		p.fail(err)
	}
	clear(r.forwarded)
	for _, p := range r.bounced {
		p.fail(err)
	}
	clear(r.bounced)
	for _, p := range r.queue {
		p.fail(err)
	}
	r.queue = nil
	for _, lr := range r.leaseReads {
		lr.done(err)
	}
	r.leaseReads = nil
	for id, b := range r.barriers {
		b.done(err)
		delete(r.barriers, id)
	}
	r.lease.claim = nil
	if t := r.lease.transfer; t != nil {
		r.lease.transfer = nil
		t.finish(err)
	}
}

func (r *Replica) batchOf(rd instance.Ready) logstore.Batch {
	w := logstore.GroupWrite{Group: r.cfg.Group}
	if hs := rd.HardState; hs != nil {
		w.Meta = &logstore.Meta{Promised: hs.Promised, ChosenNext: hs.Next}
	}
	for _, e := range rd.Entries {
		w.Entries = append(w.Entries, logstore.Entry{Instance: e.Instance, Ballot: e.Ballot, Value: e.Value})
	}
	return logstore.Batch{Writes: []logstore.GroupWrite{w}}
}

// handleUnpersisted does the parts of a Ready that wait for nothing.
func (r *Replica) handleUnpersisted(rd instance.Ready) {
	r.sendAll(rd.SendNow)
	for _, e := range rd.Committed {
		r.applySystem(e)
	}
	r.applyQueue = append(r.applyQueue, rd.Committed...)
	r.drainApply()
	for _, t := range rd.Teach {
		r.teacher.Request(t.To, t.From)
	}
	r.pumpTeacher()
	r.drive()
}

func (r *Replica) sendAll(msgs []instance.Message) {
	for i := range msgs {
		m := &msgs[i]
		if m.To == r.cfg.Self {
			if err := r.core.Step(*m); err != nil {
				r.log.Error("self message refused", zap.Error(err))
			}
			continue
		}
		r.cfg.Sender.Send(m.To, r.cfg.Group, m)
	}
}

// pumpTeacher streams chosen values to the learners this member teaches, as far as
// their windows and the node's teaching budget allow.
func (r *Replica) pumpTeacher() {
	if !r.teacher.Active() {
		return
	}
	next := min(r.core.Next(), ids.InstanceID(r.storedNext.Load()))
	need, err := r.teacher.Pump(next, r.minRetained, logSource{r}, r.cfg.TeachBudget,
		func(to ids.NodeID, es []instance.Entry) {
			r.cfg.Sender.Send(to, r.cfg.Group, &instance.Message{Type: instance.MsgLearnValues,
				From: r.cfg.Self, To: to, Next: next, Entries: es})
		})
	if err != nil {
		r.log.Warn("teach: read log", zap.Error(err))
	}
	for _, to := range need {
		r.offerCheckpoint(to)
	}
}

// logSource reads chosen values for the teacher.
type logSource struct{ r *Replica }

func (s logSource) Entries(from ids.InstanceID, maxCount, maxBytes int) ([]instance.Entry, error) {
	es, err := s.r.cfg.Storage.Entries(s.r.cfg.Group, from, maxCount, maxBytes)
	if errors.Is(err, logstore.ErrCorrupt) {
		// Teach up to the damaged record, never past it: the learner's timeout
		// sends it to another member for the rest.
		next := min(s.r.core.Next(), from+ids.InstanceID(maxCount))
		if es, err = s.r.readGoodPrefix(from, next, zapcore.DebugLevel); err == nil && len(es) == 0 {
			err = fmt.Errorf("record of chosen instance %d is corrupt", from)
		}
	}
	out := make([]instance.Entry, len(es))
	for i, e := range es {
		out[i] = instance.Entry{Instance: e.Instance, Ballot: e.Ballot, Value: e.Value}
	}
	return out, err
}

// drainApply executes chosen instances in order until the state machine stalls.
func (r *Replica) drainApply() {
	progressed := false
	for len(r.applyQueue) > 0 {
		e := r.applyQueue[0]
		if e.Instance >= r.applied {
			if err := r.execute(e, false); err != nil {
				r.stats.ApplyErrors++
				r.log.Error("state machine cannot apply: group stalled, will retry",
					zap.Uint64("instance", uint64(e.Instance)), zap.Error(err))
				break
			}
			progressed = true
		}
		r.applyQueue[0] = instance.Entry{}
		r.applyQueue = r.applyQueue[1:]
	}
	if progressed {
		r.checkBarriers()
		r.maybeMakeImage()
		r.maybeTrim()
	}
}

// execute runs instance e: master claims on the master state, application commands
// on the state machine (unless skipApp: a replay below the state machine's durable
// point), and settles the proposals of ours that were in it.
func (r *Replica) execute(e instance.Entry, skipApp bool) error {
	if e.Instance != r.applied {
		panic(fmt.Sprintf("group %d: executing instance %d, next to apply is %d", r.cfg.Group, e.Instance, r.applied))
	}
	var cmds []Command
	if d := r.decoded; d.ok && d.inst == e.Instance {
		cmds = d.cmds // applySystem decoded it just before
	} else {
		var err error
		if cmds, err = decodeValue(e.Value); err != nil {
			return fmt.Errorf("instance %d: %w", e.Instance, err)
		}
	}
	r.decoded = decodedValue{}
	results := make([][]byte, len(cmds))
	var app [][]byte
	var appAt []int
	for i, c := range cmds {
		if c.Kind == KindApp {
			app = append(app, c.Data)
			appAt = append(appAt, i)
		}
	}
	if !skipApp && e.Instance >= r.smFloor {
		out, err := r.cfg.StateMachine.Execute(e.Instance, app)
		if err != nil {
			return err
		}
		r.crashPoint(CrashAfterExecute)
		for k, i := range appAt {
			if k < len(out) {
				results[i] = out[k]
			}
		}
	}
	for i, c := range cmds {
		if c.Kind != KindApp {
			results[i] = r.sysResults[c.ID]
			delete(r.sysResults, c.ID)
		}
	}
	r.applied++
	r.next.Store(uint64(r.core.Next()))
	now := r.cfg.Clock()
	for _, c := range cmds {
		if c.Kind == KindApp && c.MayDup {
			r.executed.add(c.ID, e.Instance, now)
		}
	}
	for i, c := range cmds {
		// Settle what we proposed (ours or forwarded to us) and, on the member a
		// command came from, the caller waiting for it.
		if p, ok := r.inflight[c.ID]; ok {
			delete(r.inflight, c.ID)
			if c.Kind != KindMaster && c.ID.Node == r.cfg.Self {
				r.stats.Commands++
			}
			p.finish(Result{Instance: e.Instance, Value: results[i]}, nil)
		}
		// Not else: a copy of our own forwarded command may have come back and
		// been proposed here; the caller waits on the original.
		if p, ok := r.forwarded[c.ID]; ok && p.state.Load() != stateDone {
			delete(r.forwarded, c.ID)
			r.stats.Commands++
			p.finish(Result{Instance: e.Instance, Value: results[i]}, nil)
		}
		if p, ok := r.bounced[c.ID]; ok {
			delete(r.bounced, c.ID)
			if p.state.Load() != stateDone {
				p.finish(Result{Instance: e.Instance, Value: results[i]}, nil)
			}
		}
	}
	if len(r.inflight) > 0 && e.Instance >= r.inflightInst {
		// The instance our value was proposed in chose another value; it can never
		// be chosen elsewhere (accepted values do not carry over), so propose again.
		r.requeueInflight()
	}
	return nil
}

// requeueInflight puts application proposals whose instance chose another value
// back at the front of the queue. A master claim is dropped instead: drive decides
// afresh whether one is still needed, with the current version.
func (r *Replica) requeueInflight() {
	var back []*Proposal
	for _, p := range r.inflight {
		if p.kind == KindMaster {
			if r.lease.claim == p {
				r.lease.claim = nil
			}
			p.finish(Result{}, ErrClaimLost) // a transfer's caller learns it now
			continue
		}
		if p.requeue() {
			back = append(back, p)
		}
	}
	clear(r.inflight)
	sortByID(back)
	r.queue = append(back, r.queue...)
}

// publish makes the master view and progress readable from other goroutines.
func (r *Replica) publish() {
	r.next.Store(uint64(r.core.Next()))
	now := r.cfg.Clock()
	info := MasterInfo{Version: r.lease.state.Version}
	switch {
	case r.lease.isMaster(now):
		info.Master, info.Expiry, info.IsSelf = r.cfg.Self, r.lease.expiry, true
	case r.lease.otherValid(now):
		info.Master, info.Expiry = r.lease.state.Master, r.lease.expiry
	}
	if old := r.published.Load(); old == nil || *old != info {
		r.published.Store(&info)
		r.core.SetTeacherHint(info.Master)
	}
}

// Master returns the group's master as this member sees it; safe to call from any
// goroutine.
func (r *Replica) Master() MasterInfo {
	if p := r.published.Load(); p != nil {
		return *p
	}
	return MasterInfo{}
}

// Crash points: the persistence steps a test may kill a member at (Config.CrashPoint).
const (
	CrashBeforeAcceptorSync = "before acceptor fsync"         // a synced batch (promise, accepted value) is about to be written
	CrashAfterAcceptorSync  = "after acceptor fsync"          // it is durable; the replies that wait on it are not sent
	CrashBeforeChosenWrite  = "before chosen mark"            // a chosen mark or learned value is about to be written, unsynced
	CrashAfterExecute       = "after execute"                 // the state machine executed an instance; the engine has not counted it
	CrashImageMade          = "checkpoint made"               // the state machine wrote an image; it is not sealed
	CrashImageSealed        = "checkpoint sealed"             // the image is sealed in place; the log is not trimmed
	CrashBeforeTrim         = "before trim"                   // the log is about to be trimmed
	CrashAfterTrim          = "after trim"                    // trimmed; the group does not know yet
	CrashBeforeInstall      = "before install"                // a received image is verified; the state machine has not seen it
	CrashAfterInstall       = "during install: after install" // the state machine holds the image; it is not the local image yet
	CrashAfterImageRename   = "during install: after rename"  // it is the local image; the log is not trimmed to it
	CrashAfterInstallTrim   = "during install: after trim"    // trimmed to it; the core has not moved on
)

// CrashPoints lists every crash point.
var CrashPoints = []string{CrashBeforeAcceptorSync, CrashAfterAcceptorSync, CrashBeforeChosenWrite,
	CrashAfterExecute, CrashImageMade, CrashImageSealed, CrashBeforeTrim, CrashAfterTrim,
	CrashBeforeInstall, CrashAfterInstall, CrashAfterImageRename, CrashAfterInstallTrim}

func (r *Replica) crashPoint(name string) {
	if r.cfg.CrashPoint != nil {
		r.cfg.CrashPoint(name)
	}
}
