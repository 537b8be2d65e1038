package node

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/multipaxos/engine/group"
	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/statemachine"
)

// The kill test runs one member as a child process (this test binary again, with
// childEnv set) so that it can be killed with SIGKILL: no Stop, no flush, nothing
// but what reached the disk.
const childEnv = "ENGINE_NODE_TEST_CHILD"

// childMain runs a node and prints its per-group state every 50 ms until killed.
// childEnv holds its settings as space-separated key=value pairs: id, dir, groups,
// and each member's address under its node ID; optionally every (CheckpointEvery,
// with an imageSM in every group, KeepInstances a third of it) and, for the crash
// walk, durable=1 (the imageSMs keep their state in dir: durableSM), crash (an
// index into group.CrashPoints) and hit: the process kills itself at the hit-th
// time any group reaches that point after it is armed, by the line "arm" on stdin
// or at once with armed=1.
func childMain() {
	var id ids.NodeID
	var dir string
	var groups, every, crash, hit int
	var durable bool
	crash = -1
	armed := new(atomic.Bool)
	members := map[ids.NodeID]string{}
	for _, kv := range strings.Fields(os.Getenv(childEnv)) {
		k, v, _ := strings.Cut(kv, "=")
		n, _ := strconv.Atoi(v)
		switch k {
		case "id":
			id = ids.NodeID(n)
		case "dir":
			dir = v
		case "groups":
			groups = n
		case "every":
			every = n
		case "crash":
			crash = n
		case "hit":
			hit = n
		case "durable":
			durable = n != 0
		case "armed":
			armed.Store(n != 0)
		default:
			m, _ := strconv.Atoi(k)
			members[ids.NodeID(m)] = v
		}
	}
	sms := make([]stateReader, groups)
	opts := Options{NodeID: id, Members: members, Groups: groups, DataDir: dir,
		TickInterval: 10 * time.Millisecond, StatusInterval: 200 * time.Millisecond,
		StateMachines: func(g ids.GroupID) statemachine.StateMachine { sm := &digestSM{}; sms[g] = sm; return sm }}
	if every > 0 {
		opts.CheckpointEvery, opts.KeepInstances, opts.CheckpointChunkBytes = every, every/3, 4<<10
		opts.StateMachines = func(g ids.GroupID) statemachine.StateMachine { sm := &imageSM{}; sms[g] = sm; return sm }
	}
	if durable {
		opts.StateMachines = func(g ids.GroupID) statemachine.StateMachine {
			sm, err := openDurableSM(filepath.Join(dir, "sm", strconv.Itoa(int(g))))
			if err != nil {
				fmt.Println("error", err)
				os.Exit(1)
			}
			sms[g] = sm
			return sm
		}
	}
	if crash >= 0 {
		opts.CrashPoint = crashAt(group.CrashPoints[crash], hit, armed)
		go func() {
			sc := bufio.NewScanner(os.Stdin)
			for sc.Scan() {
				if sc.Text() == "arm" {
					armed.Store(true)
				}
			}
		}()
	}
	if _, err := Start(opts); err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	for {
		var b strings.Builder
		b.WriteString("state")
		for _, sm := range sms {
			next, d := sm.state()
			fmt.Fprintf(&b, " %d:%x", next, d)
		}
		fmt.Println(b.String())
		time.Sleep(50 * time.Millisecond)
	}
}

// crashAt returns the CrashPoint hook that kills this process at the hit-th time a
// group reaches the point named name while armed.
func crashAt(name string, hit int, armed *atomic.Bool) func(string) {
	var hits atomic.Int64
	return func(at string) {
		if at != name || !armed.Load() {
			return
		}
		n := hits.Add(1)
		if n < int64(hit) {
			return
		}
		if n == int64(hit) {
			// The parent tells a kill at the crash point from any other death by
			// this line (stdout is unbuffered: it is in the pipe before the kill).
			fmt.Printf("crash %d %s\n", n, name)
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		}
		// Neither this group nor any other that reaches the point while the
		// signal is on its way may take the step.
		select {}
	}
}

// stateReader is what childMain prints of a group's state machine.
type stateReader interface {
	state() (next ids.InstanceID, digest uint64)
}

type child struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	mu      sync.Mutex
	state   string        // the last "state" line
	crashed string        // the "crash" line, if the child killed itself at its crash point
	done    chan struct{} // closed once the child exited and was reaped
}

func startChild(t *testing.T, env string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+env)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, stdin: in, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(out)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			line := sc.Text()
			c.mu.Lock()
			if strings.HasPrefix(line, "crash ") {
				c.crashed = line
			} else {
				c.state = line
			}
			c.mu.Unlock()
		}
		_ = cmd.Wait() // after the last read, as os/exec asks
	}()
	return c
}

// arm starts the child's crash point counting.
func (c *child) arm() error {
	_, err := io.WriteString(c.stdin, "arm\n")
	return err
}

// exited reports whether the child exited, and whether SIGKILL ended it.
func (c *child) exited() (exited, killed bool) {
	select {
	case <-c.done:
	default:
		return false, false
	}
	ws, ok := c.cmd.ProcessState.Sys().(syscall.WaitStatus)
	return true, ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

func (c *child) kill() {
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.done
}

// TestKilledMemberRejoins: node 3 runs in its own process and is killed with SIGKILL
// mid-load, restarted on the same data dir, and catches up: in the end its digest of
// every group equals the others'.
func TestKilledMemberRejoins(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	const groups = 16
	nodes, sms, env := startPairAndChildEnv(t, groups)
	c := startChild(t, env)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
				_, _ = nodes[w%2].Propose(pctx, ids.GroupID(i%groups), []byte(fmt.Sprintf("w%d-%d", w, i)))
				pcancel()
			}
		}(w)
	}
	time.Sleep(700 * time.Millisecond)
	c.kill()
	time.Sleep(500 * time.Millisecond)
	c = startChild(t, env)
	defer c.kill()
	time.Sleep(700 * time.Millisecond)
	cancel()
	wg.Wait()

	deadline := time.Now().Add(20 * time.Second)
	for {
		want := "state"
		for g := 0; g < groups; g++ {
			n1, d1 := sms[1][g].state()
			if n2, d2 := sms[2][g].state(); n1 != n2 || d1 != d2 {
				want = "" // 1 and 2 still converging
				break
			}
			want += fmt.Sprintf(" %d:%x", n1, d1)
		}
		c.mu.Lock()
		got := c.state
		c.mu.Unlock()
		if want != "" && got == want {
			t.Logf("killed member converged: %.120s", got)
			return
		}
		if time.Now().After(deadline) {
			for g := 0; g < groups; g++ {
				for i, n := range nodes {
					st, _ := n.GroupStats(context.Background(), ids.GroupID(g))
					m, _ := n.Master(ids.GroupID(g))
					next, d := sms[ids.NodeID(i+1)][g].state()
					t.Logf("g%d node %d: sm %d/%x master %d stats %+v", g, i+1, next, d, m, st)
				}
			}
			t.Fatalf("killed member did not converge:\n got %s\nwant %s", got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startPairAndChildEnv starts nodes 1 and 2 of a 3-node cluster in this process
// (stopped at the end of the test) and returns them, their state machines and the
// childEnv settings that run node 3 in a child process (startChild).
func startPairAndChildEnv(t *testing.T, groups int) (nodes []*Node, sms map[ids.NodeID][]*digestSM, env string) {
	t.Helper()
	addrs := freeAddrs(t, 3)
	members := map[ids.NodeID]string{1: addrs[0], 2: addrs[1], 3: addrs[2]}
	env = fmt.Sprintf("id=3 dir=%s groups=%d 1=%s 2=%s 3=%s", t.TempDir(), groups, addrs[0], addrs[1], addrs[2])
	sms = map[ids.NodeID][]*digestSM{}
	for _, id := range []ids.NodeID{1, 2} {
		s := make([]*digestSM, groups)
		sms[id] = s
		n, err := Start(Options{NodeID: id, Members: members, Groups: groups, DataDir: t.TempDir(),
			TickInterval: 10 * time.Millisecond, StatusInterval: 200 * time.Millisecond,
			StateMachines: func(g ids.GroupID) statemachine.StateMachine { s[g] = &digestSM{}; return s[g] }})
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
		t.Cleanup(func() { n.Stop() })
	}
	return nodes, sms, env
}
