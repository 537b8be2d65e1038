package kv

import (
	"context"
	"fmt"
	"sync"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/node"
)

// Direct is an Engine without replication: each Propose executes its command at
// once as the next instance of the group, on the store. It exists for tests of the
// command layer and the RESP front end that need no Paxos; it gives none of the
// engine's durability.
type Direct struct {
	store *Store
	mu    []sync.Mutex // per group: the engine executes a group serially
}

// NewDirect returns a Direct engine over store.
func NewDirect(store *Store) *Direct {
	return &Direct{store: store, mu: make([]sync.Mutex, store.Groups())}
}

// Groups implements Engine.
func (d *Direct) Groups() int { return d.store.Groups() }

// Propose implements Engine.
func (d *Direct) Propose(ctx context.Context, g ids.GroupID, cmd []byte) (node.Result, error) {
	if int(g) >= len(d.mu) {
		return node.Result{}, fmt.Errorf("%w: %d", node.ErrUnknownGroup, g)
	}
	if err := ctx.Err(); err != nil {
		return node.Result{}, fmt.Errorf("%w: %w", node.ErrCanceled, err)
	}
	d.mu[g].Lock()
	defer d.mu[g].Unlock()
	sm := d.store.Group(g)
	inst := sm.Applied()
	res, err := sm.Execute(inst, [][]byte{cmd})
	if err != nil {
		return node.Result{}, err
	}
	return node.Result{Instance: inst, Value: res[0]}, nil
}

// LeaseRead implements Reads: a Direct engine is the master of every group.
func (d *Direct) LeaseRead(ctx context.Context, g ids.GroupID, fn func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu[g].Lock()
	defer d.mu[g].Unlock()
	return fn()
}

// ReadBarrier implements Reads: every command is applied when Propose returns.
func (d *Direct) ReadBarrier(ctx context.Context, g ids.GroupID) error { return ctx.Err() }
