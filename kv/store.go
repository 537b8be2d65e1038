package kv

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/vmihailenco/msgpack/v5"
	"go.uber.org/zap"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/statemachine"
)

// Errors of the store.
var (
	// ErrStorage wraps every failure of the underlying Pebble DB. From Execute it
	// stalls the group (the engine retries the instance); it is never a logical
	// outcome of a command.
	ErrStorage = errors.New("kv: storage failure")
	// ErrFormatMismatch: the DB was created with another format version, hash or
	// number of groups; opening it would route keys to groups that do not hold them.
	ErrFormatMismatch = errors.New("kv: store format mismatch")
	// ErrInvalidOptions: Options fail validation.
	ErrInvalidOptions = errors.New("kv: invalid options")
	// ErrNotRead: ReadLocal was given a command that writes.
	ErrNotRead = errors.New("kv: not a read command")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("kv: store closed")
)

// formatVersion is the version of the key layout and records described in the
// package doc.
const formatVersion = 1

// Options configure a Store.
type Options struct {
	// Groups is the number of Paxos groups; it must match the node's and, once the
	// store exists, the number it was created with. 1 .. 65536.
	Groups int
	// Logger receives the store's logs; nil = no-op.
	Logger *zap.Logger
	// CacheSize is Pebble's block cache in bytes. Default 64 MiB.
	CacheSize int64
	// MemTableSize is Pebble's memtable size in bytes. Default 32 MiB.
	MemTableSize uint64
	// FS is the filesystem of the DB and of the checkpoint images the groups
	// write and install. nil = the operating system's; tests use a crashable
	// in-memory one (vfs.NewCrashableMem).
	FS vfs.FS
}

// Store is the KV state of every group of one node, in one Pebble DB. It is safe
// for concurrent use; each group's GroupSM is driven by the engine from that
// group's apply context only.
type Store struct {
	db     *pebble.DB
	dir    string
	fs     vfs.FS // the DB's and the checkpoint images'
	log    *zap.Logger
	groups []*GroupSM
	cache  *pebble.Cache
	closed atomic.Bool
}

// Open opens (creating if needed) the store in dir.
func Open(dir string, opts Options) (*Store, error) {
	if opts.Groups < 1 || opts.Groups > 1<<16 {
		return nil, fmt.Errorf("%w: Groups is %d, want 1 .. 65536", ErrInvalidOptions, opts.Groups)
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.CacheSize == 0 {
		opts.CacheSize = 64 << 20
	}
	if opts.MemTableSize == 0 {
		opts.MemTableSize = 32 << 20
	}
	if opts.FS == nil {
		opts.FS = vfs.Default
	}
	lg := opts.Logger.Named("kv")
	cache := pebble.NewCache(opts.CacheSize)
	db, err := pebble.Open(dir, &pebble.Options{
		FormatMajorVersion: pebble.FormatNewest,
		Cache:              cache,
		MemTableSize:       opts.MemTableSize,
		FS:                 opts.FS,
		Logger:             pebbleLogger{s: lg.Named("pebble").Sugar()},
	})
	if err != nil {
		cache.Unref()
		return nil, fmt.Errorf("%w: open %s: %v", ErrStorage, dir, err)
	}
	s := &Store{db: db, dir: dir, fs: opts.FS, log: lg, cache: cache}
	if err := s.checkFormat(opts.Groups); err != nil {
		_ = s.Close()
		return nil, err
	}
	s.groups = make([]*GroupSM, opts.Groups)
	for g := range s.groups {
		m := &GroupSM{s: s, g: ids.GroupID(g)}
		meta, err := loadMeta(db, m.g)
		if err != nil {
			_ = s.Close()
			return nil, err
		}
		m.applied.Store(meta.Applied)
		m.clock.Store(meta.Clock)
		s.groups[g] = m
	}
	lg.Info("kv store open", zap.String("dir", dir), zap.Int("groups", opts.Groups))
	return s, nil
}

// format is the store's format record, written once at creation.
type format struct {
	_msgpack struct{} `msgpack:",as_array"`
	Version  int
	Groups   int
	Hash     string
}

func (s *Store) checkFormat(groups int) error {
	want := format{Version: formatVersion, Groups: groups, Hash: HashName}
	v, closer, err := s.db.Get(formatKey)
	if errors.Is(err, pebble.ErrNotFound) {
		b, err := msgpack.Marshal(&want)
		if err != nil {
			return fmt.Errorf("kv: encode format: %w", err)
		}
		if err := s.db.Set(formatKey, b, pebble.Sync); err != nil {
			return fmt.Errorf("%w: write format: %v", ErrStorage, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: read format: %v", ErrStorage, err)
	}
	defer closer.Close()
	var have format
	if err := msgpack.Unmarshal(v, &have); err != nil {
		return fmt.Errorf("%w: undecodable format record: %v", ErrFormatMismatch, err)
	}
	if have.Version != want.Version || have.Groups != want.Groups || have.Hash != want.Hash {
		return fmt.Errorf("%w: store has version %d, %d groups, hash %s; asked for version %d, %d groups, hash %s",
			ErrFormatMismatch, have.Version, have.Groups, have.Hash, want.Version, want.Groups, want.Hash)
	}
	return nil
}

// Groups is the number of groups.
func (s *Store) Groups() int { return len(s.groups) }

// Group returns group g's state machine.
func (s *Store) Group(g ids.GroupID) *GroupSM { return s.groups[g] }

// StateMachines is the node.Options.StateMachines factory for this store.
func (s *Store) StateMachines(g ids.GroupID) statemachine.StateMachine { return s.groups[g] }

// Sync makes every executed instance durable in the DB. GroupSM.Checkpoint syncs
// before it returns a trim point (see the package doc).
func (s *Store) Sync() error {
	if err := s.db.LogData(nil, pebble.Sync); err != nil {
		return fmt.Errorf("%w: sync: %v", ErrStorage, err)
	}
	return nil
}

// Close closes the DB. Stop the node first: Execute must not run on a closed store.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	err := s.db.Close()
	s.cache.Unref()
	if err != nil {
		return fmt.Errorf("%w: close: %v", ErrStorage, err)
	}
	return nil
}

// ReadLocal evaluates read command c against this node's current state of group g,
// without the log. It is linearizable only where the caller made it so (on the
// master under its lease, or after a ReadBarrier); on its own it is a stale read.
// Multi-key reads see one snapshot, so they are atomic within the group.
func (s *Store) ReadLocal(g ids.GroupID, c Command) (Reply, error) {
	if !c.Op.IsRead() {
		return Reply{}, fmt.Errorf("%w: %s", ErrNotRead, c.Op)
	}
	if err := c.validate(); err != nil {
		return Reply{}, err
	}
	if s.closed.Load() {
		return Reply{}, ErrClosed
	}
	snap := s.db.NewSnapshot()
	defer snap.Close()
	now := max(c.Now, s.groups[g].clock.Load())
	return execRead(snap, g, now, &c)
}

// GroupSM is the state machine of one group: a statemachine.StateMachine and a
// statemachine.Checkpointer (checkpoint.go).
type GroupSM struct {
	s       *Store
	g       ids.GroupID
	applied atomic.Uint64 // first instance not in the DB; read by Applied and tests
	clock   atomic.Int64  // the group's clock (package doc); read by ReadLocal
	warned  bool
}

// Applied implements statemachine.StateMachine: it is exact, because the meta
// record is written in the same batch as every instance's effects.
func (m *GroupSM) Applied() ids.InstanceID { return ids.InstanceID(m.applied.Load()) }

// Clock is the group's clock: the largest command timestamp it executed (unix ms).
func (m *GroupSM) Clock() int64 { return m.clock.Load() }

// Execute implements statemachine.StateMachine.
func (m *GroupSM) Execute(inst ids.InstanceID, cmds [][]byte) ([][]byte, error) {
	results := make([][]byte, len(cmds))
	applied := ids.InstanceID(m.applied.Load())
	if inst < applied {
		// Never apply twice. This happens after a crash when the engine's log
		// recovered its chosen marks (written without fsync) behind this store:
		// the engine replays only up to its chosen mark and then executes the
		// instances it learns again, which this store already holds.
		m.s.log.Warn("instance below the applied point; not executing it again",
			zap.Uint32("group", uint32(m.g)), zap.Uint64("instance", uint64(inst)), zap.Uint64("applied", uint64(applied)))
		return results, nil
	}
	if inst > applied && !m.warned {
		m.warned = true
		m.s.log.Warn("instances skipped between applied point and executed instance",
			zap.Uint32("group", uint32(m.g)), zap.Uint64("instance", uint64(inst)), zap.Uint64("applied", uint64(applied)))
	}
	if m.s.closed.Load() {
		return nil, ErrClosed
	}
	b := m.s.db.NewIndexedBatch()
	defer b.Close()
	t := txn{b: b, g: m.g, now: m.clock.Load()}
	for i, raw := range cmds {
		var r Reply
		c, err := DecodeCommand(raw)
		if err != nil {
			// Deterministic: every member fails to decode the same bytes.
			m.s.log.Warn("undecodable command", zap.Uint32("group", uint32(m.g)), zap.Uint64("instance", uint64(inst)), zap.Error(err))
			r = replyErr(ErrCodeBadCommand)
		} else {
			t.now = max(t.now, c.Now)
			if r, err = t.exec(&c); err != nil {
				return nil, err
			}
		}
		if results[i], err = EncodeReply(r); err != nil {
			return nil, err
		}
	}
	if err := t.sweep(); err != nil {
		return nil, err
	}
	if err := b.Set(metaKey(m.g), encodeMeta(meta{Applied: uint64(inst) + 1, Clock: t.now}), nil); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrStorage, err)
	}
	// No fsync: the log is the durable copy (package doc).
	if err := b.Commit(pebble.NoSync); err != nil {
		return nil, fmt.Errorf("%w: commit group %d instance %d: %v", ErrStorage, m.g, inst, err)
	}
	m.applied.Store(uint64(inst) + 1)
	m.clock.Store(t.now)
	return results, nil
}

// meta is a group's meta record.
type meta struct {
	Applied uint64 // first instance not applied
	Clock   int64  // the group's clock, unix ms
}

const metaVersion = 1

func encodeMeta(m meta) []byte {
	b := make([]byte, 17)
	b[0] = metaVersion
	binary.BigEndian.PutUint64(b[1:], m.Applied)
	binary.BigEndian.PutUint64(b[9:], uint64(m.Clock))
	return b
}

func decodeMeta(b []byte) (meta, error) {
	if len(b) != 17 || b[0] != metaVersion {
		return meta{}, fmt.Errorf("%w: bad meta record (%d bytes)", ErrStorage, len(b))
	}
	return meta{Applied: binary.BigEndian.Uint64(b[1:]), Clock: int64(binary.BigEndian.Uint64(b[9:]))}, nil
}

type getter interface {
	Get(key []byte) ([]byte, io.Closer, error)
}

func loadMeta(r getter, g ids.GroupID) (meta, error) {
	v, closer, err := r.Get(metaKey(g))
	if errors.Is(err, pebble.ErrNotFound) {
		return meta{}, nil
	}
	if err != nil {
		return meta{}, fmt.Errorf("%w: read meta of group %d: %v", ErrStorage, g, err)
	}
	defer closer.Close()
	return decodeMeta(v)
}

// pebbleLogger sends Pebble's logs to zap; its info lines are debug-level noise for
// a KV server.
type pebbleLogger struct{ s *zap.SugaredLogger }

func (l pebbleLogger) Infof(format string, args ...any)  { l.s.Debugf(format, args...) }
func (l pebbleLogger) Errorf(format string, args ...any) { l.s.Errorf(format, args...) }
func (l pebbleLogger) Fatalf(format string, args ...any) { l.s.Fatalf(format, args...) }
