package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/node"
	"github.com/multipaxos/engine/statemachine"
)

// proposerFor is the node through which group g's clients propose. Every group
// gets one fixed proposer - the Multi-Paxos fast path (phase 1 skipped while the
// proposer's ballot stands) needs a single proposer per group, and two would duel
// with ballots - and the groups are spread round-robin over the three nodes so
// that each node leads a third of them. Since the master lease landed, the node
// that proposes first in a group claims its mastership, so setup (which proposes
// through proposerFor) makes each proposer its group's master; the run reports
// (diag "not_master") any group whose master ended up elsewhere, where proposals
// would be forwarded. To follow (*node.Node).Master(g) instead, this is the one
// place to change.
func proposerFor(g ids.GroupID) ids.NodeID { return ids.NodeID(uint32(g)%numNodes + 1) }

const numNodes = 3

// counterSM is the benchmark's state machine: it counts commands, nothing else.
type counterSM struct{ n uint64 }

func (s *counterSM) Applied() ids.InstanceID { return 0 }

func (s *counterSM) Execute(_ ids.InstanceID, cmds [][]byte) ([][]byte, error) {
	s.n += uint64(len(cmds))
	return make([][]byte, len(cmds)), nil
}

// clusterSpec is what every replica of one run must agree on.
type clusterSpec struct {
	Members    map[ids.NodeID]string
	Groups     int
	Dir        string // node i keeps its data in Dir/node<i>
	BatchCount int    // node.Options.BatchCountMax; 0 = the node's default
	BatchBytes int    // node.Options.BatchBytesMax; 0 = the node's default
}

// startNode starts replica id of the spec with the node's default options except
// addresses, data dir and (if set) the batching limits.
func startNode(spec clusterSpec, id ids.NodeID) (*node.Node, error) {
	return node.Start(node.Options{
		NodeID:        id,
		Members:       spec.Members,
		Groups:        spec.Groups,
		DataDir:       filepath.Join(spec.Dir, fmt.Sprintf("node%d", id)),
		StateMachines: func(ids.GroupID) statemachine.StateMachine { return &counterSM{} },
		BatchCountMax: spec.BatchCount,
		BatchBytesMax: spec.BatchBytes,
	})
}

// freeAddrs returns n loopback addresses that were free a moment ago.
func freeAddrs(n int) ([]string, error) {
	var addrs []string
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		addrs = append(addrs, l.Addr().String())
	}
	return addrs, nil
}

// partial is what one member reports for the measured window. In -procs mode it
// travels from a child to the parent as JSON.
type partial struct {
	Ops       uint64
	Errs      uint64
	ElapsedNs int64
	Hist      [][2]uint64 // Histogram.Sparse of the successful proposals' latency
	CPUNs     int64       // process CPU time (user + system) in the window
	Syncs     uint64      // WAL fsyncs of the member's nodes in the window
	LogWrites uint64      // group writes committed by the member's nodes
	Frames    uint64      // frames sent by the member's nodes
	NetWrites uint64      // socket writes of the member's nodes
	Instances uint64      // instance values proposed by the member's proposers
	NotMaster int         // groups whose proposer was not their master when the window opened
	RSS       uint64      // process VmRSS at the end of the window
	Heap      uint64      // process HeapAlloc at the end of the window
	ErrKinds  []string    // distinct proposal errors (up to a few)
}

// member is a part of the cluster and the clients that propose through it: the
// whole cluster in one process (in-process mode), or one replica process (-procs).
type member interface {
	setup(deadline time.Duration) error // one successful proposal in each of its groups
	start() error                       // start the clients (their results are not counted yet)
	measure() error                     // open the measured window
	stop() (partial, error)             // close the window, stop the clients, report
	rss() (uint64, error)
	close() error
}

// counters is a snapshot of a member's cumulative counters.
type counters struct {
	t                                time.Time
	cpu                              time.Duration
	syncs, writes, frames, instances uint64
	netWrites                        uint64
	instancesOK                      bool // every group answered GroupStats
}

// localMember runs nodes and clients in this process. In-process mode has all three
// nodes and every group; a -procs child has its own node and the groups it leads.
type localMember struct {
	nodes   map[ids.NodeID]*node.Node
	groups  []ids.GroupID // the groups whose proposer is one of nodes
	clients int
	payload []byte
	timeout time.Duration

	phase     atomic.Int32 // phaseWarm, phaseMeasure, phaseStop
	hist      *Histogram
	ops       atomic.Uint64
	errs      atomic.Uint64
	wg        sync.WaitGroup
	before    counters
	notMaster int
	errMu     sync.Mutex
	errKinds  map[string]bool
}

const (
	phaseWarm int32 = iota
	phaseMeasure
	phaseStop
)

func newLocalMember(nodes map[ids.NodeID]*node.Node, groups, clients, payload int, timeout time.Duration) *localMember {
	m := &localMember{nodes: nodes, clients: clients, timeout: timeout, hist: &Histogram{}, errKinds: map[string]bool{}}
	for g := 0; g < groups; g++ {
		if _, ok := nodes[proposerFor(ids.GroupID(g))]; ok {
			m.groups = append(m.groups, ids.GroupID(g))
		}
	}
	m.payload = make([]byte, payload)
	for i := range m.payload {
		m.payload[i] = byte('a' + i%26)
	}
	return m
}

func (m *localMember) setup(deadline time.Duration) error {
	end := time.Now().Add(deadline)
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for _, g := range m.groups {
		wg.Add(1)
		sem <- struct{}{}
		go func(g ids.GroupID) {
			defer wg.Done()
			defer func() { <-sem }()
			n := m.nodes[proposerFor(g)]
			for {
				ctx, cancel := context.WithTimeout(context.Background(), min(10*time.Second, time.Until(end)+time.Millisecond))
				_, err := n.Propose(ctx, g, m.payload)
				cancel()
				if err == nil {
					return
				}
				if time.Now().After(end) || errors.Is(err, node.ErrStopped) {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("setup: group %d via node %d: %w", g, n.ID(), err)
					}
					mu.Unlock()
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
		}(g)
	}
	wg.Wait()
	return firstErr
}

func (m *localMember) start() error {
	for _, g := range m.groups {
		n := m.nodes[proposerFor(g)]
		for c := 0; c < m.clients; c++ {
			m.wg.Add(1)
			go m.client(n, g)
		}
	}
	return nil
}

// client is one closed-loop client: propose, wait, repeat. A proposal counts when
// it finishes inside the window; one still in flight when the window closes does
// not count, and neither does its latency.
func (m *localMember) client(n *node.Node, g ids.GroupID) {
	defer m.wg.Done()
	for m.phase.Load() != phaseStop {
		ctx, cancel := context.WithTimeout(context.Background(), m.timeout)
		t0 := time.Now()
		_, err := n.Propose(ctx, g, m.payload)
		d := time.Since(t0)
		cancel()
		switch m.phase.Load() {
		case phaseStop:
			return
		case phaseWarm:
			if err != nil {
				time.Sleep(2 * time.Millisecond)
			}
			continue
		}
		if err == nil {
			m.hist.Record(d)
			m.ops.Add(1)
			continue
		}
		m.errs.Add(1)
		m.errMu.Lock()
		if len(m.errKinds) < 8 {
			m.errKinds[err.Error()] = true
		}
		m.errMu.Unlock()
		time.Sleep(2 * time.Millisecond) // as the peer harness does after a failure
	}
}

func (m *localMember) snapshot(withInstances bool) counters {
	c := counters{t: time.Now(), cpu: cpuTime()}
	for _, n := range m.nodes {
		s := n.Stats()
		c.syncs += s.Log.Syncs
		c.writes += s.Log.Writes
		c.frames += s.Transport.FramesSent
		c.netWrites += s.Transport.Writes
	}
	if withInstances {
		c.instancesOK = true
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, g := range m.groups {
			gs, err := m.nodes[proposerFor(g)].GroupStats(ctx, g)
			if err != nil {
				c.instancesOK = false
				break
			}
			c.instances += gs.Proposed
		}
	}
	return c
}

func (m *localMember) measure() error {
	m.notMaster = 0
	for _, g := range m.groups {
		if master, _ := m.nodes[proposerFor(g)].Master(g); master != proposerFor(g) {
			m.notMaster++
		}
	}
	m.before = m.snapshot(true)
	m.phase.Store(phaseMeasure)
	return nil
}

func (m *localMember) stop() (partial, error) {
	m.phase.Store(phaseStop)
	after := m.snapshot(false)
	m.wg.Wait()
	// Instances are counted once the clients are gone (GroupStats queues behind
	// their proposals): this over-counts by at most the one instance per group
	// that was in flight when the window closed.
	inst := m.snapshot(true)
	p := partial{
		Ops:       m.ops.Load(),
		Errs:      m.errs.Load(),
		ElapsedNs: int64(after.t.Sub(m.before.t)),
		Hist:      m.hist.Sparse(),
		CPUNs:     int64(after.cpu - m.before.cpu),
		Syncs:     after.syncs - m.before.syncs,
		LogWrites: after.writes - m.before.writes,
		Frames:    after.frames - m.before.frames,
		NetWrites: after.netWrites - m.before.netWrites,
		RSS:       rssBytes(),
		Heap:      heapBytes(),
		NotMaster: m.notMaster,
	}
	if inst.instancesOK && m.before.instancesOK {
		p.Instances = inst.instances - m.before.instances
	}
	m.errMu.Lock()
	for k := range m.errKinds {
		p.ErrKinds = append(p.ErrKinds, k)
	}
	m.errMu.Unlock()
	sort.Strings(p.ErrKinds)
	return p, nil
}

func (m *localMember) rss() (uint64, error) { return rssBytes(), nil }

func (m *localMember) close() error {
	m.phase.Store(phaseStop)
	var errs []error
	for _, n := range m.nodes {
		errs = append(errs, n.Stop())
	}
	return errors.Join(errs...)
}
