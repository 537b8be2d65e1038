package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// syncBuffer is a bytes.Buffer safe for a process writing while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// demoProc is a running `shardkv demo`.
type demoProc struct {
	cmd    *exec.Cmd
	stdout *syncBuffer
	done   chan struct{}
}

// freeAddr is a loopback address whose port was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func startDemo(t *testing.T, bin, data string, peerPort, respPort int) *demoProc {
	t.Helper()
	d := &demoProc{stdout: &syncBuffer{}, done: make(chan struct{})}
	d.cmd = exec.Command(bin, "demo", "--data", data, "--groups", "16",
		"--peer-port", fmt.Sprint(peerPort), "--resp-port", fmt.Sprint(respPort), "--metrics", freeAddr(t))
	d.cmd.Stdout = d.stdout
	logf, err := os.OpenFile(filepath.Join(data+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	d.cmd.Stderr = logf
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = d.cmd.Wait(); logf.Close(); close(d.done) }()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			_ = d.cmd.Process.Kill()
			<-d.done
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(d.stdout.String(), "Press Ctrl-C") {
		select {
		case <-d.done:
			log, _ := os.ReadFile(data + ".log")
			t.Fatalf("demo exited while starting:\n%s\n%s", d.stdout.String(), log)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("demo not ready after 30 s:\n%s", d.stdout.String())
		}
	}
	return d
}

// interrupt stops the demo as Ctrl-C does and checks it exits cleanly.
func (d *demoProc) interrupt(t *testing.T) {
	t.Helper()
	_ = d.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		t.Fatal("demo did not stop within 30 s of SIGINT")
	}
	if !d.cmd.ProcessState.Success() || !strings.Contains(d.stdout.String(), "stopped") {
		t.Fatalf("demo exit %v, output:\n%s", d.cmd.ProcessState, d.stdout.String())
	}
}

// TestDemo runs `shardkv demo`, drives it with redis-cli and redis-benchmark when
// they are installed (Debian package redis-tools) and with go-redis, stops it
// with SIGINT and starts it again on the same data, which must be all there.
func TestDemo(t *testing.T) {
	bin := buildBinary(t)
	peerPort := freeRun(t, nil)
	avoid := map[int]bool{peerPort: true, peerPort + 1: true, peerPort + 2: true}
	respPort := freeRun(t, avoid)
	data := filepath.Join(t.TempDir(), "demo")
	d := startDemo(t, bin, data, peerPort, respPort)
	if log, _ := os.ReadFile(data + ".log"); bytes.Contains(log, []byte(noSecretWarning)) {
		t.Fatalf("demo replicas run without a cluster secret:\n%s", log)
	}
	if out := d.stdout.String(); !strings.Contains(out, fmt.Sprintf("redis-cli -p %d", respPort)) || !strings.Contains(out, "new data directory") {
		t.Fatalf("demo banner:\n%s", out)
	}
	ctx := context.Background()

	t.Run("metrics", func(t *testing.T) {
		m := regexp.MustCompile(`metrics on (http://\S+/metrics)`).FindStringSubmatch(d.stdout.String())
		if m == nil {
			t.Fatalf("no metrics address in the banner:\n%s", d.stdout.String())
		}
		resp, err := http.Get(m[1])
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{`paxos_log_fsyncs_total{replica="1"}`, `paxos_instances_chosen_total{replica="3"}`,
			`paxos_masters_here{replica="2"}`, `paxos_propose_seconds_bucket`, "go_goroutines", "process_resident_memory_bytes"} {
			if !bytes.Contains(body, []byte(want)) {
				t.Errorf("metrics lack %s", want)
			}
		}
	})

	t.Run("redis-cli", func(t *testing.T) {
		cli, err := exec.LookPath("redis-cli")
		if err != nil {
			t.Skip("redis-cli not on PATH (Debian package redis-tools); skipped")
		}
		for _, ex := range [][2]string{{"PING", "PONG"}, {"SET cli-key hello", "OK"}, {"GET cli-key", "hello"}, {"INCR cli-n", "1"}} {
			out, err := exec.Command(cli, append([]string{"-p", fmt.Sprint(respPort + 1)}, strings.Fields(ex[0])...)...).CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != ex[1] {
				t.Errorf("redis-cli %s: %q %v, want %q", ex[0], out, err, ex[1])
			}
		}
	})

	t.Run("redis-benchmark", func(t *testing.T) {
		bench, err := exec.LookPath("redis-benchmark")
		if err != nil {
			t.Skip("redis-benchmark not on PATH (Debian package redis-tools); skipped")
		}
		// The server's own counters say whether every request got a reply that
		// was not an error, whatever redis-benchmark's version prints.
		cmdsBefore, errsBefore := infoStats(t, respPort)
		// -r spreads the keys over every group; redis-benchmark 7 also exits
		// non-zero on an error reply.
		const requests = 2000
		cmd := exec.Command(bench, "-p", fmt.Sprint(respPort), "-t", "set,get", "-n", fmt.Sprint(requests), "-r", "10000", "-q")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("redis-benchmark: %v\n%s", err, out)
		}
		cmdsAfter, errsAfter := infoStats(t, respPort)
		if errsAfter != errsBefore {
			t.Errorf("%d error replies during redis-benchmark", errsAfter-errsBefore)
		}
		if cmdsAfter-cmdsBefore < 2*requests {
			t.Errorf("the server processed %d commands, want at least %d SET and GET", cmdsAfter-cmdsBefore, 2*requests)
		}
		text := string(out)
		for _, name := range []string{"SET", "GET"} {
			m := regexp.MustCompile(name + `: ([0-9.]+) requests per second, p50=([0-9.]+) msec`).FindStringSubmatch(text)
			if m == nil {
				t.Fatalf("no %s result in:\n%s", name, text)
			}
			t.Logf("redis-benchmark %s: %s requests/s, p50 %s ms", name, m[1], m[2])
		}
		if strings.Contains(text, "rror") {
			t.Fatalf("redis-benchmark reported errors:\n%s", text)
		}
	})

	// Data written through each replica, some of it expiring.
	var before int64
	for i := 0; i < 3; i++ {
		cl := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", respPort+i)})
		for j := 0; j < 20; j++ {
			if err := cl.Set(ctx, fmt.Sprintf("demo-%d-%d", i, j), j, 0).Err(); err != nil {
				t.Fatal(err)
			}
		}
		if err := cl.Set(ctx, fmt.Sprint("ttl-", i), "x", time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
		if i == 2 {
			n, err := cl.DBSize(ctx).Result()
			if err != nil {
				t.Fatal(err)
			}
			before = n
		}
		cl.Close()
	}
	d.interrupt(t)

	d = startDemo(t, bin, data, peerPort, respPort)
	if want := fmt.Sprintf("resumed with %d keys", before); !strings.Contains(d.stdout.String(), want) {
		t.Errorf("second start does not say %q:\n%s", want, d.stdout.String())
	}
	cl := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", respPort+2)})
	defer cl.Close()
	for i := 0; i < 3; i++ {
		for j := 0; j < 20; j++ {
			if v, err := cl.Get(ctx, fmt.Sprintf("demo-%d-%d", i, j)).Int(); err != nil || v != j {
				t.Fatalf("after restart demo-%d-%d = %d, %v", i, j, v, err)
			}
		}
		// The deadline survived (a TTL, not -1 or -2); no bound on how long the
		// restart took.
		if d, err := cl.TTL(ctx, fmt.Sprint("ttl-", i)).Result(); err != nil || d <= 0 || d > time.Hour {
			t.Fatalf("after restart ttl-%d has TTL %v, %v", i, d, err)
		}
	}
	if n, err := cl.DBSize(ctx).Result(); err != nil || n != before {
		t.Fatalf("after restart DBSIZE %d (%v), before %d", n, err, before)
	}
	d.interrupt(t)
}

// infoStats reads INFO stats' command and error-reply counters of the replica at
// respPort.
func infoStats(t *testing.T, respPort int) (commands, errorReplies int64) {
	t.Helper()
	// Protocol 2: go-redis's default HELLO 3 gets an error reply, which would
	// count.
	cl := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", respPort), Protocol: 2})
	defer cl.Close()
	text, err := cl.Info(context.Background(), "stats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		name string
		v    *int64
	}{{"total_commands_processed", &commands}, {"total_error_replies", &errorReplies}} {
		m := regexp.MustCompile(f.name + `:(\d+)`).FindStringSubmatch(text)
		if m == nil {
			t.Fatalf("INFO stats has no %s:\n%s", f.name, text)
		}
		*f.v, _ = strconv.ParseInt(m[1], 10, 64)
	}
	return commands, errorReplies
}
