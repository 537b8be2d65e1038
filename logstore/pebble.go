package logstore

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"go.uber.org/zap"

	"github.com/multipaxos/engine/ids"
)

// PebbleStore is the Store of a node: one Pebble DB for every group. It is safe
// for concurrent use. The package doc describes its group commit.
type PebbleStore struct {
	db  *pebble.DB
	log *zap.Logger

	batchBytesMax int
	queueBytesMax int

	syncs   atomic.Uint64 // WAL fsyncs, counted by syncCountingFS
	batches atomic.Uint64
	writes  atomic.Uint64
	bytes   atomic.Uint64

	// failed is set once, by the first failed WAL write or fsync (ErrFatal).
	failed atomic.Pointer[error]
	ext    storeExt // the Failed channel and the fsync timing

	// The queue between Commit and the committer goroutine.
	mu         sync.Mutex
	queue      []op      // under mu; submission order
	queueBytes int       // under mu; sum of queue[i].size
	closing    bool      // under mu; set by Close, then no op is queued
	wake       sync.Cond // on mu; the committer waits for ops here
	room       sync.Cond // on mu; Commit waits for room here
	slots      chan struct{}
	applied    chan appliedBatch // committer -> completer, in order
	done       chan struct{}     // closed when the completer has finished

	created bool // Open found no database and made one

	// rw keeps Close from closing the DB under a running read: reads hold it
	// shared; Close takes it to set closed.
	rw     sync.RWMutex
	closed bool // under rw
}

// op is one queued Commit or Trim.
type op struct {
	writes []GroupWrite
	sync   bool
	trim   bool // a Trim of group below `below`; writes is empty
	group  ids.GroupID
	below  ids.InstanceID
	base   []byte // stored with the trim point
	size   int    // encoded bytes, for the queue and batch bounds
	done   func(error)
}

// opOverhead stands for an op's own memory in the queue bound, so that a flood
// of empty Commits is bounded too.
const opOverhead = 64

// appliedBatch is a combined batch that the committer handed to pebble (or could
// not), on its way to the completer.
type appliedBatch struct {
	ops      []op
	pb       *pebble.Batch // nil if nothing was applied
	waitSync bool          // pb was applied with ApplyNoSyncWait
	err      error
}

// Open opens (creating if needed) the store in dir.
func Open(dir string, opts Options) (*PebbleStore, error) {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	lg := opts.Logger.Named("logstore")
	s := &PebbleStore{
		log:           lg,
		batchBytesMax: opts.CommitBatchBytesMax,
		queueBytesMax: opts.CommitQueueBytesMax,
		slots:         make(chan struct{}, opts.CommitPipelineDepth),
		applied:       make(chan appliedBatch, opts.CommitPipelineDepth),
		done:          make(chan struct{}),
	}
	s.wake.L = &s.mu
	s.room.L = &s.mu
	po := &pebble.Options{
		FS:                 &syncCountingFS{FS: opts.FS, syncs: &s.syncs, timing: &s.ext.timing},
		FormatMajorVersion: pebble.FormatNewest,
		MemTableSize:       opts.MemTableSize,
		// Four memtables and a high L0 stop threshold: a write stall is a latency
		// spike for every group on the node, so give compactions room to catch up
		// before pebble stops writes (notes/dependencies.md 2.4).
		MemTableStopWritesThreshold: 4,
		L0CompactionThreshold:       4,
		L0StopWritesThreshold:       24,
		CompactionConcurrencyRange:  func() (int, int) { return 1, 2 },
		CacheSize:                   opts.CacheSize,
		Logger:                      pebbleLogger{s: lg.Named("pebble").Sugar()},
		EventListener:               eventListener(lg.Named("pebble")),
	}
	// A directory with nothing in it (or none at all) holds no database:
	// pebble.Open creates one, and the node must know it (identity.go).
	if names, err := opts.FS.List(dir); err != nil || len(names) == 0 {
		s.created = true
	}
	db, err := pebble.Open(dir, po)
	if err != nil {
		return nil, fmt.Errorf("logstore: open %s: %w", dir, err)
	}
	s.db = db
	go s.commitLoop()
	go s.completeLoop()
	return s, nil
}

// Commit implements Store.
func (s *PebbleStore) Commit(b Batch, done func(error)) {
	size := opOverhead
	for i := range b.Writes {
		w := &b.Writes[i]
		if w.Meta != nil {
			size += groupKeyLen + metaRecordLen
		}
		for j := range w.Entries {
			size += logKeyLen + entryRecordLen(&w.Entries[j])
		}
	}
	s.enqueue(op{writes: b.Writes, sync: b.Sync, size: size, done: done})
}

// Trim implements Store. It goes through the commit queue so that it is ordered
// with the commits before and after it: a record committed before Trim is called
// is deleted by it, one committed after survives.
func (s *PebbleStore) Trim(g ids.GroupID, below ids.InstanceID, base []byte) error {
	res := make(chan error, 1)
	s.enqueue(op{trim: true, group: g, below: below, base: base, size: opOverhead + len(base), done: func(err error) { res <- err }})
	return <-res
}

func (s *PebbleStore) enqueue(o op) {
	s.mu.Lock()
	for !s.closing && s.queueBytes > 0 && s.queueBytes+o.size > s.queueBytesMax {
		s.room.Wait()
	}
	if s.closing {
		s.mu.Unlock()
		// No store goroutine is left to call done from; the Store doc says so.
		if o.done != nil {
			o.done(ErrClosed)
		}
		return
	}
	s.queue = append(s.queue, o)
	s.queueBytes += o.size
	if len(s.queue) == 1 {
		s.wake.Signal()
	}
	s.mu.Unlock()
}

// take removes the next combined batch from the queue: a run of Commits up to
// batchBytesMax, or one Trim (which reads the trim record and so must see every
// earlier batch applied). It returns nil when the store is closing and the queue
// is empty.
func (s *PebbleStore) take() []op {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.queue) == 0 && !s.closing {
		s.wake.Wait()
	}
	if len(s.queue) == 0 {
		return nil
	}
	n, bytes := 1, s.queue[0].size
	if !s.queue[0].trim {
		for n < len(s.queue) && !s.queue[n].trim && bytes+s.queue[n].size <= s.batchBytesMax {
			bytes += s.queue[n].size
			n++
		}
	}
	ops := make([]op, n)
	copy(ops, s.queue)
	rest := copy(s.queue, s.queue[n:])
	clear(s.queue[rest:]) // drop references to taken values
	s.queue = s.queue[:rest]
	s.queueBytes -= bytes
	s.room.Broadcast()
	return ops
}

// commitLoop is the committer: it takes everything queued, builds one pebble
// batch of it and applies it without waiting for the fsync, then hands it to the
// completer. Applying in one goroutine, in queue order, keeps pebble's sequence
// numbers in submission order: a later write to a key always wins.
func (s *PebbleStore) commitLoop() {
	defer close(s.applied)
	for {
		// Wait for a pipeline slot before taking from the queue, not after:
		// whatever queues up meanwhile joins this batch instead of the next.
		s.slots <- struct{}{}
		// The completer has just released the slot and is calling the previous
		// batch's callbacks; the writers they wake commit again at once. One
		// yield lets them enqueue before the take, so a batch holds a whole
		// cohort of writers instead of the first few (29 -> 55 writes per fsync
		// with 64 writers in BenchmarkGroupCommit).
		runtime.Gosched()
		ops := s.take()
		if ops == nil {
			return
		}
		s.applied <- s.apply(ops)
	}
}

// completeLoop is the completer: in order, it waits for each applied batch's
// fsync and then calls the batch's done callbacks.
func (s *PebbleStore) completeLoop() {
	defer close(s.done)
	for a := range s.applied {
		err := a.err
		if a.pb != nil {
			if a.waitSync {
				if serr := a.pb.SyncWait(); serr != nil && err == nil {
					err = s.fail(serr)
				}
			}
			if err == nil {
				s.bytes.Add(uint64(a.pb.Len()))
			}
			_ = a.pb.Close()
		}
		// The batch no longer waits for an fsync: let the committer apply the
		// next one while the callbacks run.
		<-s.slots
		// A batch applied before an earlier one's fsync failed may still look
		// fine (NoSync); fail-stop means it is not reported as a success either.
		if f := s.failure(); f != nil {
			err = f
		}
		for i := range a.ops {
			o := &a.ops[i]
			if err == nil && !o.trim {
				s.batches.Add(1)
				s.writes.Add(uint64(len(o.writes)))
			}
			if o.done != nil {
				o.done(err)
			}
		}
	}
}

// apply builds and applies one combined batch.
func (s *PebbleStore) apply(ops []op) appliedBatch {
	a := appliedBatch{ops: ops}
	if a.err = s.failure(); a.err != nil {
		return a
	}
	pb := s.db.NewBatch()
	sync := false
	if ops[0].trim {
		if a.err = s.buildTrim(pb, ops[0].group, ops[0].below, ops[0].base); a.err != nil {
			_ = pb.Close()
			return a
		}
		sync = true
	} else {
		for i := range ops {
			encodeWrites(pb, ops[i].writes)
			sync = sync || ops[i].sync
		}
	}
	if sync && pb.Empty() {
		// pebble skips an empty batch; a LogData record makes it a real WAL
		// write, so that a Sync batch without writes still waits for an fsync
		// covering every batch before it.
		_ = pb.LogData(nil, nil)
	}
	if a.err = s.applyBatch(pb, sync); a.err != nil {
		// A batch that failed inside pebble's commit pipeline must not be
		// closed or waited on; leave it to the garbage collector.
		return a
	}
	a.pb, a.waitSync = pb, sync
	return a
}

// applyBatch hands pb to pebble: visible when it returns, durable once SyncWait
// returns if sync. A commit error inside pebble arrives as a pebbleFatal panic
// from pebbleLogger.Fatalf; it is turned into ErrFatal here.
func (s *PebbleStore) applyBatch(pb *pebble.Batch, sync bool) (err error) {
	defer func() {
		if r := recover(); r != nil {
			pf, ok := r.(pebbleFatal)
			if !ok {
				panic(r)
			}
			err = s.fail(pf)
		}
	}()
	if sync {
		err = s.db.ApplyNoSyncWait(pb, pebble.Sync)
	} else {
		err = s.db.Apply(pb, pebble.NoSync)
	}
	if err != nil {
		err = s.fail(err)
	}
	return err
}

// encodeWrites encodes writes straight into pb, without intermediate buffers.
func encodeWrites(pb *pebble.Batch, writes []GroupWrite) {
	for i := range writes {
		w := &writes[i]
		if w.Meta != nil {
			d := pb.SetDeferred(groupKeyLen, metaRecordLen)
			putGroupKey(d.Key, w.Group, kindMeta)
			putMeta(d.Value, w.Meta)
			_ = d.Finish()
		}
		for j := range w.Entries {
			e := &w.Entries[j]
			d := pb.SetDeferred(logKeyLen, entryRecordLen(e))
			putLogKey(d.Key, w.Group, e.Instance)
			putEntry(d.Value, e)
			_ = d.Finish()
		}
	}
}

// buildTrim adds a trim of g below `below` to pb: one range tombstone over the
// log from instance 0 (so stray records under an earlier trim point go too) and
// the raised trim record. A below at or under the current trim point adds nothing.
func (s *PebbleStore) buildTrim(pb *pebble.Batch, g ids.GroupID, below ids.InstanceID, base []byte) error {
	cur, _, err := s.trimRecord(g)
	if err != nil || below <= cur {
		return err
	}
	if err := pb.DeleteRange(logKey(g, 0), logKey(g, below), nil); err != nil {
		return err
	}
	return pb.Set(trimKey(g), encodeTrim(below, base), nil)
}

// fail records the first fatal error and returns the store's fatal error.
func (s *PebbleStore) fail(cause error) error {
	err := fmt.Errorf("%w: %w", ErrFatal, cause)
	if s.failed.CompareAndSwap(nil, &err) {
		s.log.Error("WAL write or fsync failed; store stopped (fail-stop), restart to recover", zap.Error(cause))
		s.notifyFailed()
	}
	return *s.failed.Load()
}

func (s *PebbleStore) failure() error {
	if p := s.failed.Load(); p != nil {
		return *p
	}
	return nil
}

// readLock takes the read side of rw and reports why the store cannot be read.
// The caller must call s.rw.RUnlock.
func (s *PebbleStore) readLock() error {
	s.rw.RLock()
	if s.closed {
		return ErrClosed
	}
	return s.failure()
}

// get calls decode with the value at key, if there is one. The value is valid
// only during decode.
func (s *PebbleStore) get(key []byte, decode func([]byte) error) (found bool, err error) {
	v, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, asCorrupt(err)
	}
	defer closer.Close()
	return true, decode(v)
}

// asCorrupt makes a block that failed Pebble's own checksum an ErrCorrupt: to the
// engine it is a damaged record like one that fails ours, repaired from peers.
func asCorrupt(err error) error {
	if errors.Is(err, pebble.ErrCorruption) && !errors.Is(err, ErrCorrupt) {
		return fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return err
}

func (s *PebbleStore) trimRecord(g ids.GroupID) (min ids.InstanceID, base []byte, err error) {
	_, err = s.get(trimKey(g), func(v []byte) (err error) {
		min, base, err = decodeTrim(v)
		return err
	})
	if err != nil {
		return 0, nil, fmt.Errorf("group %d trim record: %w", g, err)
	}
	return min, base, nil
}

// LoadMeta implements Store.
func (s *PebbleStore) LoadMeta(g ids.GroupID) (Meta, error) {
	defer s.rw.RUnlock()
	if err := s.readLock(); err != nil {
		return Meta{}, err
	}
	var m Meta
	_, err := s.get(metaKey(g), func(v []byte) (err error) {
		m, err = decodeMeta(v)
		return err
	})
	if err != nil {
		return Meta{}, fmt.Errorf("group %d meta record: %w", g, err)
	}
	if m.MinRetained, m.Base, err = s.trimRecord(g); err != nil {
		return Meta{}, err
	}
	m.ChosenNext = max(m.ChosenNext, m.MinRetained)
	return m, nil
}

// Entry implements Store.
func (s *PebbleStore) Entry(g ids.GroupID, inst ids.InstanceID) (Entry, error) {
	defer s.rw.RUnlock()
	if err := s.readLock(); err != nil {
		return Entry{}, err
	}
	var e Entry
	found, err := s.get(logKey(g, inst), func(v []byte) (err error) {
		e, err = decodeEntryAt(v, g, inst)
		return err
	})
	if err == nil && !found {
		err = ErrNotFound
	}
	return e, err
}

// Entries implements Store.
func (s *PebbleStore) Entries(g ids.GroupID, from ids.InstanceID, maxCount, maxBytes int) (out []Entry, err error) {
	defer s.rw.RUnlock()
	if err := s.readLock(); err != nil {
		return nil, err
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: logKey(g, from), UpperBound: logEnd(g)})
	if err != nil {
		return nil, fmt.Errorf("logstore: group %d: %w", g, err)
	}
	defer func() {
		if cerr := it.Close(); cerr != nil && err == nil {
			out, err = nil, fmt.Errorf("logstore: group %d: %w", g, asCorrupt(cerr))
		}
	}()
	bytes := 0
	for ok := it.First(); ok; ok = it.Next() {
		want := from + ids.InstanceID(len(out))
		if inst, ok := parseLogKey(it.Key(), g); !ok || inst != want {
			break // a gap
		}
		if maxCount > 0 && len(out) >= maxCount {
			break
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, fmt.Errorf("logstore: group %d instance %d: %w", g, want, asCorrupt(err))
		}
		if maxBytes > 0 && len(out) > 0 && bytes+entryValueLen(v) > maxBytes {
			break
		}
		e, err := decodeEntryAt(v, g, want)
		if err != nil {
			return nil, err
		}
		bytes += len(e.Value)
		out = append(out, e)
	}
	return out, nil
}

// LastInstance implements Store.
func (s *PebbleStore) LastInstance(g ids.GroupID) (inst ids.InstanceID, ok bool, err error) {
	defer s.rw.RUnlock()
	if err := s.readLock(); err != nil {
		return 0, false, err
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: logKey(g, 0), UpperBound: logEnd(g)})
	if err != nil {
		return 0, false, fmt.Errorf("logstore: group %d: %w", g, err)
	}
	if it.Last() {
		inst, ok = parseLogKey(it.Key(), g)
	}
	if err := it.Close(); err != nil {
		return 0, false, fmt.Errorf("logstore: group %d: %w", g, err)
	}
	return inst, ok, nil
}

// Stats implements Store.
func (s *PebbleStore) Stats() Stats {
	return Stats{
		Batches: s.batches.Load(),
		Writes:  s.writes.Load(),
		Syncs:   s.syncs.Load(),
		Bytes:   s.bytes.Load(),
	}
}

// Close implements Store. After a fatal error it still releases what it can and
// returns the fatal error.
func (s *PebbleStore) Close() error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return ErrClosed
	}
	s.closing = true
	s.wake.Broadcast()
	s.room.Broadcast()
	s.mu.Unlock()
	<-s.done // the committer drained the queue; every done has been called

	s.rw.Lock()
	s.closed = true
	s.rw.Unlock()
	err := s.db.Close()
	if f := s.failure(); f != nil {
		return f
	}
	if err != nil {
		return fmt.Errorf("logstore: close: %w", err)
	}
	return nil
}
