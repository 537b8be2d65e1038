package logstore

import (
	"errors"

	"github.com/multipaxos/engine/ids"
)

// Meta is a group's durable acceptor header.
type Meta struct {
	// Promised is the highest ballot promised. It carries over to later instances
	// and must never decrease (DESIGN.md 5.2); the store writes what it is given.
	Promised ids.Ballot
	// ChosenNext: every instance below it is chosen and its Entry holds the chosen
	// value.
	ChosenNext ids.InstanceID
	// MinRetained is the lowest instance still in the log; 0 until the first Trim.
	// Only Trim changes it: the value in a GroupWrite is ignored (see keys.go).
	// Every instance below it is chosen, so LoadMeta never reports a ChosenNext
	// below it.
	MinRetained ids.InstanceID
	// Base is what the last Trim stored with MinRetained: the engine's own state
	// at that instance (its master and membership records), which the trimmed
	// log can no longer rebuild. Ignored in a GroupWrite.
	Base []byte
}

// Entry is one instance record: the value accepted (or chosen) there and its ballot.
type Entry struct {
	Instance ids.InstanceID
	Ballot   ids.Ballot
	Value    []byte
}

// GroupWrite is the durable change of one group in one batch.
type GroupWrite struct {
	Group ids.GroupID
	// Meta replaces the group's Promised and ChosenNext; nil leaves them unchanged.
	// Meta.MinRetained is ignored: Trim owns it.
	Meta *Meta
	// Entries are put, overwriting any record at the same instance.
	Entries []Entry
}

// Batch is one Commit: the writes of any number of groups, applied atomically and in
// order (a later write to the same key wins).
type Batch struct {
	Writes []GroupWrite
	// Sync: done runs only after the WAL fsync covering this batch. A batch without
	// Sync becomes durable with the next synced batch (the WAL is sequential).
	Sync bool
}

// Stats counts since Open (or NewMemStore).
type Stats struct {
	Batches uint64 // Commit calls that committed
	Writes  uint64 // GroupWrites that committed
	Syncs   uint64 // WAL fsyncs (PebbleStore: counted at the file system, so real ones)
	Bytes   uint64 // bytes committed (PebbleStore: pebble batch bytes, i.e. WAL payload)
}

// Store is the durable log of every group on a node.
//
// Reads see every committed write as soon as Commit has applied it, which may be
// before it is durable (like Pebble). An acceptor therefore replies only from done,
// never from what a read shows (DESIGN.md 5.2).
type Store interface {
	// LoadMeta returns g's header; the zero Meta for a group never written.
	LoadMeta(g ids.GroupID) (Meta, error)
	// Entry returns the record of (g, inst): ErrNotFound if there is none (never
	// written, or trimmed), an error wrapping ErrCorrupt if it fails its checksum or
	// does not decode.
	Entry(g ids.GroupID, inst ids.InstanceID) (Entry, error)
	// Entries returns consecutive records of g starting at from. It stops at the
	// first missing instance, after maxCount records, or before the record whose
	// value would take the total of value bytes over maxBytes - but it returns the
	// record at from, if there is one, whatever its size. maxCount or maxBytes <= 0
	// means no limit of that kind. No record at from gives an empty result, not an
	// error.
	Entries(g ids.GroupID, from ids.InstanceID, maxCount, maxBytes int) ([]Entry, error)
	// LastInstance returns the highest instance of g with a record; ok is false
	// when g has none.
	LastInstance(g ids.GroupID) (inst ids.InstanceID, ok bool, err error)
	// Commit queues b and returns without waiting for I/O (it may wait for room in
	// a bounded queue). done is called exactly once, in submission order;
	// done(nil) means b is applied, and durable if b.Sync. done may be nil.
	//
	// done runs on a goroutine of the store (MemStore: the caller of Sync; after
	// Close: the caller of Commit, with ErrClosed) and holds up every later
	// callback while it runs, so it must not block: hand the result to a
	// goroutine of your own (a buffered channel, an event loop's Execute). In a
	// PebbleStore it must not call Trim or Close, which wait for callbacks, nor
	// Commit in bulk, which may wait for queue room that only returning
	// callbacks make.
	//
	// The store owns b, value slices included, from the call on: callers must
	// not change them.
	Commit(b Batch, done func(error))
	// Trim deletes g's records below `below`, raises MinRetained to below and
	// stores base with it, durably, before it returns. A below at or under
	// MinRetained changes nothing. below may be above ChosenNext: a member that
	// installed a checkpoint of instance below holds everything under it. Trim is
	// for coarse steps (thousands of instances): each one is a range tombstone
	// that reads must skip until compaction drops it.
	Trim(g ids.GroupID, below ids.InstanceID, base []byte) error
	// Stats returns the counters.
	Stats() Stats
	// Close completes every queued Commit (calling its done), then releases the
	// store. Later calls fail with ErrClosed.
	Close() error
}

var (
	// ErrNotFound: no record at that instance.
	ErrNotFound = errors.New("logstore: not found")
	// ErrCorrupt: a stored record failed its checksum or did not decode. Errors
	// wrap it with the group, instance and reason.
	ErrCorrupt = errors.New("logstore: corrupt record")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("logstore: closed")
	// ErrFatal: a write to the WAL or its fsync failed. The store has stopped
	// (fail-stop): the failing batch and every later one get an error wrapping
	// ErrFatal, reads fail too, and the process must restart, recovering from the
	// WAL exactly what was durable. Retrying a failed fsync is not safe: the kernel
	// may have dropped the dirty pages and report the next fsync as a success.
	ErrFatal = errors.New("logstore: fatal I/O error, store stopped")
)
