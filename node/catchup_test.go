package node

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/statemachine"
)

// The catch-up tests run real clusters (gnet over loopback, Pebble) whose groups
// trim their logs below checkpoint images, and check that members far behind - or
// new - are rebuilt from images and then the log. ENGINE_LONG=1 runs the issue's
// full size: a node down for 100k instances across 64 groups.
var longRuns = os.Getenv("ENGINE_LONG") != ""

// imageState is the checkpoint image of a digest state machine. Data, every
// command executed, travels in a file of its own so that images grow with the
// state like a real state machine's and transfer rates mean something.
type imageState struct {
	Next   ids.InstanceID
	Digest uint64
}

const (
	imageFile = "digest.json"
	dataFile  = "commands.bin"
)

func writeImage(dir string, st imageState, data []byte) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, dataFile), data, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, imageFile), b, 0o644)
}

func readImage(dir string) (imageState, []byte, error) {
	var st imageState
	b, err := os.ReadFile(filepath.Join(dir, imageFile))
	if err != nil {
		return st, nil, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, nil, err
	}
	data, err := os.ReadFile(filepath.Join(dir, dataFile))
	return st, data, err
}

// dataSM is a digestSM that also keeps every command it executed.
type dataSM struct {
	digestSM
	data []byte // under digestSM.mu
}

func (s *dataSM) Execute(inst ids.InstanceID, cmds [][]byte) ([][]byte, error) {
	out, err := s.digestSM.Execute(inst, cmds)
	if err == nil {
		s.mu.Lock()
		for _, c := range cmds {
			s.data = append(s.data, c...)
		}
		s.mu.Unlock()
	}
	return out, err
}

func (s *dataSM) snapshot() (imageState, []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return imageState{Next: s.next, Digest: s.digest}, slices.Clone(s.data)
}

func (s *dataSM) restore(st imageState, data []byte) {
	s.mu.Lock()
	s.next, s.digest, s.seen, s.data = st.Next, st.Digest, nil, data
	s.mu.Unlock()
}

// imageSM makes its own checkpoint images (the first way of package
// statemachine). It keeps its state in memory only: after a restart the engine
// installs the local image and replays the log after it.
type imageSM struct {
	dataSM
	installs atomic.Int64
}

func (s *imageSM) Checkpoint(dir string) (ids.InstanceID, error) {
	st, data := s.snapshot()
	return st.Next, writeImage(dir, st, data)
}

func (s *imageSM) Install(dir string) (ids.InstanceID, error) {
	st, data, err := readImage(dir)
	if err != nil {
		return 0, err
	}
	s.restore(st, data)
	s.installs.Add(1)
	return st.Next, nil
}

// installerSM installs images but makes none: the library's replayer makes them
// from a copy (the second way).
type installerSM struct{ imageSM }

func (s *installerSM) Checkpoint() {} // hides imageSM's: not a statemachine.Checkpointer

// digestCopy is the checkpoint copy of a digest state machine: its state is
// saved into its directory on Flush.
type digestCopy struct {
	dataSM
	dir string
}

func openDigestCopy(_ ids.GroupID, dir string) (statemachine.Copy, error) {
	c := &digestCopy{dir: dir}
	if st, data, err := readImage(dir); err == nil {
		c.restore(st, data)
	} else if !os.IsNotExist(err) {
		return nil, err
	}
	return c, nil
}

func (c *digestCopy) Applied() ids.InstanceID { n, _ := c.state(); return n }

func (c *digestCopy) Flush() error {
	st, data := c.snapshot()
	return writeImage(c.dir, st, data)
}

func (c *digestCopy) Close() error { return nil }

// cpCluster is a cluster whose state machines make or install images.
type cpCluster struct {
	t        *testing.T
	members  map[ids.NodeID]string
	dirs     map[ids.NodeID]string
	groups   int
	initial  func(ids.GroupID) ([]ids.NodeID, []ids.NodeID)
	copies   bool // the replayer way
	every    int  // CheckpointEvery; KeepInstances is a third of it
	memtable int  // LogMemTableBytes
	mu       sync.Mutex
	nodes    map[ids.NodeID]*Node
	sms      map[ids.NodeID][]*imageSM
}

func newCPCluster(t *testing.T, size, groups int, copies bool, initial func(ids.GroupID) ([]ids.NodeID, []ids.NodeID)) *cpCluster {
	addrs := freeAddrs(t, size)
	c := &cpCluster{t: t, members: map[ids.NodeID]string{}, dirs: map[ids.NodeID]string{}, groups: groups,
		initial: initial, copies: copies, every: 300, nodes: map[ids.NodeID]*Node{}, sms: map[ids.NodeID][]*imageSM{}}
	for i := 0; i < size; i++ {
		id := ids.NodeID(i + 1)
		c.members[id] = addrs[i]
		c.dirs[id] = t.TempDir()
	}
	t.Cleanup(func() {
		for _, n := range c.nodes {
			n.Stop()
		}
	})
	return c
}

func (c *cpCluster) start(id ids.NodeID) {
	c.t.Helper()
	sms := make([]*imageSM, c.groups)
	opts := Options{
		NodeID: id, Members: c.members, Groups: c.groups, DataDir: c.dirs[id],
		StateMachines: func(g ids.GroupID) statemachine.StateMachine {
			if c.copies {
				sm := &installerSM{}
				sms[g] = &sm.imageSM
				return sm
			}
			sms[g] = &imageSM{}
			return sms[g]
		},
		Logger:       zaptest.NewLogger(c.t).Named(fmt.Sprint("n", id)),
		TickInterval: 10 * time.Millisecond, StatusInterval: 200 * time.Millisecond,
		InitialMembers:  c.initial,
		CheckpointEvery: c.every, KeepInstances: c.every / 3, CheckpointChunkBytes: 4 << 10,
		LogMemTableBytes: c.memtable,
	}
	if c.copies {
		opts.CheckpointCopies = openDigestCopy
	}
	n, err := Start(opts)
	if err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	c.nodes[id], c.sms[id] = n, sms
	c.mu.Unlock()
}

func (c *cpCluster) stop(id ids.NodeID) {
	c.t.Helper()
	if err := c.nodes[id].Stop(); err != nil {
		c.t.Fatal(err)
	}
	delete(c.nodes, id)
}

// commandBytes is the size of every command the catch-up tests propose, so that
// catch-up rates mean something in bytes too.
const commandBytes = 256

// load proposes perGroup commands in every group through node via, one client per
// group, so that every command is an instance of its own.
func (c *cpCluster) load(via ids.NodeID, perGroup int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n := c.nodes[via]
	var wg sync.WaitGroup
	errs := make(chan error, c.groups)
	for g := 0; g < c.groups; g++ {
		wg.Go(func() {
			for i := 0; i < perGroup; i++ {
				cmd := make([]byte, commandBytes)
				copy(cmd, "g"+strconv.Itoa(g)+"."+strconv.Itoa(i)+".")
				if _, err := n.Propose(ctx, ids.GroupID(g), cmd); err != nil {
					errs <- fmt.Errorf("group %d command %d: %w", g, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		c.t.Fatal(err)
	}
}

// waitConverged waits until the given nodes hold the same state in every group.
func (c *cpCluster) waitConverged(timeout time.Duration, nodes ...ids.NodeID) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		diff := ""
		for g := 0; g < c.groups && diff == ""; g++ {
			n1, d1 := c.sms[nodes[0]][g].state()
			for _, id := range nodes[1:] {
				if n, d := c.sms[id][g].state(); n != n1 || d != d1 {
					diff = fmt.Sprintf("group %d: node %d at %d/%x, node %d at %d/%x", g, nodes[0], n1, d1, id, n, d)
					break
				}
			}
		}
		if diff == "" {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("no convergence after %v: %s", timeout, diff)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *cpCluster) installs(id ids.NodeID) (n int64) {
	for _, sm := range c.sms[id] {
		n += sm.installs.Load()
	}
	return n
}

// retained is the largest number of instances any group of node id keeps in its
// log, and whether every group trimmed at least once.
func (c *cpCluster) retained(id ids.NodeID) (most int, allTrimmed bool) {
	c.t.Helper()
	allTrimmed = true
	for g := 0; g < c.groups; g++ {
		st, err := c.nodes[id].GroupStats(context.Background(), ids.GroupID(g))
		if err != nil {
			c.t.Fatal(err)
		}
		most = max(most, int(st.Next-st.MinRetained))
		allTrimmed = allTrimmed && st.MinRetained > 0
	}
	return most, allTrimmed
}

// waitTrimmed waits until every group of the given nodes trimmed its log at least
// to instance min: a member that comes back after it cannot learn from the log.
func (c *cpCluster) waitTrimmed(timeout time.Duration, min ids.InstanceID, nodes ...ids.NodeID) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for _, id := range nodes {
		for g := 0; g < c.groups; g++ {
			for {
				st, err := c.nodes[id].GroupStats(context.Background(), ids.GroupID(g))
				if err != nil {
					c.t.Fatal(err)
				}
				if st.MinRetained >= min {
					break
				}
				if time.Now().After(deadline) {
					c.t.Fatalf("node %d group %d: log starts at %d after %v, want >= %d", id, g, st.MinRetained, timeout, min)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
}

func dirBytes(dir string) (n int64) {
	_ = filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

func testLaggingMember(t *testing.T, copies bool) {
	groups, perGroup := 8, 1200
	if longRuns {
		groups, perGroup = 64, 100_000/64+1
	}
	c := newCPCluster(t, 3, groups, copies, nil)
	for id := range c.members {
		c.start(id)
	}
	c.load(1, 10)
	c.waitConverged(20*time.Second, 1, 2, 3)
	c.stop(3)
	stopped := time.Now()

	start := time.Now()
	c.load(1, perGroup)
	elapsed := time.Since(start)
	t.Logf("%d instances in %d groups with node 3 down: %.0f instances/s", groups*perGroup, groups, float64(groups*perGroup)/elapsed.Seconds())
	c.waitTrimmed(30*time.Second, 200, 1, 2)
	most, trimmed := c.retained(1)
	if !trimmed || most > c.every/3+2*c.every {
		t.Fatalf("node 1 keeps up to %d instances per group (trimmed everywhere: %v); want at most KeepInstances+2*CheckpointEvery", most, trimmed)
	}
	t.Logf("node 1: at most %d instances retained per group; data dir %d KiB", most, dirBytes(c.dirs[1])>>10)

	// The transport keeps frames for a peer that went away for a while (netio's
	// UnreachableAfter, 2 s) and delivers them when it comes back: node 3 would
	// catch up from that backlog. Come back later than that.
	time.Sleep(time.Until(stopped.Add(2500 * time.Millisecond)))
	start = time.Now()
	c.start(3)
	c.waitConverged(3*time.Minute, 1, 2, 3)
	elapsed = time.Since(start)
	if c.installs(3) == 0 {
		t.Fatal("node 3 caught up without installing an image: the test did not exercise checkpoints")
	}
	var chunks, learned uint64
	for g := 0; g < groups; g++ {
		st, _ := c.nodes[3].GroupStats(context.Background(), ids.GroupID(g))
		chunks += st.ChunksReceived
		learned += st.Core.Learned
	}
	imageBytes := dirBytes(filepath.Join(c.dirs[3], "checkpoint"))
	t.Logf("node 3 caught up %d instances in %v (%.0f instances/s): %d images installed (%d chunks, %.1f MB of images now), %d instances learned from the log",
		groups*perGroup, elapsed.Round(time.Millisecond), float64(groups*perGroup)/elapsed.Seconds(), c.installs(3), chunks,
		float64(imageBytes)/1e6, learned)

	// A restart of a member whose state machine is in memory and whose log is
	// trimmed: it must install its own image, then replay the log after it.
	c.stop(1)
	c.start(1)
	if c.installs(1) == 0 {
		t.Fatal("restarted node 1 did not restore its state machine from its local image")
	}
	c.load(2, 5)
	c.waitConverged(time.Minute, 1, 2, 3)
}

func TestLaggingMemberCatchesUpByCheckpoint(t *testing.T) { testLaggingMember(t, false) }

// TestLaggingMemberCatchesUpFromLog: a member down for fewer instances than the
// logs keep learns them all from the log, no image needed.
func TestLaggingMemberCatchesUpFromLog(t *testing.T) {
	groups, perGroup := 8, 1200
	if longRuns {
		groups, perGroup = 64, 100_000/64+1
	}
	c := newCPCluster(t, 3, groups, false, nil)
	c.every = 3 * perGroup // keeps every instance of the run
	for id := range c.members {
		c.start(id)
	}
	c.load(1, 10)
	c.waitConverged(20*time.Second, 1, 2, 3)
	c.stop(3)
	stopped := time.Now()
	c.load(1, perGroup)
	time.Sleep(time.Until(stopped.Add(2500 * time.Millisecond))) // past the transport's backlog (see testLaggingMember)
	start := time.Now()
	c.start(3)
	c.waitConverged(3*time.Minute, 1, 2, 3)
	elapsed := time.Since(start)
	if c.installs(3) != 0 {
		t.Fatalf("node 3 installed %d images; the log had every instance it needed", c.installs(3))
	}
	var learned, taught uint64
	for g := 0; g < groups; g++ {
		st, _ := c.nodes[3].GroupStats(context.Background(), ids.GroupID(g))
		learned += st.Core.Learned
		for _, id := range []ids.NodeID{1, 2} {
			st, _ := c.nodes[id].GroupStats(context.Background(), ids.GroupID(g))
			taught += st.Teacher.Bytes
		}
	}
	if learned < uint64(groups*perGroup) {
		t.Fatalf("node 3 learned %d instances from the log, want %d", learned, groups*perGroup)
	}
	t.Logf("node 3 learned %d instances from the log in %v: %.0f instances/s, %.1f MB/s of values taught (resends included)",
		learned, elapsed.Round(time.Millisecond), float64(learned)/elapsed.Seconds(), float64(taught)/1e6/elapsed.Seconds())
}

func TestLaggingMemberCatchesUpByReplayedCheckpoint(t *testing.T) { testLaggingMember(t, true) }

// TestNewMemberRebuiltFromCheckpoint adds an empty member to groups whose logs are
// trimmed: it can only be rebuilt from an image.
func TestNewMemberRebuiltFromCheckpoint(t *testing.T) {
	const groups = 4
	c := newCPCluster(t, 4, groups, false, func(ids.GroupID) ([]ids.NodeID, []ids.NodeID) {
		return []ids.NodeID{1, 2, 3}, nil
	})
	for _, id := range []ids.NodeID{1, 2, 3} {
		c.start(id)
	}
	c.load(1, 900)
	c.waitTrimmed(30*time.Second, 100, 1, 2, 3)
	// Node 4 starts only now: a node of the cluster may learn any group's log
	// before it is a member, and it must find nothing of it left.
	c.start(4)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for g := 0; g < groups; g++ {
		if err := c.nodes[1].AddMember(ctx, ids.GroupID(g), 4); err != nil {
			t.Fatal(err)
		}
	}
	c.load(2, 5)
	c.waitConverged(time.Minute, 1, 2, 3, 4)
	if c.installs(4) < groups {
		t.Fatalf("node 4 installed %d images for %d groups", c.installs(4), groups)
	}
}

// TestLogStaysBounded loads a cluster round after round and checks that every
// group's log keeps a bounded number of instances; it logs the log directory's
// size after each round (Pebble reclaims trimmed ranges in compactions, so the
// bytes on disk follow with a lag). ENGINE_LONG=1 runs more rounds.
func TestLogStaysBounded(t *testing.T) {
	groups, rounds, perRound := 8, 3, 600
	if longRuns {
		rounds = 20
	}
	c := newCPCluster(t, 3, groups, false, nil)
	c.memtable = 2 << 20 // small memtables: the WAL of trimmed instances is reclaimed early
	for id := range c.members {
		c.start(id)
	}
	for round := 1; round <= rounds; round++ {
		c.load(1, perRound)
		most, trimmed := c.retained(1)
		if round >= 2 && (!trimmed || most > c.every/3+2*c.every) {
			t.Fatalf("round %d: up to %d instances retained per group (trimmed everywhere: %v)", round, most, trimmed)
		}
		t.Logf("round %d: %d instances per group chosen, at most %d retained; log dir %d KiB, images %d KiB",
			round, round*perRound, most, dirBytes(filepath.Join(c.dirs[1], "log"))>>10, dirBytes(filepath.Join(c.dirs[1], "checkpoint"))>>10)
	}
}
