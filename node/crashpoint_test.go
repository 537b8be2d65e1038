package node

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/multipaxos/engine/group"
	"github.com/multipaxos/engine/ids"
)

// The crash-point walk (issue 7 item 5) kills a member of a real cluster (gnet
// over loopback, Pebble, its own process) at each named persistence step of
// package group, restarts it on the same data dir and checks that no acknowledged
// command is lost and that the restarted member converges to the others - and
// then that it still votes and executes, in a quorum that cannot do without it.
// Member 3 is the child process (see childMain); members 1 and 2 run in the test
// and take every proposal.
//
// The simulation (package sim) walks the same points with a simulated disk; here
// the disk is Pebble's and the kill is SIGKILL, so what survives is exactly what
// the engine handed to the kernel before the step.
//
// Each point needs the child doing the work that reaches it:
//   - the acceptor and execute points: the child votes and executes under load,
//     and masters the odd groups so that it dies as a proposer as well;
//   - the image and trim points: the child makes images and trims its own log;
//   - the install points: the child is behind logs the others trimmed (it starts
//     late, or is killed once and comes back after they trimmed) and must install
//     an image.
//
// The child's state machines either keep their state in memory (a restart installs
// the local image and replays the log) or in files of their own (durableSM: a
// restart finds them behind the engine, or ahead of it after an install the engine
// did not finish).
//
// The child dies at the hit-th time any of its groups reaches the point after the
// test arms it. The hit, the install variant and the state machine are drawn from
// the printed seed (ENGINE_CRASH_SEED=... replays the draws; the interleaving is
// the machine's). A point the run never reaches fails the test.

const (
	crashGroups   = 4
	crashEvery    = 150 // CheckpointEvery; KeepInstances is a third of it
	crashCmdBytes = 32  // every command has this size, so that a state machine's data splits into its commands
)

type crashKind int

const (
	crashSteady  crashKind = iota // reached by every instance
	crashMaker                    // reached when the child makes an image or trims
	crashInstall                  // reached when the child installs a received image
)

// crashKindOf classifies a point by what the child must do to reach it. A point
// added to group.CrashPoints and not listed here is taken as steady; if a steady
// run does not reach it, the test fails and says so.
func crashKindOf(name string) crashKind {
	switch name {
	case group.CrashImageMade, group.CrashImageSealed, group.CrashBeforeTrim, group.CrashAfterTrim:
		return crashMaker
	case group.CrashBeforeInstall, group.CrashAfterInstall, group.CrashAfterImageRename, group.CrashAfterInstallTrim:
		return crashInstall
	}
	return crashSteady
}

// crashOutcome is one row of the walk's report.
type crashOutcome struct {
	point     string
	hit       int
	late      bool // install points: the child started late rather than rejoining
	durable   bool // the child's state machines keep their state (durableSM)
	killed    bool // the child killed itself at the point
	converged bool
	acked     int // acknowledged commands, all checked
	took      time.Duration
}

// TestCrashPointsRealCluster walks every crash point once (three times with
// ENGINE_LONG=1) and logs a table of the outcomes.
func TestCrashPointsRealCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("ENGINE_CRASH_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("ENGINE_CRASH_SEED: %v", err)
		}
	}
	t.Logf("seed %d (ENGINE_CRASH_SEED=%d draws the same hits and variants)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	rounds := 1
	if longRuns {
		rounds = 3
	}
	var outcomes []*crashOutcome
	for range rounds {
		for i, name := range group.CrashPoints {
			// Draw for every point, run or not, so that a seed means the same
			// draws whatever -run selects.
			o := &crashOutcome{point: name, hit: 1 + rng.IntN(3), late: rng.IntN(2) == 0, durable: rng.IntN(2) == 0}
			t.Run(name, func(t *testing.T) {
				outcomes = append(outcomes, o)
				start := time.Now()
				defer func() { o.took = time.Since(start) }()
				runCrashPoint(t, i, o)
			})
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%-31s %3s %-7s %-8s %-6s %-9s %6s %6s\n", "point", "hit", "variant", "sm", "killed", "converged", "acked", "time")
	for _, o := range outcomes {
		variant := "-"
		if crashKindOf(o.point) == crashInstall {
			variant = map[bool]string{true: "late", false: "rejoin"}[o.late]
		}
		sm := map[bool]string{true: "durable", false: "memory"}[o.durable]
		fmt.Fprintf(&b, "%-31s %3d %-7s %-8s %-6v %-9v %6d %6s\n", o.point, o.hit, variant, sm, o.killed, o.converged, o.acked, o.took.Round(100*time.Millisecond))
	}
	t.Logf("seed %d\n%s", seed, b.String())
}

// crashLoad proposes through the given members, a client per group on each, and
// keeps every acknowledged command with its instance.
type crashLoad struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
	count  atomic.Int64
	per    [crashGroups]atomic.Int64 // count by group
	mu     sync.Mutex
	acks   []crashAck
}

type crashAck struct {
	g    ids.GroupID
	cmd  string
	inst ids.InstanceID
}

func startCrashLoad(tag string, via []*Node) *crashLoad {
	ctx, cancel := context.WithCancel(context.Background())
	l := &crashLoad{cancel: cancel}
	for g := ids.GroupID(0); g < crashGroups; g++ {
		for w, n := range via {
			l.wg.Go(func() {
				for i := 0; ctx.Err() == nil; i++ {
					cmd := fmt.Sprintf("%s.g%d.n%d.%d.", tag, g, n.ID(), i) // unique: checkAcks finds it by name
					cmd += strings.Repeat("x", crashCmdBytes-len(cmd))
					// Short enough that a client stuck on a dead master soon
					// tries again; a command that times out is not acknowledged.
					pctx, pcancel := context.WithTimeout(ctx, 1500*time.Millisecond)
					res, err := n.Propose(pctx, g, []byte(cmd))
					pcancel()
					if err != nil {
						if ctx.Err() == nil {
							time.Sleep(time.Duration(10+w) * time.Millisecond) // ErrBusy and friends: back off
						}
						continue
					}
					l.mu.Lock()
					l.acks = append(l.acks, crashAck{g: g, cmd: cmd, inst: res.Instance})
					l.mu.Unlock()
					l.count.Add(1)
					l.per[g].Add(1)
				}
			})
		}
	}
	return l
}

// counts is the number of commands acknowledged so far in every group.
func (l *crashLoad) counts() (per [crashGroups]int64) {
	for g := range per {
		per[g] = l.per[g].Load()
	}
	return per
}

// progressed reports whether every group acknowledged n commands after mark.
func (l *crashLoad) progressed(mark [crashGroups]int64, n int64) bool {
	for g, c := range l.counts() {
		if c < mark[g]+n {
			return false
		}
	}
	return true
}

func (l *crashLoad) stop() {
	l.once.Do(func() {
		l.cancel()
		l.wg.Wait()
	})
}

// waitUntil polls cond until it holds, failing the test after timeout.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// next is the child's next instance in every group, from its last state line.
func (c *child) next() []ids.InstanceID {
	c.mu.Lock()
	fields := strings.Fields(c.state)
	c.mu.Unlock()
	var next []ids.InstanceID
	for _, f := range fields[min(1, len(fields)):] { // after "state"
		s, _, _ := strings.Cut(f, ":")
		n, _ := strconv.ParseUint(s, 10, 64)
		next = append(next, ids.InstanceID(n))
	}
	return next
}

// waitCaughtUp waits until the child executed every group's instances below to.
func (c *child) waitCaughtUp(t *testing.T, to ids.InstanceID) {
	t.Helper()
	waitUntil(t, 30*time.Second, fmt.Sprintf("member 3 did not execute instance %d in every group", to), func() bool {
		if exited, _ := c.exited(); exited {
			c.mu.Lock()
			defer c.mu.Unlock()
			t.Fatalf("member 3 exited (%v); its last line: %q", c.cmd.ProcessState, c.state)
		}
		next := c.next()
		return len(next) == crashGroups && slices.Min(next) >= to
	})
}

// newCrashCluster is a cpCluster of three members with crashEvery. It takes its
// addresses from listeners held open together: freeAddrs closes each before it
// takes the next, and the kernel may then hand out the same port twice.
func newCrashCluster(t *testing.T) *cpCluster {
	c := &cpCluster{t: t, members: map[ids.NodeID]string{}, dirs: map[ids.NodeID]string{}, groups: crashGroups,
		every: crashEvery, nodes: map[ids.NodeID]*Node{}, sms: map[ids.NodeID][]*imageSM{}}
	var ls []net.Listener
	for id := ids.NodeID(1); id <= 3; id++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		c.members[id], c.dirs[id] = l.Addr().String(), t.TempDir()
	}
	for _, l := range ls {
		l.Close()
	}
	t.Cleanup(func() {
		for _, n := range c.nodes {
			n.Stop()
		}
	})
	return c
}

func runCrashPoint(t *testing.T, idx int, o *crashOutcome) {
	kind := crashKindOf(o.point)
	c := newCrashCluster(t)
	base := fmt.Sprintf("id=3 dir=%s groups=%d every=%d 1=%s 2=%s 3=%s",
		c.dirs[3], crashGroups, crashEvery, c.members[1], c.members[2], c.members[3])
	if o.durable {
		base += " durable=1"
	}
	armed := fmt.Sprintf("%s crash=%d hit=%d", base, idx, o.hit)
	down := time.Now() // when member 3 was last reachable (late: never)
	c.start(1)
	c.start(2)
	load := startCrashLoad("a", []*Node{c.nodes[1], c.nodes[2]})
	t.Cleanup(load.stop) // before the nodes stop
	start := func(env string) *child {
		ch := startChild(t, env)
		t.Cleanup(ch.kill)
		return ch
	}

	var ch *child
	if kind == crashInstall {
		if !o.late {
			ch = start(base)
			ch.waitCaughtUp(t, 20)
			ch.kill()
			down = time.Now()
		}
		// Members 1 and 2 trim past anything member 3 has, and the transport's
		// backlog for it (netio's UnreachableAfter, 2 s) is gone: it can only
		// catch up by installing images.
		c.waitTrimmed(60*time.Second, 2*crashEvery, 1, 2)
		time.Sleep(time.Until(down.Add(2500 * time.Millisecond)))
		ch = start(armed + " armed=1")
	} else {
		ch = start(armed)
		ch.waitCaughtUp(t, 20)
		if kind == crashSteady {
			// Member 3 masters the odd groups: it dies as a proposer there.
			for g := ids.GroupID(1); g < crashGroups; g += 2 {
				c.transferMaster(g, 3)
			}
		}
		if err := ch.arm(); err != nil {
			t.Fatal(err)
		}
	}

	select {
	case <-ch.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("member 3 did not reach %q %d times in 60 s (%d commands acknowledged meanwhile)", o.point, o.hit, load.count.Load())
	}
	exited, killed := ch.exited()
	ch.mu.Lock()
	line, last := ch.crashed, ch.state
	ch.mu.Unlock()
	if !exited || !killed || line == "" {
		t.Fatalf("member 3 died but not at its crash point: %v (crash line %q, last line %q)", ch.cmd.ProcessState, line, last)
	}
	o.killed = true
	t.Logf("member 3 killed: %s; %d commands acknowledged so far", line, load.count.Load())

	// Restart without the crash point while every group keeps taking commands
	// (those member 3 mastered after a failover), and wait until all three agree.
	ch = start(base)
	mark := load.counts()
	waitUntil(t, 60*time.Second, "a group made no progress after member 3 restarted", func() bool { return load.progressed(mark, 20) })
	load.stop()
	c.waitChild(t, ch, 60*time.Second, 1, 2)
	c.checkAcks(t, load.acks, 1, 2)

	// Member 3 is not just a copy: with member 2 stopped, no command is chosen
	// without its vote, and it must go on executing them.
	c.stop(2)
	quorum := startCrashLoad("b", []*Node{c.nodes[1]})
	t.Cleanup(quorum.stop)
	waitUntil(t, 60*time.Second, "a group made no progress with member 2 stopped", func() bool { return quorum.progressed([crashGroups]int64{}, 10) })
	quorum.stop()
	c.waitChild(t, ch, 60*time.Second, 1)
	c.checkAcks(t, load.acks, 1)
	c.checkAcks(t, quorum.acks, 1)
	o.converged, o.acked = true, len(load.acks)+len(quorum.acks)
}

// transferMaster makes node to the master of group g, asking the member that is
// master now; a failure is logged (the walk does not depend on it).
func (c *cpCluster) transferMaster(g ids.GroupID, to ids.NodeID) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		m, _ := c.nodes[1].Master(g)
		if m == to {
			return
		}
		if n := c.nodes[m]; n != nil {
			if err := n.TransferMaster(ctx, g, to); err == nil {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Logf("group %d: master not moved to %d", g, to)
}

// waitChild waits until the child holds the same state in every group as the
// in-process members named.
func (c *cpCluster) waitChild(t *testing.T, ch *child, timeout time.Duration, members ...ids.NodeID) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		want, agree := "state", true
		for g := 0; g < c.groups; g++ {
			n1, d1 := c.sms[members[0]][g].state()
			for _, id := range members[1:] {
				if n, d := c.sms[id][g].state(); n != n1 || d != d1 {
					agree = false // the in-process members still converging
				}
			}
			want += fmt.Sprintf(" %d:%x", n1, d1)
		}
		ch.mu.Lock()
		got := ch.state
		ch.mu.Unlock()
		if agree && got == want {
			t.Logf("member 3 converged with %v: %s", members, got)
			return
		}
		if time.Now().After(deadline) {
			for g := 0; g < c.groups; g++ {
				for _, id := range members {
					st, _ := c.nodes[id].GroupStats(context.Background(), ids.GroupID(g))
					next, d := c.sms[id][g].state()
					t.Logf("group %d node %d: state machine %d:%x, stats %+v", g, id, next, d, st)
				}
			}
			t.Fatalf("member 3 did not converge in %v:\n got %s\nwant %s", timeout, got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkAcks checks that every acknowledged command is in the state machines of
// the in-process members named - at its instance where the state machine still
// knows instances (it installed no image) - and below their next instance. The
// child's digests equal theirs (waitChild), so it holds the commands too.
func (c *cpCluster) checkAcks(t *testing.T, acks []crashAck, members ...ids.NodeID) {
	t.Helper()
	lost := 0
	for _, id := range members {
		for g := ids.GroupID(0); g < crashGroups; g++ {
			sm := c.sms[id][g]
			sm.mu.Lock()
			have := map[string]int{}
			for i := 0; i+crashCmdBytes <= len(sm.data); i += crashCmdBytes {
				have[string(sm.data[i:i+crashCmdBytes])]++
			}
			next, seen, installs := sm.next, sm.seen, sm.installs.Load()
			for _, a := range acks {
				if a.g != g {
					continue
				}
				var why string
				switch {
				case a.inst >= next:
					why = fmt.Sprintf("at instance %d, state machine at %d", a.inst, next)
				case have[a.cmd] == 0:
					why = "not in the state machine's data"
				case installs == 0 && seen[a.cmd] != a.inst:
					why = fmt.Sprintf("acknowledged at instance %d, executed at %d", a.inst, seen[a.cmd])
				}
				if why != "" {
					if lost++; lost <= 10 {
						t.Errorf("node %d group %d: acknowledged command %q %s", id, g, a.cmd, why)
					}
				}
			}
			sm.mu.Unlock()
		}
	}
	if lost > 0 {
		t.Fatalf("%d acknowledged commands lost or misplaced", lost)
	}
}

// durableSM is an imageSM that keeps its state in a file of its own, rewritten
// (write, then rename over the old one) every durableEvery instances and on every
// Install, so that Applied() is where a restart finds it: behind the engine (the
// log is replayed after it), or - after an install the engine did not finish -
// ahead of it. No fsync: the walk kills processes, not machines.
type durableSM struct {
	imageSM
	file string
}

const durableEvery = 16

// durableState is the file's content: the state and the instance it is at.
type durableState struct {
	imageState
	Data []byte
}

func openDurableSM(dir string) (*durableSM, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	s := &durableSM{file: filepath.Join(dir, "state.json")}
	b, err := os.ReadFile(s.file)
	if os.IsNotExist(err) {
		return s, nil
	}
	if err != nil {
		return nil, err
	}
	var st durableState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, err
	}
	s.restore(st.imageState, st.Data)
	return s, nil
}

func (s *durableSM) Applied() ids.InstanceID { n, _ := s.state(); return n }

func (s *durableSM) Execute(inst ids.InstanceID, cmds [][]byte) ([][]byte, error) {
	out, err := s.imageSM.Execute(inst, cmds)
	if err == nil && (inst+1)%durableEvery == 0 {
		err = s.save()
	}
	return out, err
}

func (s *durableSM) Install(dir string) (ids.InstanceID, error) {
	inst, err := s.imageSM.Install(dir)
	if err == nil {
		err = s.save()
	}
	return inst, err
}

func (s *durableSM) save() error {
	st, data := s.snapshot()
	b, err := json.Marshal(durableState{imageState: st, Data: data})
	if err != nil {
		return err
	}
	if err := os.WriteFile(s.file+".tmp", b, 0o644); err != nil {
		return err
	}
	return os.Rename(s.file+".tmp", s.file)
}
