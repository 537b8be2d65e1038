package logstore

import (
	"fmt"
	"maps"

	"github.com/multipaxos/engine/ids"
)

// MemStore is a deterministic in-memory Store for the single-goroutine cluster
// simulation: it models a disk that loses what was not synced. It has no
// goroutines and no locks; all calls, and the done callbacks, run on the caller's
// goroutine.
//
// Like PebbleStore, Commit makes a batch visible at once but durable only later:
// here when the simulation calls Sync, which makes every pending batch durable and
// then calls their callbacks in order. Crash throws away what is not durable. It
// stores the same encoded records as PebbleStore, so checksums and decoding are
// exercised in simulation too, and CorruptEntry lets a test damage one.
type MemStore struct {
	visible *memState // what reads see: durable plus every pending batch
	durable *memState // what survives Crash
	pending []memPending
	stats   Stats
	closed  bool
}

// memPending is a committed batch whose callback has not run.
type memPending struct {
	apply func(*memState) // replays the batch onto durable; nil once it is durable
	done  func(error)
}

type memState struct{ groups map[ids.GroupID]*memGroup }

// memGroup holds encoded records, never changed in place: clones share them.
type memGroup struct {
	meta []byte                    // meta record; nil if never written
	trim []byte                    // trim record; nil if never trimmed
	log  map[ids.InstanceID][]byte // entry records
	last ids.InstanceID            // highest key of log, if hasLast
	has  bool                      // log is not empty
}

func newMemState() *memState { return &memState{groups: make(map[ids.GroupID]*memGroup)} }

func (st *memState) group(g ids.GroupID) *memGroup {
	mg := st.groups[g]
	if mg == nil {
		mg = &memGroup{log: make(map[ids.InstanceID][]byte)}
		st.groups[g] = mg
	}
	return mg
}

func (st *memState) clone() *memState {
	c := &memState{groups: make(map[ids.GroupID]*memGroup, len(st.groups))}
	for g, mg := range st.groups {
		cg := *mg
		cg.log = maps.Clone(mg.log)
		c.groups[g] = &cg
	}
	return c
}

func (mg *memGroup) put(inst ids.InstanceID, rec []byte) {
	mg.log[inst] = rec
	if !mg.has || inst > mg.last {
		mg.last, mg.has = inst, true
	}
}

// trimTo deletes the records below `below`. Trim deletes a prefix, so the highest
// record survives unless everything goes.
func (mg *memGroup) trimTo(below ids.InstanceID, rec []byte) {
	mg.trim = rec
	for inst := range mg.log {
		if inst < below {
			delete(mg.log, inst)
		}
	}
	if mg.has && mg.last < below {
		mg.has = false
	}
}

// NewMemStore returns an empty MemStore.
func NewMemStore() *MemStore {
	return &MemStore{visible: newMemState(), durable: newMemState()}
}

// Commit implements Store: b is visible when Commit returns and pending until the
// next Sync, which calls done. After Close, done(ErrClosed) runs before Commit
// returns.
func (m *MemStore) Commit(b Batch, done func(error)) {
	if m.closed {
		if done != nil {
			done(ErrClosed)
		}
		return
	}
	type rec struct {
		g    ids.GroupID
		meta []byte
		inst []ids.InstanceID
		recs [][]byte
	}
	recs := make([]rec, len(b.Writes))
	for i, w := range b.Writes {
		r := rec{g: w.Group}
		if w.Meta != nil {
			r.meta = encodeMeta(*w.Meta)
			m.stats.Bytes += uint64(groupKeyLen + len(r.meta))
		}
		for _, e := range w.Entries {
			r.inst = append(r.inst, e.Instance)
			r.recs = append(r.recs, encodeEntry(e))
			m.stats.Bytes += uint64(logKeyLen + entryRecordLen(&e))
		}
		recs[i] = r
	}
	apply := func(st *memState) {
		for _, r := range recs {
			mg := st.group(r.g)
			if r.meta != nil {
				mg.meta = r.meta
			}
			for j, inst := range r.inst {
				mg.put(inst, r.recs[j])
			}
		}
	}
	apply(m.visible)
	m.pending = append(m.pending, memPending{apply: apply, done: done})
	m.stats.Batches++
	m.stats.Writes += uint64(len(b.Writes))
}

// Sync makes every pending batch durable, then calls their callbacks in
// submission order. A callback may Commit again; that batch waits for the next
// Sync.
func (m *MemStore) Sync() {
	if len(m.pending) == 0 {
		return
	}
	m.makeDurable()
	ps := m.pending
	m.pending = nil
	for _, p := range ps {
		if p.done != nil {
			p.done(nil)
		}
	}
}

// makeDurable replays the pending batches not yet durable onto durable, in order:
// one simulated WAL fsync.
func (m *MemStore) makeDurable() {
	for i := range m.pending {
		if p := &m.pending[i]; p.apply != nil {
			p.apply(m.durable)
			p.apply = nil
		}
	}
	m.stats.Syncs++
}

// Crash models a power loss: everything not durable is gone and pending
// callbacks are dropped without being called. The store stays open, as the disk
// a restarted node finds.
func (m *MemStore) Crash() {
	m.visible = m.durable.clone()
	m.pending = nil
}

// PendingCount returns the number of committed batches whose callbacks wait for
// Sync.
func (m *MemStore) PendingCount() int { return len(m.pending) }

// CorruptEntry flips one byte of the stored record of (g, inst), in the visible
// and the durable copy alike (a damaged disk block), so that reading it must
// fail with ErrCorrupt. It returns ErrNotFound if there is no such record.
func (m *MemStore) CorruptEntry(g ids.GroupID, inst ids.InstanceID) error {
	found := false
	for _, st := range []*memState{m.visible, m.durable} {
		mg := st.groups[g]
		if mg == nil || mg.log[inst] == nil {
			continue
		}
		rec := append([]byte(nil), mg.log[inst]...)
		rec[len(rec)/2] ^= 0x40 // the middle: the value if there is one
		mg.log[inst] = rec
		found = true
	}
	if !found {
		return ErrNotFound
	}
	return nil
}

// Trim implements Store. The trim is durable when Trim returns and, like a synced
// WAL record, so is every batch committed before it; their callbacks still wait
// for Sync.
func (m *MemStore) Trim(g ids.GroupID, below ids.InstanceID, base []byte) error {
	if m.closed {
		return ErrClosed
	}
	cur, _, err := m.trimRecord(m.visible, g)
	if err != nil || below <= cur {
		return err
	}
	rec := encodeTrim(below, base)
	m.visible.group(g).trimTo(below, rec)
	m.makeDurable()
	m.durable.group(g).trimTo(below, rec)
	m.stats.Bytes += uint64(groupKeyLen + len(rec))
	return nil
}

func (m *MemStore) trimRecord(st *memState, g ids.GroupID) (ids.InstanceID, []byte, error) {
	mg := st.groups[g]
	if mg == nil || mg.trim == nil {
		return 0, nil, nil
	}
	min, base, err := decodeTrim(mg.trim)
	if err != nil {
		return 0, nil, fmt.Errorf("group %d trim record: %w", g, err)
	}
	return min, base, nil
}

// LoadMeta implements Store.
func (m *MemStore) LoadMeta(g ids.GroupID) (Meta, error) {
	if m.closed {
		return Meta{}, ErrClosed
	}
	var meta Meta
	if mg := m.visible.groups[g]; mg != nil && mg.meta != nil {
		var err error
		if meta, err = decodeMeta(mg.meta); err != nil {
			return Meta{}, fmt.Errorf("group %d meta record: %w", g, err)
		}
	}
	var err error
	meta.MinRetained, meta.Base, err = m.trimRecord(m.visible, g)
	meta.ChosenNext = max(meta.ChosenNext, meta.MinRetained)
	return meta, err
}

// Entry implements Store.
func (m *MemStore) Entry(g ids.GroupID, inst ids.InstanceID) (Entry, error) {
	if m.closed {
		return Entry{}, ErrClosed
	}
	mg := m.visible.groups[g]
	if mg == nil || mg.log[inst] == nil {
		return Entry{}, ErrNotFound
	}
	return decodeEntryAt(mg.log[inst], g, inst)
}

// Entries implements Store.
func (m *MemStore) Entries(g ids.GroupID, from ids.InstanceID, maxCount, maxBytes int) ([]Entry, error) {
	if m.closed {
		return nil, ErrClosed
	}
	mg := m.visible.groups[g]
	if mg == nil {
		return nil, nil
	}
	var out []Entry
	bytes := 0
	for inst := from; maxCount <= 0 || len(out) < maxCount; inst++ {
		rec := mg.log[inst]
		if rec == nil {
			break
		}
		if maxBytes > 0 && len(out) > 0 && bytes+entryValueLen(rec) > maxBytes {
			break
		}
		e, err := decodeEntryAt(rec, g, inst)
		if err != nil {
			return nil, err
		}
		bytes += len(e.Value)
		out = append(out, e)
		if inst == ^ids.InstanceID(0) {
			break
		}
	}
	return out, nil
}

// LastInstance implements Store.
func (m *MemStore) LastInstance(g ids.GroupID) (ids.InstanceID, bool, error) {
	if m.closed {
		return 0, false, ErrClosed
	}
	if mg := m.visible.groups[g]; mg != nil && mg.has {
		return mg.last, true, nil
	}
	return 0, false, nil
}

// Stats implements Store. Syncs counts the Syncs and Trims that made something
// durable: the simulated fsyncs.
func (m *MemStore) Stats() Stats { return m.stats }

// Close implements Store: it syncs what is pending (calling the callbacks), then
// closes.
func (m *MemStore) Close() error {
	if m.closed {
		return ErrClosed
	}
	m.Sync()
	m.closed = true
	return nil
}

var (
	_ Store = (*MemStore)(nil)
	_ Store = (*PebbleStore)(nil)
)
