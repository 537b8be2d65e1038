package main

import (
	"context"
	"fmt"

	"go.uber.org/zap"

	"github.com/multipaxos/engine/ids"
)

// failStopper is the part of a node.Node that waitForStop watches.
type failStopper interface {
	ID() ids.NodeID
	Failed() <-chan struct{}
	Err() error
}

// replicaNodes returns the replicas' engine nodes.
func replicaNodes(rs []*replica) []failStopper {
	out := make([]failStopper, len(rs))
	for i, r := range rs {
		out[i] = r.node
	}
	return out
}

// waitForStop blocks until ctx ends (SIGINT or SIGTERM: it returns nil) or one
// of the nodes fail-stops on a storage failure. Such a node refuses every
// command until the process restarts, so rather than run on, shardkv logs it
// at error level and returns an error naming the replica: the caller shuts
// down and the process exits with status 1, for its supervisor to restart it
// (which recovers from the WAL) or an operator to replace the disk.
func waitForStop(ctx context.Context, lg *zap.Logger, nodes ...failStopper) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	failed := make(chan failStopper, len(nodes))
	for _, n := range nodes {
		go func() {
			select {
			case <-ctx.Done():
			case <-n.Failed():
				failed <- n
			}
		}()
	}
	select {
	case <-ctx.Done():
		return nil
	case n := <-failed:
		cause := n.Err()
		lg.Error("replica fail-stopped on a storage failure; shutting down to exit with status 1 (restart it, or replace its disk)",
			zap.Uint64("replica", uint64(n.ID())), zap.Error(cause))
		return fmt.Errorf("replica %d fail-stopped: %w", n.ID(), cause)
	}
}
