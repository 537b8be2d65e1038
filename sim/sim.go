package sim

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/multipaxos/engine/group"
	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/instance"
	"github.com/multipaxos/engine/logstore"
	"github.com/multipaxos/engine/netio"
	"github.com/multipaxos/engine/statemachine"
)

// Options configure one simulated run.
type Options struct {
	Seed   uint64
	Nodes  int // members per group (every node is in every group)
	Groups int
	// Duration is the virtual time of the faulty phase with load; a heal phase
	// follows, with no faults and no new load, until the cluster converges.
	Duration time.Duration
	// NetFaults enables loss, duplication and delay/reordering.
	NetFaults bool
	// Partitions enables random partitions between chosen pairs of nodes.
	Partitions bool
	// Crashes enables crash-restarts: a crash loses every write no fsync covered.
	Crashes bool
	// ProposeEvery is the mean virtual time between two client proposals.
	ProposeEvery time.Duration
	// Knobs plant bugs (see instance.Knobs).
	Knobs instance.Knobs
	// ClockDrift bounds each node's clock rate: |rate-1| <= ClockDrift, changed at
	// random times. 0 means perfect clocks.
	ClockDrift float64
	// Lease is the master lease. Default 200 ms.
	Lease time.Duration
	// Reads issues lease reads and read barriers and checks they see every write
	// acknowledged before they started.
	Reads bool
	// Transfers makes masters hand over mastership at random times.
	Transfers bool
	// Trace, if set, receives a line for every crash, restart, master lease and
	// execution (of group 0): for reading a failing seed.
	Trace func(line string)
	// Membership changes group members at random times: adds, removes, replaces,
	// followers and their promotion. 5-node runs start with voters {1,2,3},
	// follower 4 and node 5 outside the group.
	Membership bool
	// Hunt makes faults come faster and crashes likelier: for runs that look for a
	// planted bug rather than model a plausible cluster.
	Hunt bool
	// LeaseSafetyOff makes masters trust their leases longer than the drift
	// allows: a planted bug for the lease checker.
	LeaseSafetyOff bool
	// Checkpoints makes every group keep a checkpoint image, in Dir, every few
	// dozen instances and trim its log below it, so members that fall behind are
	// rebuilt from images sent in small chunks.
	Checkpoints bool
	// Dir holds the checkpoint images (real files, in a directory of the run
	// removed at its end). Default: the system's temporary directory.
	Dir string
	// CrashAt names a persistence step (group.CrashPoints) where a member is
	// killed, the CrashEvery-th time any member reaches it (default 1): a walk
	// over crash points like Ceph's paxos_kill_at.
	CrashAt    string
	CrashEvery int
	// BatchCountMax bounds the commands of one instance (group.Config); 0: the
	// group's default. Small values make many instances out of a load.
	BatchCountMax int
	// Corrupt damages a chosen log record of a random group on some restarts; the
	// member must repair it from peers.
	Corrupt bool
	// IsolateLast cuts the last node off from everyone from the start for this
	// long: it misses (and its peers trim) many instances, then catches up.
	IsolateLast time.Duration
	// Porcupine also checks the run's reads and writes with porcupine
	// (porcupine.go) once it converged, within PorcupineTimeout (default 10 s);
	// a timeout is a violation.
	Porcupine        bool
	PorcupineTimeout time.Duration
	// NoReadCheck turns off the linear read checks (linearizability.go), so that
	// a stale read is left for porcupine to find: for testing porcupine.
	NoReadCheck bool
}

// Result is the outcome of one run.
type Result struct {
	Seed      uint64
	Violation error // nil: every check passed
	Chosen    int   // (group, instance) pairs executed somewhere
	Proposed  int
	Acked     int
	Crashes   int
	Messages  int
	Reads     int // lease reads and barriers that completed and were checked
	Masters   int // master leases observed
	Installs  int // checkpoint images installed into state machines
	Trims     int // (node, group) logs trimmed at the end of the run
	// CrashPointHits counts how often a member reached Options.CrashAt.
	CrashPointHits int
	// Corruptions counts chosen log records damaged (Options.Corrupt).
	Corruptions int
	// PorcupineOps is the size of the history porcupine checked;
	// PorcupineTimeouts counts checks that timed out (each also a Violation);
	// PorcupineViolation is porcupine's finding, if any (also the Violation).
	PorcupineOps       int
	PorcupineTimeouts  int
	PorcupineViolation error
}

const tick = 10 * time.Millisecond

type node struct {
	id ids.NodeID
	// The node's clock: clockBase at realAt, advancing at rate.
	clockBase time.Time
	realAt    time.Time
	rate      float64
	up        bool
	store     *logstore.MemStore
	ep        netio.Transport
	replicas  []*group.Replica
	sms       []*digestSM
	nextTick  time.Time
	nextSync  time.Time
	codec     *instance.Codec
	// checked[g]: every instance of group g below it whose chosen value this
	// incarnation could read from its log was compared (checkChosen).
	checked []ids.InstanceID
}

type ack struct {
	g    ids.GroupID
	inst ids.InstanceID
	cmd  string
	at   time.Time // real time of the acknowledgement
}

func (c *cluster) debugf(format string, args ...any) {
	if c.opts.Trace != nil {
		c.opts.Trace(fmt.Sprintf("%v ", c.now.Sub(c.start)) + fmt.Sprintf(format, args...))
	}
}

type cluster struct {
	start  time.Time
	opts   Options
	rng    *rand.Rand
	now    time.Time
	net    *netio.MemNetwork
	nodes  []*node
	ids    []ids.NodeID
	err    error
	seq    uint64
	chosen map[gi]uint64 // (group, instance) -> hash of the commands executed there
	// (group, instance) -> hash of the whole chosen value, engine-internal
	// commands (master claims, membership changes) and no-ops included.
	chosenValue map[gi]uint64
	cmds        map[string]bool
	open        []*pending
	acks        []ack
	res         Result
	reads       []*pendingRead
	readLog     map[ids.GroupID][]readRecord
	dir         string      // checkpoint images
	isolated    *node       // cut off until IsolateLast
	healed      bool        // the heal phase began: no more faults
	corrupted   map[gi]bool // (group, instance) whose record was damaged on some node
	crashNext   int         // the crash point's hit count that kills next
	// For porcupine: when each command was proposed and acknowledged, and the
	// completed reads of each group.
	calls   map[string]time.Time
	ackAt   map[string]time.Time
	readOps map[ids.GroupID][]readOp
}

// killed is the panic a crash point raises to stop a member in the middle of
// what it is doing; guard turns it into a crash.
type killed struct{ n *node }

// guard runs fn, which calls into node n's replicas, and crashes n if a crash
// point fired inside.
func (c *cluster) guard(n *node, fn func()) {
	defer func() {
		if p := recover(); p != nil {
			k, ok := p.(killed)
			if !ok {
				panic(p)
			}
			if k.n.up {
				c.crash(k.n)
			}
		}
	}()
	fn()
	if n.up {
		c.checkChosen(n)
	}
}

// checkChosen compares the chosen values n can read from its log (every instance
// below a replica's StoredNext) with what other members chose there: the whole
// value, not only the application commands Execute sees, so members that chose
// different master claims, membership changes or no-ops at one instance are caught
// too. Each incarnation reads each of its instances once.
func (c *cluster) checkChosen(n *node) {
	for g, r := range n.replicas {
		if g >= len(n.checked) {
			break
		}
		for stored := r.StoredNext(); n.checked[g] < stored; n.checked[g]++ {
			inst := n.checked[g]
			e, err := n.store.Entry(ids.GroupID(g), inst)
			if errors.Is(err, logstore.ErrNotFound) {
				// Trimmed, or below an installed checkpoint image.
				n.checked[g] = max(inst+1, r.Stats().MinRetained) - 1
				continue
			}
			if err != nil {
				continue // a record damaged on purpose (Options.Corrupt), to be repaired
			}
			h := fnv.New64a()
			h.Write(e.Value)
			sum, key := h.Sum64(), gi{ids.GroupID(g), inst}
			if prev, ok := c.chosenValue[key]; ok && prev != sum {
				c.violation("agreement: group %d instance %d: node %d chose a value (%d bytes, hash %x) that differs from another member's (hash %x)",
					g, inst, n.id, len(e.Value), sum, prev)
			}
			c.chosenValue[key] = sum
		}
	}
}

func (c *cluster) crashPoint(n *node) func(string) {
	if c.opts.CrashAt == "" {
		return nil
	}
	return func(name string) {
		if name != c.opts.CrashAt || c.healed {
			return
		}
		c.res.CrashPointHits++
		if c.crashNext == 0 {
			c.crashNext = max(1, c.opts.CrashEvery)
		}
		// Kill at hits k, 2k, 4k, ...: the first kills come early, for the
		// points a run reaches a few times, and the run still makes progress
		// at the points it reaches thousands of times.
		if c.res.CrashPointHits >= c.crashNext && n.up && c.down() < (len(c.nodes)-1)/2 {
			c.crashNext *= 2
			c.debugf("node %d killed at %q", n.id, name)
			panic(killed{n})
		}
	}
}

type pendingRead struct {
	n      *node
	g      ids.GroupID
	issued time.Time
	lease  bool
	done   bool
	err    error
	seen   map[string]bool // what the read saw (lease read: inside fn)
}

type gi struct {
	g    ids.GroupID
	inst ids.InstanceID
}

type pending struct {
	p    *group.Proposal
	g    ids.GroupID
	node ids.NodeID
	cmd  string
}

func (c *cluster) violation(format string, args ...any) {
	if c.err == nil {
		c.err = fmt.Errorf("seed %d at %v: %s", c.opts.Seed, c.now.Sub(time.Unix(0, 0)), fmt.Sprintf(format, args...))
	}
}

// Run simulates one cluster from opts.Seed and checks it.
func Run(opts Options) Result {
	if opts.ProposeEvery == 0 {
		opts.ProposeEvery = 2 * time.Millisecond
	}
	c := &cluster{
		opts:        opts,
		rng:         rand.New(rand.NewPCG(opts.Seed, 0x5eed)),
		now:         time.Unix(0, 0),
		start:       time.Unix(0, 0),
		chosen:      map[gi]uint64{},
		chosenValue: map[gi]uint64{},
		readLog:     map[ids.GroupID][]readRecord{},
		corrupted:   map[gi]bool{},
		cmds:        map[string]bool{},
		calls:       map[string]time.Time{},
		ackAt:       map[string]time.Time{},
		readOps:     map[ids.GroupID][]readOp{},
	}
	c.res.Seed = opts.Seed
	c.net = netio.NewMemNetwork(int64(opts.Seed))
	c.net.SetClock(func() time.Time { return c.now })
	if opts.NetFaults {
		c.net.SetFaults(netio.Faults{DropRate: 0.05, DuplicateRate: 0.03, DelayMin: 100 * time.Microsecond, DelayMax: 4 * time.Millisecond})
	} else {
		c.net.SetFaults(netio.Faults{DelayMin: 100 * time.Microsecond, DelayMax: 300 * time.Microsecond})
	}
	for i := 1; i <= opts.Nodes; i++ {
		c.ids = append(c.ids, ids.NodeID(i))
	}
	if opts.Lease == 0 {
		opts.Lease = 200 * time.Millisecond
		c.opts.Lease = opts.Lease
	}
	if opts.Checkpoints {
		dir, err := os.MkdirTemp(opts.Dir, fmt.Sprintf("seed%d-", opts.Seed))
		if err != nil {
			c.res.Violation = err
			return c.res
		}
		defer os.RemoveAll(dir)
		c.dir = dir
	}
	for _, id := range c.ids {
		n := &node{id: id, store: logstore.NewMemStore(), codec: instance.NewCodec(),
			clockBase: time.Unix(1000, 0), realAt: c.now, rate: 1}
		n.ep = c.net.Endpoint(id, c.handler(n))
		c.nodes = append(c.nodes, n)
		c.boot(n)
	}
	if opts.IsolateLast > 0 {
		c.isolated = c.nodes[len(c.nodes)-1]
		c.net.Isolate(c.isolated.id)
	}
	c.run()
	for _, n := range c.nodes {
		for _, r := range n.replicas {
			if r.Stats().MinRetained > 0 {
				c.res.Trims++
			}
		}
	}
	c.res.Violation = c.err
	c.res.Chosen = len(c.chosen)
	c.res.Proposed = len(c.cmds)
	c.res.Acked = len(c.acks)
	return c.res
}

func (c *cluster) handler(n *node) netio.Handler {
	return func(from ids.NodeID, g ids.GroupID, typ uint8, body []byte) {
		c.guard(n, func() { c.deliver(n, from, g, typ, body) })
	}
}

func (c *cluster) deliver(n *node, from ids.NodeID, g ids.GroupID, typ uint8, body []byte) {
	{
		c.res.Messages++
		if !n.up || int(g) >= len(n.replicas) {
			return
		}
		if group.IsGroupMessage(typ) {
			gm, err := group.DecodeGroupMessage(typ, body)
			if err != nil {
				c.violation("node %d: undecodable group message: %v", n.id, err)
				return
			}
			if err := n.replicas[g].StepGroup(from, gm); err != nil {
				c.violation("node %d group %d: step group message %d: %v", n.id, g, typ, err)
			}
			return
		}
		m, err := n.codec.Decode(instance.MsgType(typ), body)
		if err != nil {
			c.violation("node %d: undecodable message: %v", n.id, err)
			return
		}
		m.From, m.To = from, n.id
		if err := n.replicas[g].Step(m); err != nil && !errors.Is(err, instance.ErrNotVoter) {
			c.violation("node %d group %d: step %v: %v", n.id, g, m.Type, err)
		}
	}
}

type sender struct {
	n *node
}

func (s sender) Send(to ids.NodeID, g ids.GroupID, m *instance.Message) {
	s.n.ep.Send(to, g, uint8(m.Type), s.n.codec.Encode(m))
}

func (s sender) SendGroup(to ids.NodeID, g ids.GroupID, m *group.GroupMessage) {
	s.n.ep.Send(to, g, m.Type, group.EncodeGroupMessage(m))
}

// clock reads node n's clock at the cluster's real time.
func (c *cluster) clock(n *node) time.Time {
	return n.clockBase.Add(time.Duration(float64(c.now.Sub(n.realAt)) * n.rate))
}

// driftClock gives node n a new clock rate within the drift bound, continuously.
func (c *cluster) driftClock(n *node) {
	n.clockBase, n.realAt = c.clock(n), c.now
	n.rate = 1 + c.opts.ClockDrift*(2*c.rng.Float64()-1)
}

// boot starts node n; a crash point may kill it again during its replay.
func (c *cluster) boot(n *node) { c.guard(n, func() { c.startNode(n) }) }

// start opens every group of n from its (simulated) disk, as a restart does.
func (c *cluster) startNode(n *node) {
	c.debugf("start node %d", n.id)
	n.up = true
	n.replicas = n.replicas[:0]
	n.sms = n.sms[:0]
	n.checked = make([]ids.InstanceID, c.opts.Groups)
	for g := 0; g < c.opts.Groups; g++ {
		sm := &digestSM{c: c, node: n.id, g: ids.GroupID(g)}
		voters, followers := c.ids, []ids.NodeID(nil)
		if c.opts.Membership && len(c.ids) == 5 {
			voters, followers = c.ids[:3], c.ids[3:4]
		}
		drift := c.opts.ClockDrift
		if c.opts.LeaseSafetyOff {
			drift = -0.2 // the master trusts its lease 40% longer than it was granted
		}
		var cps *group.CheckpointConfig
		if c.opts.Checkpoints {
			cps = &group.CheckpointConfig{
				Dir:   filepath.Join(c.dir, fmt.Sprintf("n%d", n.id), fmt.Sprintf("g%d", g)),
				Maker: sm, Installer: sm, KeepInstances: 12, Every: 40, ChunkBytes: 256,
				ChunksInFlight: 3, TimeoutTicks: 5,
				Background: func(fn func()) { fn() },
			}
		}
		r, err := group.New(group.Config{
			Checkpoints: cps, CrashPoint: c.crashPoint(n), BatchCountMax: c.opts.BatchCountMax,
			Group: ids.GroupID(g), Self: n.id, Members: voters, Followers: followers,
			Storage: n.store, Sender: sender{n}, StateMachine: sm,
			Schedule: func(fn func()) { fn() },
			Clock:    func() time.Time { return c.clock(n) },
			Lease:    c.opts.Lease, ClockDrift: drift, RequestSeqBase: c.rng.Uint64() | 1,
			LeaseObserver: func(start, end time.Time) {
				c.res.Masters++
				c.debugf("node %d g%d lease %v..%v (node clock now %v)", n.id, g, start.Sub(time.Unix(1000, 0)), end.Sub(time.Unix(1000, 0)), c.clock(n).Sub(time.Unix(1000, 0)))
			},
			Protocol: instance.Config{Seed: c.opts.Seed*31 + uint64(n.id), Knobs: c.opts.Knobs, StatusIntervalTicks: 50},
		})
		if err != nil {
			c.violation("node %d: restart group %d: %v", n.id, g, err)
			n.up = false
			return
		}
		n.replicas = append(n.replicas, r)
		n.sms = append(n.sms, sm)
		n.checked[g] = r.Stats().MinRetained
	}
	n.nextTick = c.now.Add(time.Duration(c.rng.Int64N(int64(tick))))
	n.nextSync = c.now.Add(c.syncDelay())
}

// syncDelay is the time to the node's next fsync: usually a fast disk, sometimes a
// slow one, so that crashes find unsynced writes behind replies.
func (c *cluster) syncDelay() time.Duration {
	if c.rng.IntN(10) == 0 {
		return time.Duration(c.rng.Int64N(int64(15 * time.Millisecond)))
	}
	return 200*time.Microsecond + time.Duration(c.rng.Int64N(int64(2*time.Millisecond)))
}

func (c *cluster) crash(n *node) {
	c.debugf("crash node %d", n.id)
	c.res.Crashes++
	n.up = false
	n.store.Crash()
	for _, r := range n.replicas {
		r.Stop()
	}
	n.replicas, n.sms = nil, nil
}

// run is the event loop: it advances virtual time to the next event and runs it.
func (c *cluster) run() {
	end := c.now.Add(c.opts.Duration)
	nextPropose := c.now
	nextFault := c.now.Add(c.faultGap())
	nextRead := c.now.Add(10 * time.Millisecond)
	healed := false
	var healAt time.Time
	deadline := end.Add(60 * time.Second)
	for c.err == nil {
		if !healed && !c.now.Before(end) {
			healed, c.healed = true, true
			healAt = c.now
			c.healAll()
		}
		if healed && (c.converged() || !c.now.Before(deadline)) {
			break
		}
		// Pick the earliest event.
		next := deadline
		if !healed {
			next = minTime(next, nextPropose, nextFault)
			if c.opts.Reads {
				next = minTime(next, nextRead)
			}
		}
		if t, ok := c.net.NextDelivery(); ok {
			next = minTime(next, t)
		}
		for _, n := range c.nodes {
			if n.up {
				next = minTime(next, n.nextTick, n.nextSync)
			}
		}
		if next.After(c.now) {
			c.now = next
		}
		c.net.DeliverDue(c.now)
		for _, n := range c.nodes {
			if !n.up {
				continue
			}
			if !c.now.Before(n.nextSync) {
				n.nextSync = c.now.Add(c.syncDelay())
				c.guard(n, n.store.Sync)
			}
			if n.up && !c.now.Before(n.nextTick) {
				n.nextTick = n.nextTick.Add(tick)
				c.guard(n, func() {
					for _, r := range n.replicas {
						r.Tick()
					}
				})
			}
		}
		if c.isolated != nil && !c.now.Before(c.start.Add(c.opts.IsolateLast)) {
			c.debugf("node %d rejoins", c.isolated.id)
			c.net.HealAll()
			c.isolated = nil
		}
		if !healed && !c.now.Before(nextPropose) {
			c.propose()
			nextPropose = c.now.Add(time.Duration(c.rng.Int64N(int64(2 * c.opts.ProposeEvery))))
		}
		if !healed && !c.now.Before(nextFault) {
			c.fault()
			nextFault = c.now.Add(c.faultGap())
		}
		if !healed && c.opts.Reads && !c.now.Before(nextRead) {
			c.read()
			nextRead = c.now.Add(time.Duration(c.rng.Int64N(int64(20 * time.Millisecond))))
		}
		c.collect()
		c.checkMasters()
	}
	if c.err != nil {
		return
	}
	if !c.converged() {
		c.violation("no convergence %v after healing: %s", c.now.Sub(healAt), c.progress())
		return
	}
	c.finalChecks()
	if c.err == nil && c.opts.Porcupine {
		c.porcupineCheck()
	}
}

func minTime(t time.Time, others ...time.Time) time.Time {
	for _, o := range others {
		if o.Before(t) {
			t = o
		}
	}
	return t
}

func (c *cluster) faultGap() time.Duration {
	if c.opts.Hunt {
		return 2*time.Millisecond + time.Duration(c.rng.Int64N(int64(30*time.Millisecond)))
	}
	return 5*time.Millisecond + time.Duration(c.rng.Int64N(int64(100*time.Millisecond)))
}

// fault injects or repairs one fault. A crash prefers a node with unsynced writes:
// that is where durability bugs hide.
func (c *cluster) fault() {
	n := c.nodes[c.rng.IntN(len(c.nodes))]
	for _, o := range c.nodes {
		if o.up && o.store.PendingCount() > 0 && c.rng.IntN(2) == 0 {
			n = o
			break
		}
	}
	switch r := c.rng.IntN(10); {
	case r < 4 && c.opts.Crashes:
		if n.up && c.down() < (len(c.nodes)-1)/2 {
			c.crash(n)
		} else if !n.up {
			c.corruptSome(n)
			c.boot(n)
		}
	case r < 7 && c.opts.Partitions:
		o := c.nodes[c.rng.IntN(len(c.nodes))]
		if o != n {
			c.net.Partition(n.id, o.id)
		}
	case r < 8 && c.opts.Partitions:
		// Isolate the master of a random group from everyone.
		g := ids.GroupID(c.rng.IntN(c.opts.Groups))
		for _, m := range c.nodes {
			if m.up && m.replicas[g].Master().IsSelf {
				c.debugf("isolate node %d, master of g%d", m.id, g)
				c.net.Isolate(m.id)
				break
			}
		}
	case c.opts.Partitions:
		c.net.HealAll()
		if c.isolated != nil {
			c.net.Isolate(c.isolated.id)
		}
	}
	if c.opts.ClockDrift > 0 {
		c.driftClock(c.nodes[c.rng.IntN(len(c.nodes))])
	}
	if c.opts.Membership && c.rng.IntN(3) == 0 && n.up {
		c.changeMembers(n, ids.GroupID(c.rng.IntN(c.opts.Groups)))
	}
	if c.opts.Transfers && c.rng.IntN(3) == 0 {
		g := ids.GroupID(c.rng.IntN(c.opts.Groups))
		for _, m := range c.nodes {
			if m.up && m.replicas[g].Master().IsSelf {
				to := c.ids[c.rng.IntN(len(c.ids))]
				c.guard(m, func() { m.replicas[g].TransferMaster(to, func(error) {}) })
				break
			}
		}
	}
	// Restart nodes that have been down a while, so crashes keep coming.
	for _, d := range c.nodes {
		if !d.up && c.rng.IntN(3) == 0 {
			c.corruptSome(d)
			c.boot(d)
		}
	}
}

// corruptSome flips a byte in one chosen log record of a random group of the
// down node n (Options.Corrupt): on restart it must learn that instance again from
// peers, never apply the damaged value.
func (c *cluster) corruptSome(n *node) {
	if !c.opts.Corrupt || c.rng.IntN(2) == 0 {
		return
	}
	g := ids.GroupID(c.rng.IntN(c.opts.Groups))
	meta, err := n.store.LoadMeta(g)
	if err != nil || meta.ChosenNext <= meta.MinRetained {
		return
	}
	inst := meta.MinRetained + ids.InstanceID(c.rng.Int64N(int64(meta.ChosenNext-meta.MinRetained)))
	if c.corrupted[gi{g, inst}] {
		// One damaged copy per instance: a record damaged on two of three
		// members may leave no intact copy to repair from (nor a quorum to
		// recover it), which no protocol survives.
		return
	}
	if n.store.CorruptEntry(g, inst) == nil {
		c.corrupted[gi{g, inst}] = true
		c.res.Corruptions++
		c.debugf("node %d g%d: record of chosen instance %d corrupted", n.id, g, inst)
	}
}

func (c *cluster) down() int {
	k := 0
	for _, n := range c.nodes {
		if !n.up {
			k++
		}
	}
	return k
}

func (c *cluster) healAll() {
	c.net.HealAll()
	c.net.SetFaults(netio.Faults{DelayMin: 100 * time.Microsecond, DelayMax: 300 * time.Microsecond})
	for _, n := range c.nodes {
		if !n.up {
			c.boot(n)
		}
	}
}

// changeMembers asks node n to change group g's members at random: add a voter,
// remove one, replace one, or add or promote a follower. At least 2 voters stay.
func (c *cluster) changeMembers(n *node, g ids.GroupID) {
	pick := func(s []ids.NodeID) ids.NodeID { return s[c.rng.IntN(len(s))] }
	choice := c.rng.IntN(4)
	c.debugf("node %d proposes membership change %d in g%d", n.id, choice, g)
	c.guard(n, func() {
		n.replicas[g].ChangeMembers(func(cur statemachine.Membership) ([]ids.NodeID, []ids.NodeID, error) {
			voters, followers := slices.Clone(cur.Voters), slices.Clone(cur.Followers)
			var outside []ids.NodeID
			for _, id := range c.ids {
				if !cur.Has(id) {
					outside = append(outside, id)
				}
			}
			switch {
			case choice == 0 && len(voters) > 2: // remove a voter
				voters = slices.DeleteFunc(voters, func(x ids.NodeID) bool { return x == voters[0] })
				if c.rng.IntN(2) == 0 {
					voters = slices.Clone(cur.Voters)
					v := pick(voters)
					voters = slices.DeleteFunc(voters, func(x ids.NodeID) bool { return x == v })
				}
			case choice == 1 && len(outside) > 0: // add a voter
				voters = append(voters, pick(outside))
			case choice == 2 && len(outside) > 0 && len(voters) > 1: // replace a voter
				v := pick(voters)
				voters = append(slices.DeleteFunc(voters, func(x ids.NodeID) bool { return x == v }), pick(outside))
			case choice == 3 && len(followers) > 0: // promote a follower
				f := pick(followers)
				followers = slices.DeleteFunc(followers, func(x ids.NodeID) bool { return x == f })
				voters = append(voters, f)
			case len(outside) > 0: // add a follower
				followers = append(followers, pick(outside))
			default:
				return nil, nil, fmt.Errorf("no change")
			}
			return voters, followers, nil
		}, func(error) {})
	})
}

// checkMasters: never two members whose leases hold at the same real time.
func (c *cluster) checkMasters() {
	for g := 0; g < c.opts.Groups; g++ {
		var holders []ids.NodeID
		for _, n := range c.nodes {
			if !n.up {
				continue
			}
			if info := n.replicas[g].Master(); info.IsSelf && c.clock(n).Before(info.Expiry) {
				holders = append(holders, n.id)
			}
		}
		if len(holders) > 1 {
			c.violation("group %d: nodes %v hold master leases at the same time", g, holders)
		}
	}
}

// read issues a lease read or a read barrier on a random live node; either must
// see every write acknowledged before it was issued.
func (c *cluster) read() {
	n := c.nodes[c.rng.IntN(len(c.nodes))]
	if !n.up {
		return
	}
	g := ids.GroupID(c.rng.IntN(c.opts.Groups))
	pr := &pendingRead{n: n, g: g, issued: c.now, lease: c.rng.IntN(2) == 0}
	sm := n.sms[g]
	check := func() {
		c.res.Reads++
		c.readOps[g] = append(c.readOps[g], readOp{issued: pr.issued, returned: c.now, count: len(sm.has), lease: pr.lease, node: n.id})
		if c.opts.NoReadCheck {
			return
		}
		c.checkReadOrder(g, readRecord{issued: pr.issued, returned: c.now, count: len(sm.has)}, n.id)
		for _, a := range c.acks {
			if a.g == g && a.at.Before(pr.issued) && !sm.has[a.cmd] {
				kind := "read barrier"
				if pr.lease {
					kind = "lease read"
				}
				c.violation("stale %s on node %d group %d: misses %q acknowledged at %v, read issued at %v",
					kind, n.id, g, a.cmd, a.at.Sub(time.Unix(0, 0)), pr.issued.Sub(time.Unix(0, 0)))
				return
			}
		}
	}
	if pr.lease {
		c.guard(n, func() { n.replicas[g].LeaseRead(func() error { check(); return nil }, func(error) {}) })
		return
	}
	c.guard(n, func() {
		n.replicas[g].ReadBarrier(func(err error) {
			if err == nil && n.up && n.sms[g] == sm {
				check()
			}
		})
	})

}

// propose submits one unique command through a random live node.
func (c *cluster) propose() {
	n := c.nodes[c.rng.IntN(len(c.nodes))]
	if !n.up {
		return
	}
	g := ids.GroupID(c.rng.IntN(c.opts.Groups))
	c.seq++
	cmd := fmt.Sprintf("c%d.g%d.n%d", c.seq, g, n.id)
	c.cmds[cmd] = true
	c.calls[cmd] = c.now
	p := group.NewProposal(group.RequestID{Node: n.id, Seq: c.seq}, []byte(cmd))
	c.open = append(c.open, &pending{p: p, g: g, node: n.id, cmd: cmd})
	c.guard(n, func() { n.replicas[g].Propose(p) })
}

// collect records finished proposals.
func (c *cluster) collect() {
	keep := c.open[:0]
	for _, o := range c.open {
		select {
		case <-o.p.Done():
			res, err := o.p.Outcome()
			if err == nil {
				c.acks = append(c.acks, ack{g: o.g, inst: res.Instance, cmd: o.cmd, at: c.now})
				c.ackAt[o.cmd] = c.now
				if want := "ok:" + o.cmd; string(res.Value) != want {
					c.violation("node %d: result %q for %q", o.node, res.Value, o.cmd)
				}
			}
		default:
			keep = append(keep, o)
		}
	}
	clear(c.open[len(keep):])
	c.open = keep
}

// converged: every node is up, and all members of each group executed the same
// number of instances, equal to the highest chosen anywhere.
func (c *cluster) converged() bool {
	for g := 0; g < c.opts.Groups; g++ {
		var want ids.InstanceID
		for _, n := range c.nodes {
			if !n.up {
				return false
			}
			want = max(want, n.replicas[g].Stats().Next)
		}
		for k := range c.chosen {
			if int(k.g) == g {
				want = max(want, k.inst+1)
			}
		}
		for _, n := range c.members(ids.GroupID(g)) {
			if n.sms[g].next != want {
				return false
			}
		}
	}
	return true
}

// members are group g's voters and followers as the most advanced node knows them:
// the nodes that must converge (a removed node stops learning).
func (c *cluster) members(g ids.GroupID) []*node {
	best := c.nodes[0]
	for _, n := range c.nodes {
		if n.up && n.replicas[g].Stats().Next > best.replicas[g].Stats().Next {
			best = n
		}
	}
	m := best.replicas[g].Membership()
	var out []*node
	for _, n := range c.nodes {
		if m.Has(n.id) {
			out = append(out, n)
		}
	}
	return out
}

func (c *cluster) progress() string {
	s := ""
	for _, n := range c.nodes {
		s += fmt.Sprintf(" node%d(up=%v", n.id, n.up)
		for g := range n.replicas {
			st := n.replicas[g].Stats()
			s += fmt.Sprintf(" g%d:next=%d,applied=%d", g, st.Next, st.Applied)
		}
		s += ")"
	}
	return s
}

func (c *cluster) finalChecks() {
	// Every acknowledged command is executed on every member at its instance.
	for _, a := range c.acks {
		for _, n := range c.members(a.g) {
			if got := n.sms[a.g].cmdAt[a.inst]; !slices.Contains(got, a.cmd) {
				c.violation("acknowledged %q (group %d instance %d) missing on node %d: %q", a.cmd, a.g, a.inst, n.id, got)
				return
			}
		}
	}
	for g := 0; g < c.opts.Groups; g++ {
		ms := c.members(ids.GroupID(g))
		for _, n := range ms[1:] {
			if n.sms[g].digest != ms[0].sms[g].digest {
				c.violation("group %d: digest of node %d differs from node %d", g, n.id, ms[0].id)
				return
			}
		}
	}
}

// digestSM is the state machine of the simulation: it folds every command into a
// digest and reports each execution to the checker.
type digestSM struct {
	c      *cluster
	node   ids.NodeID
	g      ids.GroupID
	next   ids.InstanceID
	digest uint64
	cmdAt  map[ids.InstanceID][]string
	has    map[string]bool
	// installs counts images installed into this incarnation.
	installs int
}

func (s *digestSM) Applied() ids.InstanceID { return 0 }

func (s *digestSM) Execute(inst ids.InstanceID, cmds [][]byte) ([][]byte, error) {
	if inst != s.next {
		s.c.violation("node %d group %d: executed instance %d, expected %d", s.node, s.g, inst, s.next)
	}
	s.next = inst + 1
	h := fnv.New64a()
	var b [8]byte
	results := make([][]byte, len(cmds))
	if s.cmdAt == nil {
		s.cmdAt, s.has = map[ids.InstanceID][]string{}, map[string]bool{}
	}
	for i, cmd := range cmds {
		binary.BigEndian.PutUint64(b[:], uint64(len(cmd)))
		h.Write(b[:])
		h.Write(cmd)
		if !s.c.cmds[string(cmd)] {
			s.c.violation("node %d group %d instance %d: executed %q, never proposed", s.node, s.g, inst, cmd)
		}
		if s.has[string(cmd)] {
			s.c.violation("node %d group %d instance %d: executed %q a second time", s.node, s.g, inst, cmd)
		}
		s.cmdAt[inst] = append(s.cmdAt[inst], string(cmd))
		s.has[string(cmd)] = true
		results[i] = append([]byte("ok:"), cmd...)
	}
	sum := h.Sum64()
	if s.g == 0 {
		s.c.debugf("node %d g%d executes instance %d: %v", s.node, s.g, inst, s.cmdAt[inst])
	}
	key := gi{s.g, inst}
	if prev, ok := s.c.chosen[key]; ok && prev != sum {
		s.c.violation("agreement: group %d instance %d: node %d executed %q, another member executed different commands", s.g, inst, s.node, s.cmdAt[inst])
	}
	s.c.chosen[key] = sum
	binary.BigEndian.PutUint64(b[:], s.digest)
	h.Write(b[:])
	s.digest = h.Sum64()
	return results, nil
}

// digestImage is a digestSM's checkpoint image: its whole state, as JSON (sorted
// map keys: the same state gives the same bytes, so runs stay exact).
type digestImage struct {
	Next   ids.InstanceID
	Digest uint64
	CmdAt  map[ids.InstanceID][]string
	Has    map[string]bool
}

const digestImageFile = "state.json"

// Checkpoint implements statemachine.Checkpointer. The state is in memory only:
// after a crash Applied() is 0 and the engine installs its local image.
func (s *digestSM) Checkpoint(dir string) (ids.InstanceID, error) {
	b, err := json.Marshal(digestImage{Next: s.next, Digest: s.digest, CmdAt: s.cmdAt, Has: s.has})
	if err != nil {
		return 0, err
	}
	if err := os.WriteFile(filepath.Join(dir, digestImageFile), b, 0o644); err != nil {
		return 0, err
	}
	return s.next, nil
}

// Install implements statemachine.Installer.
func (s *digestSM) Install(dir string) (ids.InstanceID, error) {
	b, err := os.ReadFile(filepath.Join(dir, digestImageFile))
	if err != nil {
		return 0, err
	}
	var img digestImage
	if err := json.Unmarshal(b, &img); err != nil {
		return 0, err
	}
	s.next, s.digest, s.cmdAt, s.has = img.Next, img.Digest, img.CmdAt, img.Has
	if s.cmdAt == nil {
		s.cmdAt, s.has = map[ids.InstanceID][]string{}, map[string]bool{}
	}
	s.installs++
	s.c.res.Installs++
	return s.next, nil
}
