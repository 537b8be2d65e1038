// Package node is the engine's front door: one Node per process takes part in many
// independent Paxos groups over one network transport (a gnet engine) and one Pebble
// database, and feeds each group's chosen commands, in order, to the application's
// state machine.
//
// # Threading
//
// Groups run on a small pool of worker goroutines (Options.Workers). Each group has
// an inbox; posting to it schedules the group on the pool if it is not scheduled
// already, and one worker then runs everything in the inbox serially, so a group's
// protocol state needs no locks and different groups run in parallel. The network
// event loop only decodes frames and posts them; storage completions (the group
// commit of logstore, shared by all groups) are posted back the same way. A ticker
// goroutine posts the logical clock tick.
//
// # Errors
//
// Propose fails with a typed error that says whether the command may still be
// executed: ErrCanceled (never proposed, will not run) and ErrUnknownOutcome (it was
// in flight) both wrap the context's error; ErrValueTooLarge, ErrUnknownGroup,
// ErrBusy and ErrStopped say nothing was proposed (ErrStopped also wraps
// ErrUnknownOutcome when the proposal was in flight).
package node

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/multipaxos/engine/checkpoint"
	"github.com/multipaxos/engine/group"
	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/instance"
	"github.com/multipaxos/engine/learner"
	"github.com/multipaxos/engine/logstore"
	"github.com/multipaxos/engine/netio"
	"github.com/multipaxos/engine/statemachine"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// Errors of the public API. The group package's errors are re-exported so that a
// caller needs only this package.
var (
	ErrValueTooLarge  = errors.New("node: value larger than ValueBytesMax")
	ErrUnknownGroup   = errors.New("node: unknown group")
	ErrStopped        = group.ErrStopped
	ErrCanceled       = group.ErrCanceled
	ErrUnknownOutcome = group.ErrUnknownOutcome
	ErrBusy           = group.ErrBusy
	ErrStorage        = group.ErrStorage
	// ErrNotMaster: see NotMasterError.
	ErrNotMaster = group.ErrNotMaster
	// ErrNoMaster: the group has no master this node can reach or become.
	ErrNoMaster = group.ErrNoMaster
)

// NotMasterError is ErrNotMaster with the master this node knows of (0: none).
type NotMasterError = group.NotMasterError

// Result is the outcome of a successful Propose: the instance that chose the
// command and the state machine's result for it on this node.
type Result = group.Result

// Node is one member process. Its methods are safe for concurrent use.
type Node struct {
	opts    Options
	log     *zap.Logger
	store   *logstore.PebbleStore
	tr      netio.Transport
	groups  []*runner
	work    chan *runner
	seq     atomic.Uint64
	stopped atomic.Bool
	quit    chan struct{}
	wg      sync.WaitGroup
	codecs  sync.Pool
	stopMu  sync.Mutex
	// teachBudget is the bandwidth share of every group's teacher (nil: no limit).
	teachBudget learner.Budget
	metrics     *metrics
	identity    *identity
	// bg counts the groups' background work (checkpoint images, trims); Stop
	// waits for it before it closes the store.
	bg sync.WaitGroup
}

// background runs a group's file work (checkpoint images, trims) off its worker.
func (n *Node) background(fn func()) {
	n.bg.Go(fn)
}

// teachBudget is a token bucket of bytes shared by every group's teacher.
type teachBudget struct{ l *rate.Limiter }

func (b *teachBudget) Take(bytes int) bool { return b.l.AllowN(time.Now(), bytes) }

// runner is one group's inbox and its replica. The replica is touched only by the
// worker that holds the runner (scheduled == true and popped from work).
type runner struct {
	n       *Node
	g       ids.GroupID
	replica *group.Replica
	// replayer feeds the group's checkpoint copy (CheckpointCopies), if any.
	replayer *checkpoint.Replayer

	mu        sync.Mutex
	inbox     []func(*group.Replica)
	ticks     int
	scheduled bool
	closed    bool
	wantTick  atomic.Bool // the replica has a timer running (NeedsTick)
	wantSweep atomic.Bool // the replica holds memory to give back when quiet (NeedsSweep)
}

// Start opens the data dir, starts the transport, opens every group (replaying what
// its state machine has not made durable) and returns the running node.
func Start(opts Options) (*Node, error) {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	n := &Node{opts: opts, log: opts.Logger.With(zap.Uint64("node", uint64(opts.NodeID))),
		quit: make(chan struct{}), work: make(chan *runner, opts.Groups)}
	n.codecs.New = func() any { return instance.NewCodec() }
	n.metrics = newMetrics()
	if opts.TeachBytesPerSecond > 0 {
		// A burst of one window lets a session fill its window at once; the rate
		// bounds the average.
		burst := max(opts.Learner.WindowBytes, opts.MaxFrameBytes) // any one message fits
		n.teachBudget = &teachBudget{rate.NewLimiter(rate.Limit(opts.TeachBytesPerSecond), burst)}
	}
	// Request IDs must not repeat across restarts: start from a random point.
	n.seq.Store(rand.Uint64() >> 1)

	store, err := logstore.Open(filepath.Join(opts.DataDir, "log"), logstore.Options{Logger: opts.Logger,
		MemTableSize: uint64(opts.LogMemTableBytes), FS: opts.logFS})
	if err != nil {
		return nil, fmt.Errorf("node: open log store: %w", err)
	}
	n.store = store
	if err := n.openIdentity(); err != nil {
		n.closeOnFailedStart()
		return nil, err
	}
	abstain := n.identity.abstaining()

	members := opts.memberIDs()
	proto := instance.Config{
		PrepareTimeoutTicks: opts.ticks(opts.ProposeRetryTimeout),
		AcceptTimeoutTicks:  opts.ticks(opts.ProposeRetryTimeout),
		RetryJitterTicks:    max(1, opts.ticks(opts.ProposeRetryTimeout)/3),
		LearnTimeoutTicks:   opts.ticks(opts.LearnRetryTimeout),
		StatusIntervalTicks: -1, // the node-wide status exchange does it for all groups at once
		Seed:                rand.Uint64(),
		Knobs:               opts.Knobs,
	}
	n.groups = make([]*runner, opts.Groups)
	for g := range n.groups {
		r := &runner{n: n, g: ids.GroupID(g)}
		n.groups[g] = r
		voters, followers := members, []ids.NodeID(nil)
		if opts.InitialMembers != nil {
			voters, followers = opts.InitialMembers(r.g)
		}
		sm := opts.StateMachines(r.g)
		cps, err := n.checkpointsOf(r, sm)
		if err != nil {
			n.closeOnFailedStart()
			return nil, err
		}
		rep, err := group.New(group.Config{
			Group: r.g, Self: opts.NodeID, Members: voters, Followers: followers,
			Storage: store, Sender: n, StateMachine: sm, Checkpoints: cps,
			Schedule: r.schedule, Protocol: proto,
			Lease: opts.Lease, ClockDrift: opts.ClockDrift,
			NotCandidate:      opts.MasterCandidate != nil && !opts.MasterCandidate(r.g),
			Abstain:           abstain,
			RejectIfNotMaster: opts.RejectIfNotMaster,
			BatchCountMax:     opts.BatchCountMax, BatchBytesMax: opts.BatchBytesMax,
			PendingMax: opts.PendingMax, Logger: opts.Logger,
			Learner: opts.Learner, TeachBudget: n.teachBudget, CrashPoint: opts.CrashPoint,
			OnPropose: func(cmds int) { n.metrics.batchSize.Observe(float64(cmds)) },
		})
		if err != nil {
			n.closeOnFailedStart()
			return nil, fmt.Errorf("node: %w", err)
		}
		r.replica = rep
		if r.replayer != nil {
			// A crash after an install and before the copy was reset from the
			// image leaves the copy below the log's start, where it can never
			// catch up from the log: reset it now.
			if dir, _ := rep.LocalImage(); dir != "" && r.replayer.Applied() < rep.Stats().MinRetained {
				if err := r.replayer.Reset(dir); err != nil {
					n.closeOnFailedStart()
					return nil, fmt.Errorf("node: group %d: reset the checkpoint copy: %w", r.g, err)
				}
			}
			r.replayer.Start()
		}
		r.wantTick.Store(true)
	}

	if opts.Transport != nil {
		n.tr, err = opts.Transport(n.onFrame)
	} else {
		n.tr, err = netio.StartTCP(netio.Options{
			NodeID: opts.NodeID, ClusterID: opts.ClusterID, ListenAddr: opts.Addr,
			Peers: opts.Members, Handler: n.onFrame, Logger: opts.Logger,
			MaxFrameBytes: opts.MaxFrameBytes,
			ClusterSecret: opts.ClusterSecret,
			Incarnation:   n.identity.incarnation(),
			AdmitPeer:     n.identity.admitPeer,
			OnAdmitted:    n.identity.onAdmitted,
		})
	}
	if err != nil {
		n.closeOnFailedStart()
		return nil, fmt.Errorf("node: start transport: %w", err)
	}

	for i := 0; i < opts.Workers; i++ {
		n.wg.Add(1)
		go n.worker()
	}
	n.wg.Add(1)
	go n.ticker()
	n.wg.Add(1)
	go n.watchFailStop() // failstop.go
	n.log.Info("node started", zap.Int("groups", opts.Groups), zap.String("addr", opts.Addr))
	return n, nil
}

// ID is this node's ID.
func (n *Node) ID() ids.NodeID { return n.opts.NodeID }

// Groups is the number of groups.
func (n *Node) Groups() int { return len(n.groups) }

// Propose proposes cmd in group g and waits until it is chosen and executed on this
// node, then returns the instance and the state machine's result. See the package
// doc for the errors.
func (n *Node) Propose(ctx context.Context, g ids.GroupID, cmd []byte) (Result, error) {
	if int(g) >= len(n.groups) {
		return Result{}, fmt.Errorf("%w: %d (have %d)", ErrUnknownGroup, g, len(n.groups))
	}
	if len(cmd) > n.opts.ValueBytesMax {
		n.metrics.refusedTooLarge.Inc()
		return Result{}, fmt.Errorf("%w: %d bytes, limit %d", ErrValueTooLarge, len(cmd), n.opts.ValueBytesMax)
	}
	if n.stopped.Load() {
		return Result{}, ErrStopped
	}
	if err := n.refuseIfFailed(); err != nil {
		return Result{}, err // fail-stop: acknowledge nothing more (failstop.go)
	}
	start := time.Now()
	p := group.NewProposal(group.RequestID{Node: n.opts.NodeID, Seq: n.seq.Add(1)}, cmd)
	if !n.groups[g].post(func(r *group.Replica) { r.Propose(p) }) {
		return Result{}, ErrStopped
	}
	res, err := p.Wait(ctx)
	if err == nil {
		n.metrics.proposeLatency.Observe(time.Since(start).Seconds())
	}
	n.metrics.noteProposeError(err)
	return res, err
}

// Stats is a snapshot of the node's counters.
type Stats struct {
	Log       logstore.Stats // writes and WAL fsyncs shared by all groups
	Transport netio.Stats
	// Verified: every other member has admitted this node's store, so its
	// groups vote (identity.go); false while a new store waits for them.
	Verified bool
	// PeersRefused counts connections refused because the peer came back with
	// a different store (ErrPeerReincarnated) since Start.
	PeersRefused uint64
}

// Stats returns the node-wide counters.
func (n *Node) Stats() Stats {
	refused, verified := n.identity.stats()
	return Stats{Log: n.store.Stats(), Transport: n.tr.Stats(), Verified: verified, PeersRefused: refused}
}

// GroupStats returns one group's counters, read in the group's own context.
func (n *Node) GroupStats(ctx context.Context, g ids.GroupID) (group.Stats, error) {
	if int(g) >= len(n.groups) {
		return group.Stats{}, ErrUnknownGroup
	}
	ch := make(chan group.Stats, 1)
	if !n.groups[g].post(func(r *group.Replica) { ch <- r.Stats() }) {
		return group.Stats{}, ErrStopped
	}
	select {
	case s := <-ch:
		return s, nil
	case <-ctx.Done():
		return group.Stats{}, ctx.Err()
	}
}

// Stop shuts the node down: the transport first (nothing new arrives), then the
// groups (waiting proposals fail with ErrStopped), then the store. It returns when
// no goroutine of the node is left. Stop is idempotent.
func (n *Node) Stop() error {
	n.stopMu.Lock()
	defer n.stopMu.Unlock()
	if n.stopped.Swap(true) {
		return nil
	}
	errTr := n.tr.Close()
	close(n.quit)
	n.wg.Wait()
	for _, r := range n.groups {
		r.mu.Lock()
		r.closed = true
		r.inbox = nil
		r.mu.Unlock()
		r.replica.Stop()
	}
	n.bg.Wait()
	var errRep error
	for _, r := range n.groups {
		if r.replayer != nil {
			errRep = errors.Join(errRep, r.replayer.Close())
		}
	}
	errStore := n.store.Close()
	n.log.Info("node stopped")
	return errors.Join(errTr, errRep, errStore)
}

// closeOnFailedStart releases what Start opened before it failed.
func (n *Node) closeOnFailedStart() {
	for _, r := range n.groups {
		if r != nil && r.replayer != nil {
			_ = r.replayer.Close()
		}
	}
	_ = n.store.Close()
}

// checkpointsOf returns group r's checkpoint configuration: the state machine
// makes its own images, or a replayer feeds a copy of it, or there are none.
func (n *Node) checkpointsOf(r *runner, sm statemachine.StateMachine) (*group.CheckpointConfig, error) {
	dir := filepath.Join(n.opts.CheckpointDir, fmt.Sprintf("g%05d", r.g))
	cfg := &group.CheckpointConfig{
		Dir: filepath.Join(dir, "images"), KeepInstances: n.opts.KeepInstances, Every: n.opts.CheckpointEvery,
		ChunkBytes: n.opts.CheckpointChunkBytes, Background: n.background,
	}
	switch sm := sm.(type) {
	case statemachine.Checkpointer:
		cfg.Maker, cfg.Installer = sm, sm
	case statemachine.Installer:
		cfg.Installer = sm
		if n.opts.CheckpointCopies == nil {
			break // installs images it receives, makes none
		}
		rp, err := checkpoint.NewReplayer(checkpoint.ReplayerConfig{
			Group: r.g, Dir: filepath.Join(dir, "copy"), Factory: n.opts.CheckpointCopies,
			Log: n.store, Decode: group.AppCommands, Logger: n.opts.Logger,
			Chosen: func() ids.InstanceID {
				if rep := r.replica; rep != nil {
					return rep.StoredNext()
				}
				return 0
			},
		})
		if err != nil {
			return nil, fmt.Errorf("node: group %d: checkpoint copy: %w", r.g, err)
		}
		r.replayer = rp
		cfg.Maker, cfg.Installed = rp, rp.Reset
	default:
		return nil, nil
	}
	return cfg, nil
}

// Send implements group.Sender.
func (n *Node) Send(to ids.NodeID, g ids.GroupID, m *instance.Message) {
	c := n.codecs.Get().(*instance.Codec)
	n.tr.Send(to, g, uint8(m.Type), c.Encode(m))
	n.codecs.Put(c)
}

// SendGroup implements group.Sender.
func (n *Node) SendGroup(to ids.NodeID, g ids.GroupID, m *group.GroupMessage) {
	n.tr.Send(to, g, m.Type, group.EncodeGroupMessage(m))
}

// onFrame runs on the network event loop: decode and post, nothing slow.
func (n *Node) onFrame(from ids.NodeID, g ids.GroupID, typ uint8, body []byte) {
	if typ == msgNodeStatus {
		n.onNodeStatus(from, body)
		return
	}
	if int(g) >= len(n.groups) {
		n.log.Warn("frame for unknown group dropped", zap.Uint64("from", uint64(from)), zap.Uint32("group", uint32(g)))
		return
	}
	if group.IsGroupMessage(typ) {
		gm, err := group.DecodeGroupMessage(typ, body)
		if err != nil {
			n.log.Warn("undecodable group message dropped", zap.Uint64("from", uint64(from)), zap.Uint32("group", uint32(g)), zap.Error(err))
			return
		}
		n.groups[g].post(func(r *group.Replica) {
			if err := r.StepGroup(from, gm); err != nil {
				n.log.Warn("group message refused", zap.Uint32("group", uint32(g)), zap.Error(err))
			}
		})
		return
	}
	c := n.codecs.Get().(*instance.Codec)
	m, err := c.Decode(instance.MsgType(typ), body)
	n.codecs.Put(c)
	if err != nil {
		n.log.Warn("undecodable message dropped", zap.Uint64("from", uint64(from)), zap.Uint32("group", uint32(g)), zap.Error(err))
		return
	}
	m.From, m.To = from, n.opts.NodeID
	n.groups[g].post(func(r *group.Replica) {
		if err := r.Step(m); err != nil {
			lvl := zap.WarnLevel
			if errors.Is(err, instance.ErrNotVoter) {
				lvl = zap.DebugLevel // normal while a membership change spreads
			}
			if ce := n.log.Check(lvl, "message refused"); ce != nil {
				ce.Write(zap.Uint32("group", uint32(g)), zap.Error(err))
			}
		}
	})
}

func (n *Node) ticker() {
	defer n.wg.Done()
	t := time.NewTicker(n.opts.TickInterval)
	defer t.Stop()
	status := time.NewTicker(n.opts.StatusInterval)
	defer status.Stop()
	for {
		select {
		case <-n.quit:
			return
		case <-t.C:
			// Only groups with a timer running are ticked: idle groups cost nothing.
			for _, r := range n.groups {
				if r.wantTick.Load() {
					r.tick()
				}
			}
		case <-status.C:
			n.sendNodeStatus()
			n.identity.recheck()
			// Ticked groups sweep on their ticks; a quiet one is visited here
			// until it has given back what it held (its executed window).
			for _, r := range n.groups {
				if r.wantSweep.Load() && !r.wantTick.Load() {
					r.post(func(g *group.Replica) { g.Sweep() })
				}
			}
		}
	}
}

func (n *Node) worker() {
	defer n.wg.Done()
	for {
		select {
		case <-n.quit:
			return
		case r := <-n.work:
			r.run()
		}
	}
}

// post queues fn for the group's worker; false once the node stopped.
func (r *runner) post(fn func(*group.Replica)) bool {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return false
	}
	r.inbox = append(r.inbox, fn)
	wake := !r.scheduled
	r.scheduled = true
	r.mu.Unlock()
	if wake {
		r.n.work <- r // never blocks: capacity is the number of groups
	}
	return true
}

// schedule is group.Config.Schedule: storage completions come back through it.
func (r *runner) schedule(fn func()) { r.post(func(*group.Replica) { fn() }) }

func (r *runner) tick() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.ticks++
	wake := !r.scheduled
	r.scheduled = true
	r.mu.Unlock()
	if wake {
		r.n.work <- r
	}
}

// run drains the inbox on a worker until it is empty.
func (r *runner) run() {
	var batch []func(*group.Replica)
	for {
		r.mu.Lock()
		batch, r.inbox = r.inbox, batch[:0]
		ticks := r.ticks
		r.ticks = 0
		if len(batch) == 0 && ticks == 0 {
			r.scheduled = false
			r.mu.Unlock()
			return
		}
		r.mu.Unlock()
		for i, fn := range batch {
			fn(r.replica)
			batch[i] = nil
		}
		for ; ticks > 0; ticks-- {
			r.replica.Tick()
		}
		r.wantTick.Store(r.replica.NeedsTick())
		r.wantSweep.Store(r.replica.NeedsSweep())
		select {
		case <-r.n.quit:
			r.mu.Lock()
			r.scheduled = false
			r.mu.Unlock()
			return
		default:
		}
	}
}

func sortIDs(s []ids.NodeID) { slices.Sort(s) }
