package group

import (
	"errors"
	"fmt"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/instance"
	"github.com/multipaxos/engine/logstore"
	"github.com/multipaxos/engine/statemachine"
	"go.uber.org/zap"
)

// Storage is the part of a logstore.Store a group uses.
type Storage interface {
	LoadMeta(g ids.GroupID) (logstore.Meta, error)
	Entry(g ids.GroupID, inst ids.InstanceID) (logstore.Entry, error)
	Entries(g ids.GroupID, from ids.InstanceID, maxCount, maxBytes int) ([]logstore.Entry, error)
	Commit(b logstore.Batch, done func(error))
}

// Sender delivers protocol messages to peers. Send must not block; a lost message
// is fine (Paxos retries).
type Sender interface {
	Send(to ids.NodeID, g ids.GroupID, m *instance.Message)
}

// Config configures one Replica.
type Config struct {
	Group   ids.GroupID
	Self    ids.NodeID
	Members []ids.NodeID
	Storage Storage
	Sender  Sender
	// StateMachine receives the group's chosen commands.
	StateMachine statemachine.StateMachine
	// Schedule runs fn later in the replica's serial context (the goroutine that
	// calls the Replica's methods). Storage completions come back through it.
	Schedule func(fn func())
	// Protocol holds the protocol timing (in ticks), seed and test knobs; Self and
	// Members are taken from above.
	Protocol instance.Config
	// BatchCountMax bounds how many commands one instance value carries. Default 1024.
	BatchCountMax int
	// BatchBytesMax bounds the command bytes of one instance value. Default 4 MiB.
	BatchBytesMax int
	// PendingMax bounds the proposals queued in this group; beyond it Propose fails
	// with ErrBusy. Default 65536.
	PendingMax int
	// TeachCountMax and TeachBytesMax bound one MsgLearnValues. Defaults 256 and 1 MiB.
	TeachCountMax int
	TeachBytesMax int
	Logger        *zap.Logger
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
	if c.TeachCountMax == 0 {
		c.TeachCountMax = 256
	}
	if c.TeachBytesMax == 0 {
		c.TeachBytesMax = 1 << 20
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
}

// Replica is one member's part in one group: it drives an instance.Core - persists
// what it hands out, sends, applies - batches proposals into instance values and
// tells callers their results. It is single-threaded: every method must be called
// from one serial context (the node's worker for the group, or the simulation's one
// goroutine). It starts no goroutine and reads no clock; time is Tick.
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

	queue        []*Proposal // queued, not in an instance
	queuedBytes  int
	inflight     map[RequestID]*Proposal // in the value proposed at inflightInst
	inflightInst ids.InstanceID

	applyQueue []instance.Entry // chosen, not yet executed (the state machine stalled)
	applied    ids.InstanceID   // next instance to execute

	stats Stats
}

// Stats are a replica's counters.
type Stats struct {
	Next         ids.InstanceID // first instance not known chosen
	Applied      ids.InstanceID // next instance to execute
	Promised     ids.Ballot     // the acceptor's promise
	Queued       int
	Proposed     uint64 // instance values this replica proposed
	Commands     uint64 // own commands executed
	SyncedWrites uint64 // storage batches that waited for an fsync
	LazyWrites   uint64 // storage batches written without fsync
	ApplyErrors  uint64
	Core         instance.Stats
}

// New opens the group from storage: it loads the acceptor state, replays chosen
// instances the state machine has not made durable, and returns a replica ready to
// take messages.
func New(cfg Config) (*Replica, error) {
	cfg.fillDefaults()
	r := &Replica{cfg: cfg, inflight: map[RequestID]*Proposal{}}
	r.log = cfg.Logger.With(zap.Uint32("group", uint32(cfg.Group)))
	meta, err := cfg.Storage.LoadMeta(cfg.Group)
	if err != nil {
		return nil, fmt.Errorf("group %d: load meta: %w", cfg.Group, err)
	}
	rec := instance.Recovered{HardState: instance.HardState{Promised: meta.Promised, Next: meta.ChosenNext}}
	if e, err := cfg.Storage.Entry(cfg.Group, meta.ChosenNext); err == nil {
		rec.Accepted = instance.Entry{Instance: e.Instance, Ballot: e.Ballot, Value: e.Value}
	} else if !errors.Is(err, logstore.ErrNotFound) {
		return nil, fmt.Errorf("group %d: load accepted instance %d: %w", cfg.Group, meta.ChosenNext, err)
	}
	pc := cfg.Protocol
	pc.Self, pc.Members = cfg.Self, cfg.Members
	pc.Seed ^= uint64(cfg.Group) << 32
	if r.core, err = instance.New(pc, rec); err != nil {
		return nil, fmt.Errorf("group %d: %w", cfg.Group, err)
	}
	r.applied = cfg.StateMachine.Applied()
	if r.applied < meta.MinRetained {
		return nil, fmt.Errorf("group %d: state machine at instance %d but the log starts at %d", cfg.Group, r.applied, meta.MinRetained)
	}
	if err := r.replay(meta.ChosenNext); err != nil {
		return nil, err
	}
	return r, nil
}

// replay executes the chosen instances [applied, next) from the log.
func (r *Replica) replay(next ids.InstanceID) error {
	for r.applied < next {
		es, err := r.cfg.Storage.Entries(r.cfg.Group, r.applied, 256, 4<<20)
		if err != nil {
			return fmt.Errorf("group %d: replay from %d: %w", r.cfg.Group, r.applied, err)
		}
		if len(es) == 0 || es[0].Instance != r.applied {
			return fmt.Errorf("group %d: replay: chosen instance %d missing from the log", r.cfg.Group, r.applied)
		}
		for _, e := range es {
			if e.Instance >= next {
				break
			}
			if err := r.execute(instance.Entry{Instance: e.Instance, Ballot: e.Ballot, Value: e.Value}); err != nil {
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
// storage failure.
func (r *Replica) Propose(p *Proposal) {
	switch {
	case r.failed != nil:
		p.fail(fmt.Errorf("%w: %w", ErrStopped, r.failed))
		return
	case len(r.queue) >= r.cfg.PendingMax:
		p.fail(ErrBusy)
		return
	}
	r.queue = append(r.queue, p)
	r.queuedBytes += len(p.Data)
	r.maybePropose()
	r.flush()
}

// Step feeds one message from a peer.
func (r *Replica) Step(m instance.Message) error {
	if r.failed != nil {
		return nil
	}
	if err := r.core.Step(m); err != nil {
		return err
	}
	r.flush()
	return nil
}

// Tick advances the replica's logical clock.
func (r *Replica) Tick() {
	if r.failed != nil {
		return
	}
	r.core.Tick()
	r.drainApply() // retry a stalled state machine
	r.flush()
}

// Stop fails every proposal still waiting. The replica must not be used afterwards.
func (r *Replica) Stop() {
	r.failAll(ErrStopped)
}

// Stats returns the replica's counters.
func (r *Replica) Stats() Stats {
	s := r.stats
	s.Next, s.Applied, s.Queued, s.Core = r.core.Next(), r.applied, len(r.queue), r.core.Stats()
	s.Promised = r.core.Promised()
	return s
}

// Core exposes the protocol state for tests and the simulation's checks.
func (r *Replica) Core() *instance.Core { return r.core }

// maybePropose packs queued proposals into the next instance value once the
// previous one is resolved.
func (r *Replica) maybePropose() {
	if len(r.inflight) > 0 || len(r.queue) == 0 || !r.core.ProposerIdle() || r.failed != nil {
		return
	}
	var cmds []Command
	bytes, n := 0, 0
	for n < len(r.queue) && len(cmds) < r.cfg.BatchCountMax {
		p := r.queue[n]
		if len(cmds) > 0 && bytes+len(p.Data) > r.cfg.BatchBytesMax {
			break
		}
		n++
		r.queuedBytes -= len(p.Data)
		if !p.take() {
			continue // its caller gave up
		}
		bytes += len(p.Data)
		cmds = append(cmds, Command{ID: p.ID, Data: p.Data})
		r.inflight[p.ID] = p
	}
	clear(r.queue[:n])
	r.queue = r.queue[n:]
	if len(cmds) == 0 {
		return
	}
	r.inflightInst = r.core.Next()
	if err := r.core.Propose(encodeValue(cmds)); err != nil {
		// ProposerIdle was checked above; only a non-member gets here.
		r.requeueInflight()
		r.log.Warn("propose failed", zap.Error(err))
		return
	}
	r.stats.Proposed++
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
		if len(rd.Messages) == 0 {
			// Nothing waits on it: write it without fsync and go on. The storage
			// commits batches in order, so a later synced batch covers it.
			r.stats.LazyWrites++
			r.cfg.Storage.Commit(batch, r.lazyDone)
			continue
		}
		r.stats.SyncedWrites++
		batch.Sync = true
		r.persisting = true
		r.waiting = rd.Messages
		if r.cfg.Protocol.Knobs.ReplyBeforeDurable {
			r.waiting = nil
			r.sendAll(rd.Messages) // the planted bug: replies before the fsync
		}
		r.cfg.Storage.Commit(batch, func(err error) { r.cfg.Schedule(func() { r.persisted(err) }) })
		return
	}
}

func (r *Replica) lazyDone(err error) {
	if err != nil {
		r.cfg.Schedule(func() { r.storageFailed(err) })
	}
}

func (r *Replica) persisted(err error) {
	if err != nil {
		r.storageFailed(err)
		return
	}
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
	for _, p := range r.queue {
		p.fail(err)
	}
	r.queue, r.queuedBytes = nil, 0
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
		r.applyQueue = append(r.applyQueue, e)
	}
	r.drainApply()
	for _, t := range rd.Teach {
		r.teach(t)
	}
	r.maybePropose()
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

// teach answers a learn request from the log.
func (r *Replica) teach(t instance.LearnRequest) {
	next := r.core.Next()
	es, err := r.cfg.Storage.Entries(r.cfg.Group, t.From, r.cfg.TeachCountMax, r.cfg.TeachBytesMax)
	if err != nil {
		r.log.Warn("teach: read log", zap.Uint64("from", uint64(t.From)), zap.Error(err))
		return
	}
	m := instance.Message{Type: instance.MsgLearnValues, From: r.cfg.Self, To: t.To, Next: next}
	for _, e := range es {
		if e.Instance >= next {
			break // accepted here but not known chosen: not ours to teach
		}
		m.Entries = append(m.Entries, instance.Entry{Instance: e.Instance, Ballot: e.Ballot, Value: e.Value})
	}
	if len(m.Entries) > 0 {
		r.cfg.Sender.Send(t.To, r.cfg.Group, &m)
	}
}

// drainApply executes chosen instances in order until the state machine stalls.
func (r *Replica) drainApply() {
	for len(r.applyQueue) > 0 {
		e := r.applyQueue[0]
		if e.Instance >= r.applied {
			if err := r.execute(e); err != nil {
				r.stats.ApplyErrors++
				r.log.Error("state machine cannot apply: group stalled, will retry",
					zap.Uint64("instance", uint64(e.Instance)), zap.Error(err))
				return
			}
		}
		r.applyQueue[0] = instance.Entry{}
		r.applyQueue = r.applyQueue[1:]
	}
}

// execute runs instance e on the state machine and settles the proposals of ours
// that were in it.
func (r *Replica) execute(e instance.Entry) error {
	if e.Instance != r.applied {
		panic(fmt.Sprintf("group %d: executing instance %d, next to apply is %d", r.cfg.Group, e.Instance, r.applied))
	}
	cmds, err := decodeValue(e.Value)
	if err != nil {
		return fmt.Errorf("instance %d: %w", e.Instance, err)
	}
	data := make([][]byte, len(cmds))
	for i := range cmds {
		data[i] = cmds[i].Data
	}
	results, err := r.cfg.StateMachine.Execute(e.Instance, data)
	if err != nil {
		return err
	}
	r.applied++
	for i, c := range cmds {
		if p, ok := r.inflight[c.ID]; ok && c.ID.Node == r.cfg.Self {
			var res []byte
			if i < len(results) {
				res = results[i]
			}
			delete(r.inflight, c.ID)
			r.stats.Commands++
			p.finish(Result{Instance: e.Instance, Value: res}, nil)
		}
	}
	if len(r.inflight) > 0 && e.Instance >= r.inflightInst {
		// The instance our value was proposed in chose another value; it can never
		// be chosen elsewhere (accepted values do not carry over), so propose again.
		r.requeueInflight()
	}
	return nil
}

func (r *Replica) requeueInflight() {
	var back []*Proposal
	for _, p := range r.inflight {
		if p.requeue() {
			back = append(back, p)
			r.queuedBytes += len(p.Data)
		}
	}
	clear(r.inflight)
	sortByID(back)
	r.queue = append(back, r.queue...)
}
