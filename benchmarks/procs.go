package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime/pprof"
	"time"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/node"
)

// -procs mode: the parent re-executes its own binary three times. A child finds
// its job in the environment variable childEnv (JSON childSpec), starts its node,
// runs the clients of the groups it leads (proposerFor), and obeys one-line
// commands on stdin, answering each with one JSON line on stdout. So every
// proposal goes through the real TCP transport between processes, and the parent
// only adds up the children's counts and latency histograms.
const childEnv = "PAXOSBENCH_CHILD"

type childSpec struct {
	Cluster    clusterSpec
	NodeID     ids.NodeID
	Clients    int
	Payload    int
	TimeoutNs  int64
	CPUProfile string // write this node's CPU profile here ("" = none)
}

type childCmd struct {
	Cmd        string // setup, start, measure, stop, rss, exit
	DeadlineNs int64  // setup
}

type childReply struct {
	OK   bool
	Err  string   `json:",omitempty"`
	Part *partial `json:",omitempty"`
	RSS  uint64   `json:",omitempty"`
}

// childMain runs a -procs child; it returns the process exit code.
func childMain(specJSON string) int {
	var spec childSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		fmt.Fprintln(os.Stderr, "paxosbench child: bad spec:", err)
		return 2
	}
	if spec.CPUProfile != "" {
		f, err := os.Create(spec.CPUProfile)
		if err == nil {
			if err := pprof.StartCPUProfile(f); err == nil {
				defer pprof.StopCPUProfile()
			}
			defer f.Close()
		}
	}
	out := json.NewEncoder(os.Stdout)
	n, err := startNode(spec.Cluster, spec.NodeID)
	if err != nil {
		_ = out.Encode(childReply{Err: err.Error()})
		return 1
	}
	m := newLocalMember(map[ids.NodeID]*node.Node{spec.NodeID: n}, spec.Cluster.Groups, spec.Clients, spec.Payload, time.Duration(spec.TimeoutNs))
	defer m.close()
	_ = out.Encode(childReply{OK: true})
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 64<<10), 1<<20)
	for in.Scan() { // EOF (the parent died or is done) ends the child
		var c childCmd
		if err := json.Unmarshal(in.Bytes(), &c); err != nil {
			_ = out.Encode(childReply{Err: "bad command: " + err.Error()})
			continue
		}
		var r childReply
		switch c.Cmd {
		case "setup":
			err = m.setup(time.Duration(c.DeadlineNs))
		case "start":
			err = m.start()
		case "measure":
			err = m.measure()
		case "stop":
			var p partial
			p, err = m.stop()
			r.Part = &p
		case "rss":
			r.RSS = rssBytes()
		case "exit":
			_ = out.Encode(childReply{OK: true})
			return 0
		default:
			err = fmt.Errorf("unknown command %q", c.Cmd)
		}
		r.OK = err == nil
		if err != nil {
			r.Err = err.Error()
		}
		_ = out.Encode(r)
	}
	return 0
}

// procMember is the parent's handle on one child.
type procMember struct {
	id   ids.NodeID
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *json.Decoder
	dead chan struct{}
}

func startProcMember(spec childSpec) (*procMember, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), childEnv+"="+string(b))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &procMember{id: spec.NodeID, cmd: cmd, in: in, out: json.NewDecoder(stdout), dead: make(chan struct{})}
	var r childReply
	if err := p.out.Decode(&r); err != nil || !r.OK {
		p.kill()
		return nil, fmt.Errorf("child %d did not start: %v %s", spec.NodeID, err, r.Err)
	}
	return p, nil
}

func (p *procMember) call(c childCmd) (childReply, error) {
	b, _ := json.Marshal(c)
	if _, err := p.in.Write(append(b, '\n')); err != nil {
		return childReply{}, fmt.Errorf("child %d: %w", p.id, err)
	}
	var r childReply
	if err := p.out.Decode(&r); err != nil {
		return childReply{}, fmt.Errorf("child %d: %s: %w", p.id, c.Cmd, err)
	}
	if !r.OK {
		return r, fmt.Errorf("child %d: %s: %s", p.id, c.Cmd, r.Err)
	}
	return r, nil
}

func (p *procMember) setup(deadline time.Duration) error {
	_, err := p.call(childCmd{Cmd: "setup", DeadlineNs: int64(deadline)})
	return err
}
func (p *procMember) start() error   { _, err := p.call(childCmd{Cmd: "start"}); return err }
func (p *procMember) measure() error { _, err := p.call(childCmd{Cmd: "measure"}); return err }
func (p *procMember) stop() (partial, error) {
	r, err := p.call(childCmd{Cmd: "stop"})
	if err != nil {
		return partial{}, err
	}
	if r.Part == nil {
		return partial{}, errors.New("child sent no result")
	}
	return *r.Part, nil
}
func (p *procMember) rss() (uint64, error) {
	r, err := p.call(childCmd{Cmd: "rss"})
	return r.RSS, err
}

// close asks the child to stop its node and exit, and kills it if it has not
// within 30 s.
func (p *procMember) close() error {
	_, err := p.call(childCmd{Cmd: "exit"})
	p.in.Close()
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case werr := <-done:
		return errors.Join(err, werr)
	case <-time.After(30 * time.Second):
		p.kill()
		return fmt.Errorf("child %d did not exit; killed", p.id)
	}
}

func (p *procMember) kill() {
	_ = p.cmd.Process.Kill()
	_, _ = p.cmd.Process.Wait()
}
