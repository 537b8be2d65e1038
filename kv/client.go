package kv

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/node"
)

// Engine is what the Client needs from the replication engine; *node.Node
// implements it, and Direct does for tests.
type Engine interface {
	// Propose has node.Node.Propose's contract: it returns once cmd is chosen and
	// executed on this node, with the state machine's result bytes.
	Propose(ctx context.Context, g ids.GroupID, cmd []byte) (node.Result, error)
	Groups() int
}

// Reads is the engine's read API; *node.Node implements it. A Client whose
// Engine also implements Reads (and that has a Store) serves linearizable reads
// locally on the master and follower reads after a barrier.
type Reads interface {
	LeaseRead(ctx context.Context, g ids.GroupID, fn func() error) error
	ReadBarrier(ctx context.Context, g ids.GroupID) error
}

// ReadMode says how a read is made linearizable, or not.
type ReadMode uint8

// Read modes.
const (
	// ReadLinearizable (the default): a lease read on the master, else through
	// the log via the master.
	ReadLinearizable ReadMode = iota
	// ReadFollower: a read barrier (a quorum round) and then a local read on this
	// member; linearizable, and spreads reads over members.
	ReadFollower
	// ReadStale: this member's state as it is, no coordination; may miss
	// acknowledged writes. Only for callers that ask for it by name.
	ReadStale
)

// ParseReadMode parses a ReadMode's name.
func ParseReadMode(s string) (ReadMode, error) {
	switch s {
	case "linearizable":
		return ReadLinearizable, nil
	case "follower":
		return ReadFollower, nil
	case "stale":
		return ReadStale, nil
	}
	return 0, fmt.Errorf("%w: read mode %q (want linearizable, follower or stale)", ErrInvalidOptions, s)
}

func (m ReadMode) String() string {
	switch m {
	case ReadLinearizable:
		return "linearizable"
	case ReadFollower:
		return "follower"
	case ReadStale:
		return "stale"
	}
	return fmt.Sprintf("ReadMode(%d)", uint8(m))
}

// ErrPartial wraps the error of a multi-group write (DEL, MSET over keys of several
// groups) when some groups' parts were applied and others failed or may not have
// been: each group's part is atomic, the whole is not.
var ErrPartial = errors.New("kv: multi-group command partly applied")

// ClientOptions configure a Client.
type ClientOptions struct {
	// Engine carries commands through the log. Required.
	Engine Engine
	// Store is this node's store: lease reads, follower reads and stale reads read
	// it locally. Without it every read goes through the log.
	Store *Store
	// Clock stamps commands (Command.Now). Default time.Now.
	Clock func() time.Time
	// Logger; nil = no-op.
	Logger *zap.Logger
}

// Client turns KV operations into proposals on the right groups. It is safe for
// concurrent use.
type Client struct {
	eng    Engine
	reads  Reads // nil: reads go through the log
	store  *Store
	clock  func() time.Time
	log    *zap.Logger
	groups int
}

// NewClient returns a Client over opts.Engine.
func NewClient(opts ClientOptions) (*Client, error) {
	if opts.Engine == nil {
		return nil, fmt.Errorf("%w: ClientOptions.Engine is nil", ErrInvalidOptions)
	}
	if opts.Store != nil && opts.Store.Groups() != opts.Engine.Groups() {
		return nil, fmt.Errorf("%w: store has %d groups, engine %d", ErrInvalidOptions, opts.Store.Groups(), opts.Engine.Groups())
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	c := &Client{eng: opts.Engine, store: opts.Store, clock: opts.Clock, log: opts.Logger.Named("kv"), groups: opts.Engine.Groups()}
	c.reads, _ = opts.Engine.(Reads)
	return c, nil
}

// Groups is the number of groups keys are spread over.
func (c *Client) Groups() int { return c.groups }

// Now is the clock commands are stamped with, in unix ms. Callers turn relative
// expiries into deadlines with it (Command.Int of SET and EXPIRE).
func (c *Client) Now() int64 { return c.clock().UnixMilli() }

// Do executes cmd: a single-key command in its key's group, a multi-key command
// split into one command per group (run in parallel; each part atomic), DBSIZE in
// every group. A logical failure is a Reply of KindErr; an error means the command
// failed or its outcome is unknown (errors.Is with node.ErrUnknownOutcome,
// node.ErrCanceled, node.ErrBusy, ...; ErrPartial for a multi-group write that
// got partly through).
func (c *Client) Do(ctx context.Context, cmd Command) (Reply, error) {
	return c.DoMode(ctx, cmd, ReadLinearizable)
}

// DoMode is Do with the read mode for a read command (writes ignore it).
func (c *Client) DoMode(ctx context.Context, cmd Command, mode ReadMode) (Reply, error) {
	if mode == ReadStale && cmd.Op.IsRead() {
		return c.ReadStale(cmd)
	}
	if cmd.Now == 0 {
		cmd.Now = c.Now()
	}
	if err := cmd.validate(); err != nil {
		return Reply{}, err
	}
	switch {
	case cmd.Op == OpDBSize:
		parts := make([]part, c.groups)
		for g := range parts {
			parts[g] = part{g: ids.GroupID(g), cmd: cmd}
		}
		return c.fanOut(ctx, cmd, parts, mode)
	case cmd.Op.MultiKey():
		parts := c.split(cmd)
		if len(parts) == 1 {
			return c.exec(ctx, parts[0].g, &parts[0].cmd, mode)
		}
		return c.fanOut(ctx, cmd, parts, mode)
	}
	return c.exec(ctx, GroupOf(cmd.Keys[0], c.groups), &cmd, mode)
}

// part is one group's share of a multi-group command; pos maps its keys back to
// the positions in the original command.
type part struct {
	g   ids.GroupID
	cmd Command
	pos []int
}

func (c *Client) split(cmd Command) []part {
	idx := map[ids.GroupID]int{}
	var parts []part
	for i, k := range cmd.Keys {
		g := GroupOf(k, c.groups)
		j, ok := idx[g]
		if !ok {
			j = len(parts)
			idx[g] = j
			parts = append(parts, part{g: g, cmd: Command{Op: cmd.Op, Now: cmd.Now, Int: cmd.Int, Flags: cmd.Flags}})
		}
		p := &parts[j]
		p.cmd.Keys = append(p.cmd.Keys, k)
		if cmd.Op == OpMSet {
			p.cmd.Values = append(p.cmd.Values, cmd.Values[i])
		}
		p.pos = append(p.pos, i)
	}
	return parts
}

// fanOut runs the parts in parallel and merges their replies.
func (c *Client) fanOut(ctx context.Context, cmd Command, parts []part, mode ReadMode) (Reply, error) {
	replies := make([]Reply, len(parts))
	errs := make([]error, len(parts))
	var wg sync.WaitGroup
	for i := range parts {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			replies[i], errs[i] = c.exec(ctx, parts[i].g, &parts[i].cmd, mode)
		}(i)
	}
	wg.Wait()
	var failed []error
	for _, err := range errs {
		if err != nil {
			failed = append(failed, err)
		}
	}
	if len(failed) > 0 {
		err := failed[0]
		if !cmd.Op.IsRead() && len(failed) < len(parts) {
			err = fmt.Errorf("%w (%d of %d groups failed): %w", ErrPartial, len(failed), len(parts), err)
		}
		return Reply{}, err
	}
	switch cmd.Op {
	case OpDel, OpExists, OpDBSize:
		var n int64
		for _, r := range replies {
			if r.Kind == KindErr {
				return r, nil
			}
			n += r.Int
		}
		return replyInt(n), nil
	case OpMGet:
		out := make([]Reply, len(cmd.Keys))
		for i, r := range replies {
			if r.Kind != KindArray || len(r.Array) != len(parts[i].pos) {
				return r, nil // an error reply, passed on
			}
			for j, pos := range parts[i].pos {
				out[pos] = r.Array[j]
			}
		}
		return replyArr(out), nil
	}
	for _, r := range replies {
		if r.Kind == KindErr {
			return r, nil
		}
	}
	return replyOK, nil
}

// exec runs one single-group command.
func (c *Client) exec(ctx context.Context, g ids.GroupID, cmd *Command, mode ReadMode) (Reply, error) {
	b, err := EncodeCommand(cmd)
	if err != nil {
		return Reply{}, err
	}
	if cmd.Op.IsRead() {
		if mode == ReadFollower {
			return c.readFollower(ctx, g, cmd, b)
		}
		return c.readLinearizable(ctx, g, cmd, b)
	}
	return c.propose(ctx, g, b)
}

// readLinearizable evaluates a read command at a linearizable point of group g.
//
// On the group's master, while its lease holds, the read runs locally inside
// node.LeaseRead (after the master applied everything it knows chosen): no network
// round, no fsync. On any other member (LeaseRead says ErrNotMaster) the read goes
// through the log as a command, which the engine forwards to the master; its
// result is what Execute computed at the read's position in the log. An engine
// without lease reads (Direct in tests, or no Store) always takes the log path.
func (c *Client) readLinearizable(ctx context.Context, g ids.GroupID, cmd *Command, encoded []byte) (Reply, error) {
	if c.reads != nil && c.store != nil {
		var r Reply
		var readErr error
		err := c.reads.LeaseRead(ctx, g, func() error {
			r, readErr = c.store.ReadLocal(g, *cmd)
			return readErr
		})
		switch {
		case err == nil:
			return r, nil
		case readErr != nil:
			return Reply{}, readErr
		case !errors.Is(err, node.ErrNotMaster) && !errors.Is(err, node.ErrNoMaster):
			return Reply{}, readError(err)
		}
	}
	return c.propose(ctx, g, encoded)
}

// readFollower evaluates a read on this member after a read barrier: linearizable
// without the master's lease (a quorum round, no clock assumption), served by any
// member.
func (c *Client) readFollower(ctx context.Context, g ids.GroupID, cmd *Command, encoded []byte) (Reply, error) {
	if c.reads == nil || c.store == nil {
		return c.propose(ctx, g, encoded)
	}
	if err := c.reads.ReadBarrier(ctx, g); err != nil {
		return Reply{}, readError(err)
	}
	return c.store.ReadLocal(g, *cmd)
}

// readError gives a read that ended with its context the engine's ErrCanceled, so
// callers classify it like a proposal that was never made: a read has no outcome
// to be unsure about.
func readError(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		if !errors.Is(err, node.ErrCanceled) && !errors.Is(err, node.ErrUnknownOutcome) {
			return fmt.Errorf("%w: %w", node.ErrCanceled, err)
		}
	}
	return err
}

func (c *Client) propose(ctx context.Context, g ids.GroupID, encoded []byte) (Reply, error) {
	res, err := c.eng.Propose(ctx, g, encoded)
	if err != nil {
		return Reply{}, err
	}
	return DecodeReply(res.Value)
}

// ReadStale evaluates a read on this node's own state without any coordination.
// It may miss acknowledged writes; only callers that asked for stale reads by name
// may use it.
func (c *Client) ReadStale(cmd Command) (Reply, error) {
	if c.store == nil {
		return Reply{}, fmt.Errorf("%w: no local store", ErrInvalidOptions)
	}
	if cmd.Now == 0 {
		cmd.Now = c.Now()
	}
	if cmd.Op == OpDBSize {
		var n int64
		for g := 0; g < c.groups; g++ {
			r, err := c.store.ReadLocal(ids.GroupID(g), cmd)
			if err != nil {
				return Reply{}, err
			}
			n += r.Int
		}
		return replyInt(n), nil
	}
	if err := cmd.validate(); err != nil {
		return Reply{}, err
	}
	if cmd.Op.MultiKey() {
		parts := c.split(cmd)
		out := make([]Reply, len(cmd.Keys))
		var n int64
		for _, p := range parts {
			r, err := c.store.ReadLocal(p.g, p.cmd)
			if err != nil {
				return Reply{}, err
			}
			n += r.Int
			for j, pos := range p.pos {
				if r.Kind == KindArray {
					out[pos] = r.Array[j]
				}
			}
		}
		if cmd.Op == OpMGet {
			return replyArr(out), nil
		}
		return replyInt(n), nil
	}
	return c.store.ReadLocal(GroupOf(cmd.Keys[0], c.groups), cmd)
}

// The typed API, for programs that embed shardkv rather than speak RESP.

// Get returns key's value and whether it exists.
func (c *Client) Get(ctx context.Context, key []byte) ([]byte, bool, error) {
	r, err := c.Do(ctx, Command{Op: OpGet, Keys: [][]byte{key}})
	if err != nil {
		return nil, false, err
	}
	return r.Bulk, r.Kind == KindBulk, r.AsError()
}

// Set sets key to value; ttl > 0 makes it expire ttl from now (rounded down to ms).
func (c *Client) Set(ctx context.Context, key, value []byte, ttl time.Duration) error {
	cmd := Command{Op: OpSet, Now: c.Now(), Keys: [][]byte{key}, Values: [][]byte{value}}
	if ttl > 0 {
		cmd.Int = cmd.Now + max(1, ttl.Milliseconds())
	}
	r, err := c.Do(ctx, cmd)
	if err != nil {
		return err
	}
	return r.AsError()
}

// IncrBy adds delta to key's integer value (absent = 0) and returns the result.
func (c *Client) IncrBy(ctx context.Context, key []byte, delta int64) (int64, error) {
	r, err := c.Do(ctx, Command{Op: OpIncrBy, Keys: [][]byte{key}, Int: delta})
	if err != nil {
		return 0, err
	}
	return r.Int, r.AsError()
}

// Del deletes keys and returns how many existed.
func (c *Client) Del(ctx context.Context, keys ...[]byte) (int64, error) {
	r, err := c.Do(ctx, Command{Op: OpDel, Keys: keys})
	if err != nil {
		return 0, err
	}
	return r.Int, r.AsError()
}
