package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/kv"
)

func runDemo(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlagSet("demo", `Run a whole 3-replica shardkv cluster in this process on loopback, until
interrupted (Ctrl-C). Connect with redis-cli -p 6381 (or 6382, 6383: every replica
takes every command). A second start on the same data directory resumes with the
data. The replicas authenticate each other with a cluster secret made for each run.`, stdout)
	data := fs.String("data", filepath.Join("data", "demo"), "data `DIR`; replica N keeps its log and store in DIR/replicaN")
	groups := fs.Int("groups", 64, "number of Paxos groups; fixed when the data directory is created")
	peerPort := fs.Int("peer-port", 7001, "peer `PORT` of replica 1; replicas 2 and 3 use the next two")
	respPort := fs.Int("resp-port", 6381, "RESP `PORT` of replica 1; replicas 2 and 3 use the next two")
	pass := fs.String("requirepass", "", "`PASSWORD` clients must give with AUTH; empty: none")
	level := levelFlag(zapcore.WarnLevel)
	fs.Var(&level, "log-level", "`LEVEL` of the logs on stderr: debug, info, warn or error")
	var metricsAddr addrFlag
	fs.Var(&metricsAddr, "metrics", "serve the three replicas' Prometheus metrics (label replica=\"N\") on\nhttp://`HOST:PORT`/metrics; empty: none")
	tune := addTuningFlags(fs, false)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkGroups(*groups); err != nil {
		return err
	}
	if err := tune.check(); err != nil {
		return err
	}
	for _, p := range []struct {
		name string
		v    int
	}{{"--peer-port", *peerPort}, {"--resp-port", *respPort}} {
		if p.v < 1 || p.v > 65533 {
			return fmt.Errorf("%w: %s is %d, want 1 .. 65533", errUsage, p.name, p.v)
		}
	}
	lg, err := newLogger(level)
	if err != nil {
		return err
	}
	defer func() { _ = lg.Sync() }()

	_, statErr := os.Stat(filepath.Join(*data, "replica1", "kv"))
	resumed := statErr == nil
	members := map[ids.NodeID]string{}
	for i := 1; i <= 3; i++ {
		members[ids.NodeID(i)] = fmt.Sprintf("127.0.0.1:%d", *peerPort+i-1)
	}
	// The replicas share this process, so a secret made for this run is enough:
	// peer traffic is authenticated like a real cluster's, and nothing to keep.
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return fmt.Errorf("cluster secret: %w", err)
	}
	var replicas []*replica
	stopAll := func() error {
		var errs []error
		for _, r := range replicas {
			if err := r.close(); err != nil {
				errs = append(errs, fmt.Errorf("replica %d: %w", r.cfg.ID, err))
			}
		}
		return errors.Join(errs...)
	}
	for i := 1; i <= 3; i++ {
		r, err := startReplica(replicaConfig{
			ID: ids.NodeID(i), ClusterID: 1, ClusterSecret: secret, Members: members,
			RESP:    fmt.Sprintf("127.0.0.1:%d", *respPort+i-1),
			DataDir: filepath.Join(*data, fmt.Sprint("replica", i)), Groups: *groups, Password: *pass,
			Timeout: 5 * time.Second, Logger: lg, StoreMemory: 32 << 20, Tuning: tune,
		})
		if err != nil {
			return errors.Join(fmt.Errorf("replica %d: %w", i, err), stopAll())
		}
		replicas = append(replicas, r)
	}

	if metricsAddr != "" {
		m, err := startMetrics(string(metricsAddr))
		for _, r := range replicas {
			if err == nil {
				err = m.register(r)
			}
		}
		if err != nil {
			return errors.Join(err, stopAll())
		}
		defer m.close()
		fmt.Fprintf(stdout, "metrics on http://%s/metrics\n", m.Addr())
	}

	state := "new data directory"
	if resumed {
		// A local count is enough for a greeting; it replays nothing.
		if n, err := replicas[0].client.ReadStale(kv.Command{Op: kv.OpDBSize}); err == nil {
			state = fmt.Sprintf("resumed with %d keys", n.Int)
		} else {
			state = "resumed"
		}
	}
	fmt.Fprintf(stdout, "shardkv demo: 3 replicas, %d groups, data in %s (%s); peers authenticated with a secret made for this run\n", *groups, *data, state)
	for _, r := range replicas {
		fmt.Fprintf(stdout, "  replica %d: RESP %s, peers %s, data %s\n", r.cfg.ID, r.resp.Addr(), members[r.cfg.ID], r.cfg.DataDir)
	}
	fmt.Fprintf(stdout, "\nConnect with:  redis-cli -p %d    (or -p %d, -p %d: every replica takes every command)\n", *respPort, *respPort+1, *respPort+2)
	fmt.Fprintf(stdout, "Try:           SET greeting hello EX 60 / GET greeting / INCR visits / INFO replication\n")
	fmt.Fprintf(stdout, "Press Ctrl-C to stop; run the same command again to resume with the data.\n")

	failed := waitForStop(ctx, lg, replicaNodes(replicas)...) // nil on a signal; a fail-stop exits with status 1
	fmt.Fprintln(stdout, "\nstopping...")
	if err := stopAll(); err != nil {
		return errors.Join(failed, err)
	}
	if failed != nil {
		return failed
	}
	fmt.Fprintln(stdout, "stopped")
	return nil
}
