package node

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/statemachine"
)

// The kill test runs one member as a child process (this test binary again, with
// childEnv set) so that it can be killed with SIGKILL: no Stop, no flush, nothing
// but what reached the disk.
const childEnv = "ENGINE_NODE_TEST_CHILD"

// childMain runs a node and prints its per-group state every 50 ms until killed.
func childMain() {
	var id ids.NodeID
	var dir string
	var groups int
	members := map[ids.NodeID]string{}
	for _, kv := range strings.Fields(os.Getenv(childEnv)) {
		k, v, _ := strings.Cut(kv, "=")
		switch {
		case k == "id":
			n, _ := strconv.Atoi(v)
			id = ids.NodeID(n)
		case k == "dir":
			dir = v
		case k == "groups":
			groups, _ = strconv.Atoi(v)
		default:
			n, _ := strconv.Atoi(k)
			members[ids.NodeID(n)] = v
		}
	}
	sms := make([]*digestSM, groups)
	_, err := Start(Options{NodeID: id, Members: members, Groups: groups, DataDir: dir,
		TickInterval: 10 * time.Millisecond, StatusInterval: 200 * time.Millisecond,
		StateMachines: func(g ids.GroupID) statemachine.StateMachine { sms[g] = &digestSM{}; return sms[g] }})
	if err != nil {
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

type child struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	state string
	done  chan struct{}
}

func startChild(t *testing.T, env string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+env)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(out)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			c.mu.Lock()
			c.state = sc.Text()
			c.mu.Unlock()
		}
	}()
	return c
}

func (c *child) kill() {
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.done
	_ = c.cmd.Wait()
}

// TestKilledMemberRejoins: node 3 runs in its own process and is killed with SIGKILL
// mid-load, restarted on the same data dir, and catches up: in the end its digest of
// every group equals the others'.
func TestKilledMemberRejoins(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	const groups = 16
	addrs := freeAddrs(t, 3)
	members := map[ids.NodeID]string{1: addrs[0], 2: addrs[1], 3: addrs[2]}
	env := fmt.Sprintf("id=3 dir=%s groups=%d 1=%s 2=%s 3=%s", t.TempDir(), groups, addrs[0], addrs[1], addrs[2])
	sms := map[ids.NodeID][]*digestSM{}
	var nodes []*Node
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
		defer n.Stop()
	}
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
