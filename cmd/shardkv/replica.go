package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/kv"
	"github.com/multipaxos/engine/kv/server"
	"github.com/multipaxos/engine/node"
)

// replicaConfig is one replica: an engine node, its KV store and its RESP server.
type replicaConfig struct {
	ID        ids.NodeID
	ClusterID uint64
	// ClusterSecret authenticates peers (node.Options.ClusterSecret); empty only
	// on loopback.
	ClusterSecret []byte
	Members       map[ids.NodeID]string
	Listen        string // peer listen address; "" = Members[ID]
	RESP          string
	DataDir       string
	Groups        int
	Password      string
	ReadMode      kv.ReadMode
	Timeout       time.Duration
	Logger        *zap.Logger
	StoreMemory   int64   // Pebble cache and memtable budget of the KV store; 0 = defaults
	Tuning        *tuning // engine tuning flags; nil = the engine's defaults
	// InitialVoters are every group's voters when its log is new
	// (node.Options.InitialMembers); empty = every Members ID.
	InitialVoters []ids.NodeID
}

type replica struct {
	cfg    replicaConfig
	store  *kv.Store
	node   *node.Node
	client *kv.Client
	resp   *server.Server
}

// startReplica opens the store before the node: the node replays the log into
// the state machines while it starts.
func startReplica(cfg replicaConfig) (*replica, error) {
	lg := cfg.Logger.With(zap.Uint64("replica", uint64(cfg.ID)))
	opts := kv.Options{Groups: cfg.Groups, Logger: lg}
	if cfg.StoreMemory > 0 {
		opts.CacheSize = cfg.StoreMemory / 2
		opts.MemTableSize = uint64(cfg.StoreMemory / 4)
	}
	store, err := kv.Open(filepath.Join(cfg.DataDir, "kv"), opts)
	if err != nil {
		return nil, err
	}
	nopts := node.Options{
		NodeID: cfg.ID, ClusterID: cfg.ClusterID, ClusterSecret: cfg.ClusterSecret, Addr: cfg.Listen, Members: cfg.Members,
		Groups: cfg.Groups, DataDir: cfg.DataDir, StateMachines: store.StateMachines, Logger: lg,
	}
	if cfg.Tuning != nil {
		cfg.Tuning.apply(&nopts)
	}
	if voters := slices.Clone(cfg.InitialVoters); len(voters) > 0 {
		nopts.InitialMembers = func(ids.GroupID) ([]ids.NodeID, []ids.NodeID) { return slices.Clone(voters), nil }
	}
	n, err := node.Start(nopts)
	if err != nil {
		_ = store.Close()
		if errors.Is(err, node.ErrInvalidOptions) {
			err = fmt.Errorf("%w: %v", errUsage, err) // a flag the engine refuses: exit 2
		}
		return nil, err
	}
	r := &replica{cfg: cfg, store: store, node: n}
	r.client, err = kv.NewClient(kv.ClientOptions{Engine: n, Store: store, Logger: lg})
	if err == nil {
		r.resp, err = server.Start(server.Config{Addr: cfg.RESP, Client: r.client, Node: n, Admin: n,
			Password: cfg.Password, ReadMode: cfg.ReadMode, Timeout: cfg.Timeout, Logger: lg})
	}
	if err != nil {
		_ = n.Stop()
		_ = store.Close()
		return nil, err
	}
	return r, nil
}

// close stops in dependency order: clients first (their commands finish or fail),
// then the engine (no more Execute), then the store.
func (r *replica) close() error {
	var errs []error
	if err := r.resp.Close(); err != nil {
		errs = append(errs, fmt.Errorf("RESP server: %w", err))
	}
	if err := r.node.Stop(); err != nil {
		errs = append(errs, fmt.Errorf("node: %w", err))
	}
	if err := r.store.Close(); err != nil {
		errs = append(errs, fmt.Errorf("store: %w", err))
	}
	return errors.Join(errs...)
}
