package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// testClusterSecret authenticates the test clusters' peers, as in a deployment.
const testClusterSecret = "shardkv-test-secret-0123456789abcdef"

// noSecretWarning is what the engine logs when it runs without a cluster secret;
// a replica's log that shows it did not get --cluster-secret through.
const noSecretWarning = "NO CLUSTER SECRET"

// binary is the shardkv binary built once for the end-to-end tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "shardkv-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "shardkv")
	// go-redis logs every failed dial; the tests kill replicas on purpose.
	redis.SetLogger(quietLogger{})
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...interface{}) {}

var buildOnce sync.Once
var buildErr error

// buildBinary builds the package under test with the go command that runs the
// tests, once per test process.
func buildBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binary
}

// freePorts returns n loopback ports that were free a moment ago.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var lns []net.Listener
	var ports []int
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	for _, ln := range lns {
		ln.Close()
	}
	return ports
}

// freeRun returns a base port such that base, base+1, base+2 are free.
func freeRun(t *testing.T, avoid map[int]bool) int {
	t.Helper()
	for try := 0; try < 200; try++ {
		base := 20000 + (os.Getpid()*7+try*97)%30000
		ok := true
		var lns []net.Listener
		for p := base; p < base+3; p++ {
			if avoid[p] {
				ok = false
				break
			}
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
			if err != nil {
				ok = false
				break
			}
			lns = append(lns, ln)
		}
		for _, ln := range lns {
			ln.Close()
		}
		if ok {
			return base
		}
	}
	t.Fatal("no three consecutive free ports")
	return 0
}

// proc is one shardkv process.
type proc struct {
	id     int
	resp   string
	cmd    *exec.Cmd
	log    *os.File
	done   chan struct{}
	paused bool
}

// cluster is a 3-process shardkv cluster started with `shardkv serve`.
type cluster struct {
	t      *testing.T
	bin    string
	dir    string
	peers  string
	groups int
	procs  []*proc
	extra  []string
}

func startCluster(t *testing.T, groups int, extra ...string) *cluster {
	t.Helper()
	ports := freePorts(t, 6)
	c := &cluster{t: t, bin: buildBinary(t), dir: t.TempDir(), groups: groups, extra: extra}
	var peers []string
	for i := 0; i < 3; i++ {
		peers = append(peers, fmt.Sprintf("%d=127.0.0.1:%d", i+1, ports[i]))
		c.procs = append(c.procs, &proc{id: i + 1, resp: fmt.Sprintf("127.0.0.1:%d", ports[3+i])})
	}
	c.peers = strings.Join(peers, ",")
	t.Cleanup(c.cleanup)
	for i := range c.procs {
		c.start(i)
	}
	for i := range c.procs {
		c.waitReady(i, 30*time.Second)
		if log, _ := os.ReadFile(filepath.Join(c.dir, fmt.Sprintf("replica%d.log", c.procs[i].id))); bytes.Contains(log, []byte(noSecretWarning)) {
			t.Fatalf("replica %d runs without the cluster secret:\n%s", c.procs[i].id, log)
		}
	}
	return c
}

func (c *cluster) start(i int) {
	c.t.Helper()
	p := c.procs[i]
	logf, err := os.OpenFile(filepath.Join(c.dir, fmt.Sprintf("replica%d.log", p.id)), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	args := append([]string{"serve"}, c.extra...)
	p.cmd = exec.Command(c.bin, args...)
	// Everything through the environment, to exercise it; the flags are tested
	// on their own.
	p.cmd.Env = append(os.Environ(),
		fmt.Sprint("SHARDKV_ID=", p.id),
		"SHARDKV_PEERS="+c.peers,
		"SHARDKV_RESP="+p.resp,
		"SHARDKV_DATA="+filepath.Join(c.dir, fmt.Sprint("replica", p.id)),
		fmt.Sprint("SHARDKV_GROUPS=", c.groups),
		"SHARDKV_TIMEOUT=2s",
		"SHARDKV_LOG_LEVEL=warn",
		"SHARDKV_CLUSTER_SECRET="+testClusterSecret,
	)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	p.log, p.done, p.paused = logf, make(chan struct{}), false
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(p.cmd, p.done)
}

// waitReady waits until replica i answers PING.
func (c *cluster) waitReady(i int, within time.Duration) {
	c.t.Helper()
	cl := redis.NewClient(&redis.Options{Addr: c.procs[i].resp, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	defer cl.Close()
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := cl.Ping(ctx).Err()
		cancel()
		if err == nil {
			return
		}
		select {
		case <-c.procs[i].done:
			c.t.Fatalf("replica %d exited while starting:\n%s", c.procs[i].id, c.logOf(i))
		default:
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("replica %d not ready after %v: %v\n%s", c.procs[i].id, within, err, c.logOf(i))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *cluster) signal(i int, sig syscall.Signal) {
	if err := c.procs[i].cmd.Process.Signal(sig); err != nil {
		c.t.Logf("signal %v to replica %d: %v", sig, c.procs[i].id, err)
	}
}

// kill SIGKILLs replica i and waits for it to be gone.
func (c *cluster) kill(i int) {
	p := c.procs[i]
	c.signal(i, syscall.SIGKILL)
	<-p.done
	p.log.Close()
	p.paused = false
}

func (c *cluster) pause(i int)  { c.signal(i, syscall.SIGSTOP); c.procs[i].paused = true }
func (c *cluster) resume(i int) { c.signal(i, syscall.SIGCONT); c.procs[i].paused = false }

// stop stops replica i with SIGTERM and reports whether it exited cleanly.
func (c *cluster) stop(i int) error {
	p := c.procs[i]
	c.signal(i, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		c.kill(i)
		return fmt.Errorf("replica %d did not stop within 20 s of SIGTERM", p.id)
	}
	p.log.Close()
	if !p.cmd.ProcessState.Success() {
		return fmt.Errorf("replica %d exited with %v", p.id, p.cmd.ProcessState)
	}
	return nil
}

func (c *cluster) cleanup() {
	for i, p := range c.procs {
		if p.cmd == nil {
			continue
		}
		select {
		case <-p.done:
			continue
		default:
		}
		if p.paused {
			c.resume(i)
		}
		c.kill(i)
	}
	if c.t.Failed() {
		for i := range c.procs {
			c.t.Logf("replica %d log:\n%s", c.procs[i].id, c.logOf(i))
		}
	}
}

func (c *cluster) logOf(i int) string {
	b, _ := os.ReadFile(filepath.Join(c.dir, fmt.Sprintf("replica%d.log", c.procs[i].id)))
	if len(b) > 8000 {
		b = append([]byte("...\n"), b[len(b)-8000:]...)
	}
	return string(bytes.TrimSpace(b))
}

func (c *cluster) client(i int) *redis.Client {
	cl := redis.NewClient(&redis.Options{
		Addr: c.procs[i].resp,
		// No retries: a retried write could apply twice and the history would
		// not say so. Timeouts above the server's own (2 s) so that the server
		// usually answers with TRYAGAIN or UNKNOWN first.
		MaxRetries:   -1,
		DialTimeout:  500 * time.Millisecond,
		ReadTimeout:  4 * time.Second,
		WriteTimeout: 4 * time.Second,
		PoolSize:     16,
	})
	c.t.Cleanup(func() { cl.Close() })
	return cl
}
