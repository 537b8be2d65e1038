// Command paxosdemo starts a whole 3-replica cluster in one process on loopback
// (ports 7001-7003 by default, data under ./data/paxosdemo), proposes values in
// several groups through every member, and prints what each member executed. A
// second run on the same data dir replays the log first and goes on from there.
//
//	go run ./cmd/paxosdemo
//	go run ./cmd/paxosdemo -groups 16 -values 200 -data /tmp/demo
package main

import (
	"context"
	"flag"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/node"
	"github.com/multipaxos/engine/statemachine"
	"go.uber.org/zap"
)

// logSM records every executed command: the demo's state machine.
type logSM struct {
	mu       sync.Mutex
	executed []string // "instance:command"
	digest   uint64
}

func (s *logSM) Applied() ids.InstanceID { return 0 }

func (s *logSM) Execute(inst ids.InstanceID, cmds [][]byte) ([][]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := fnv.New64a()
	fmt.Fprint(h, s.digest)
	res := make([][]byte, len(cmds))
	for i, c := range cmds {
		s.executed = append(s.executed, fmt.Sprintf("%d:%s", inst, c))
		h.Write(c)
		res[i] = []byte(fmt.Sprintf("executed at instance %d", inst))
	}
	s.digest = h.Sum64()
	return res, nil
}

func main() {
	groups := flag.Int("groups", 4, "number of Paxos groups")
	values := flag.Int("values", 40, "values to propose (spread over groups and members)")
	dataDir := flag.String("data", filepath.Join("data", "paxosdemo"), "data directory (one subdirectory per replica)")
	basePort := flag.Int("port", 7001, "peer port of replica 1 (replicas 2 and 3 use the next ports)")
	verbose := flag.Bool("v", false, "log engine events to stderr")
	flag.Parse()
	if err := run(*groups, *values, *dataDir, *basePort, *verbose); err != nil {
		fmt.Fprintln(os.Stderr, "paxosdemo:", err)
		os.Exit(1)
	}
}

func run(groups, values int, dataDir string, basePort int, verbose bool) error {
	if groups < 1 || values < 0 {
		return fmt.Errorf("-groups must be >= 1 and -values >= 0")
	}
	logger := zap.NewNop()
	if verbose {
		logger, _ = zap.NewDevelopment()
	}
	members := map[ids.NodeID]string{}
	for i := 1; i <= 3; i++ {
		members[ids.NodeID(i)] = fmt.Sprintf("127.0.0.1:%d", basePort+i-1)
	}
	sms := map[ids.NodeID][]*logSM{}
	var nodes []*node.Node
	defer func() {
		for _, n := range nodes {
			_ = n.Stop()
		}
	}()
	for id := ids.NodeID(1); id <= 3; id++ {
		sms[id] = make([]*logSM, groups)
		smsOf := sms[id]
		n, err := node.Start(node.Options{
			NodeID: id, Members: members, Groups: groups,
			DataDir:       filepath.Join(dataDir, fmt.Sprint("replica", id)),
			StateMachines: func(g ids.GroupID) statemachine.StateMachine { smsOf[g] = &logSM{}; return smsOf[g] },
			Logger:        logger.Named(fmt.Sprint("replica", id)),
		})
		if err != nil {
			return err
		}
		nodes = append(nodes, n)
		fmt.Printf("replica %d listening on %s, data in %s\n", id, members[id], filepath.Join(dataDir, fmt.Sprint("replica", id)))
	}
	replayed := 0
	for _, s := range sms[1] {
		replayed += len(s.executed)
	}
	if replayed > 0 {
		fmt.Printf("replayed %d commands from the log of an earlier run\n", replayed)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	stamp := time.Now().Format("150405")
	var wg sync.WaitGroup
	errs := make(chan error, values)
	start := time.Now()
	for i := 0; i < values; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			n := nodes[i%3]
			g := ids.GroupID(i % groups)
			cmd := fmt.Sprintf("v%d@%s-via-%d", i, stamp, n.ID())
			if _, err := n.Propose(ctx, g, []byte(cmd)); err != nil {
				errs <- fmt.Errorf("propose %q in group %d: %w", cmd, g, err)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return err
	}
	fmt.Printf("%d values chosen and executed in %v\n", values, time.Since(start).Round(time.Millisecond))

	// Wait until the other members have executed what the proposers did.
	deadline := time.Now().Add(10 * time.Second)
	for !agree(sms, groups) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	for g := 0; g < groups; g++ {
		fmt.Printf("\ngroup %d\n", g)
		for id := ids.NodeID(1); id <= 3; id++ {
			s := sms[id][g]
			s.mu.Lock()
			tail := s.executed
			if len(tail) > 5 {
				tail = tail[len(tail)-5:]
			}
			fmt.Printf("  replica %d executed %3d commands, digest %016x, last: %s\n", id, len(s.executed), s.digest, strings.Join(tail, " "))
			s.mu.Unlock()
		}
	}
	if !agree(sms, groups) {
		return fmt.Errorf("replicas did not converge within 10 s")
	}
	st := nodes[0].Stats().Log
	fmt.Printf("\nall replicas agree. replica 1: %d log writes in %d fsyncs\n", st.Writes, st.Syncs)
	return nil
}

func agree(sms map[ids.NodeID][]*logSM, groups int) bool {
	for g := 0; g < groups; g++ {
		var d []uint64
		for id := ids.NodeID(1); id <= 3; id++ {
			s := sms[id][g]
			s.mu.Lock()
			d = append(d, s.digest)
			s.mu.Unlock()
		}
		if d[0] != d[1] || d[1] != d[2] {
			return false
		}
	}
	return true
}
