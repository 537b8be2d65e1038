package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/kv"
)

func runServe(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlagSet("serve", `Run one replica of a shardkv cluster: an engine node that takes part in every
Paxos group, its KV store, and a RESP (Redis protocol) server. Start one per
machine with the same --peers and --groups everywhere; any replica takes any
command.`, stdout)
	id := fs.Uint64("id", 0, "this replica's node ID, one of the IDs in --peers (required)")
	var peers peersFlag
	fs.Var(&peers, "peers", "every replica of the cluster, this one included, as `ID=HOST:PORT,...`:\nthe engine's peer addresses (required)")
	var listen addrFlag
	fs.Var(&listen, "listen", "peer listen `HOST:PORT` when it differs from this replica's --peers entry\n(e.g. 0.0.0.0:7001 behind address translation); default: the --peers entry")
	resp := addrFlag("127.0.0.1:6379")
	fs.Var(&resp, "resp", "RESP listen `HOST:PORT`; loopback unless another interface is named on purpose:\nRESP is plain text, so put it behind a firewall and --requirepass")
	data := fs.String("data", "", "data `DIR`: the engine's log (DIR/log) and the KV store (DIR/kv) (required)")
	groups := fs.Int("groups", 64, "number of Paxos groups the keys are spread over; fixed when the data\ndirectory is created, and the same on every replica")
	pass := fs.String("requirepass", "", "`PASSWORD` clients must give with AUTH (or HELLO ... AUTH); empty: none.\nPrefer the environment variable: a flag shows in the process list")
	clusterID := fs.Uint64("cluster-id", 1, "cluster ID stamped on every peer frame; peers with another are refused")
	secret := fs.String("cluster-secret", "", "`SECRET` that authenticates peers: the same on every replica, at least 16 bytes\n(e.g. the output of openssl rand -hex 32); a peer that cannot prove it holds it is\nrefused. Required unless every --peers address is on loopback. Prefer the\nenvironment variable: a flag shows in the process list")
	readMode := readModeFlag(kv.ReadLinearizable)
	fs.Var(&readMode, "read-mode", "`MODE` of reads on new connections: linearizable (lease read on the group's master, else\nthrough the log via the master), follower (read barrier, then read here;\nlinearizable) or stale (this replica's state, may miss acknowledged writes);\na client changes its own with READMODE")
	timeout := fs.Duration("timeout", 5*time.Second, "`DURATION` (e.g. 5s, 500ms) a command waits for the engine before it fails\n(TRYAGAIN: not applied; UNKNOWN: may have been applied)")
	level := levelFlag(zapcore.InfoLevel)
	fs.Var(&level, "log-level", "`LEVEL` of the logs on stderr: debug, info, warn or error")
	var metricsAddr addrFlag
	fs.Var(&metricsAddr, "metrics", "serve Prometheus metrics on http://`HOST:PORT`/metrics (the engine's, Go's and\nthe process's); empty: none. Loopback unless scraped from elsewhere")
	var initialVoters idsFlag
	fs.Var(&initialVoters, "initial-voters", "every group's voters (`ID,...`) when its log is new; default: every --peers ID.\nThe same on every replica for the life of the cluster: set it to the original\n--peers IDs before adding a replica to --peers (it may name nodes since dropped\nfrom --peers)")
	tune := addTuningFlags(fs, true)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch {
	case *id == 0:
		return fmt.Errorf("%w: --id is required (a positive integer)", errUsage)
	case len(peers) == 0:
		return fmt.Errorf("%w: --peers is required", errUsage)
	case peers[ids.NodeID(*id)] == "":
		return fmt.Errorf("%w: --id %d is not in --peers %s", errUsage, *id, peers.String())
	case *data == "":
		return fmt.Errorf("%w: --data is required", errUsage)
	case *clusterID == 0:
		return fmt.Errorf("%w: --cluster-id must be positive", errUsage)
	case *timeout <= 0:
		return fmt.Errorf("%w: --timeout must be positive", errUsage)
	}
	if err := checkClusterSecret(*secret, peers); err != nil {
		return err
	}
	if err := checkGroups(*groups); err != nil {
		return err
	}
	if err := tune.check(); err != nil {
		return err
	}
	lg, err := newLogger(level)
	if err != nil {
		return err
	}
	defer func() { _ = lg.Sync() }()

	r, err := startReplica(replicaConfig{
		ID: ids.NodeID(*id), ClusterID: *clusterID, Members: peers, Listen: string(listen),
		ClusterSecret: []byte(*secret),
		RESP:          string(resp), DataDir: filepath.Clean(*data), Groups: *groups, Password: *pass,
		ReadMode: kv.ReadMode(readMode), Timeout: *timeout, Logger: lg,
		Tuning: tune, InitialVoters: initialVoters,
	})
	if err != nil {
		return err
	}
	if metricsAddr != "" {
		m, err := startMetrics(string(metricsAddr))
		if err == nil {
			err = m.register(r)
		}
		if err != nil {
			return errors.Join(err, r.close())
		}
		defer m.close()
		fmt.Fprintf(stdout, "shardkv replica %d: metrics on http://%s/metrics\n", *id, m.Addr())
	}
	fmt.Fprintf(stdout, "shardkv replica %d: RESP on %s, peers %s, %d groups, data in %s\n",
		*id, r.resp.Addr(), peers.String(), *groups, *data)
	failed := waitForStop(ctx, lg, r.node) // nil on a signal; a fail-stop exits with status 1
	fmt.Fprintf(stdout, "shardkv replica %d: stopping\n", *id)
	if err := r.close(); err != nil {
		return errors.Join(failed, err)
	}
	if failed != nil {
		return failed
	}
	fmt.Fprintf(stdout, "shardkv replica %d: stopped\n", *id)
	return nil
}
