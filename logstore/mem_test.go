package logstore

import (
	"errors"
	"slices"
	"testing"

	"github.com/multipaxos/engine/ids"
)

// TestMemCrashLosesUnsynced: a crash keeps exactly the batches that were synced,
// drops the callbacks of the rest, and what a read showed before the crash does
// not matter (visible is not durable).
func TestMemCrashLosesUnsynced(t *testing.T) {
	m := NewMemStore()
	var called []int
	commit := func(i int, inst ids.InstanceID, sync bool, meta *Meta) {
		m.Commit(Batch{Sync: sync, Writes: []GroupWrite{{Group: 1, Meta: meta, Entries: []Entry{ent(inst, uint64(i), "v")}}}},
			func(err error) {
				if err != nil {
					t.Errorf("done %d: %v", i, err)
				}
				called = append(called, i)
			})
	}
	synced := Meta{Promised: ids.Ballot{Number: 1, Node: 1}, ChosenNext: 1}
	commit(0, 0, false, &synced) // not Sync, but made durable by the Sync below
	commit(1, 1, true, nil)
	m.Sync()
	if len(called) != 2 || m.PendingCount() != 0 {
		t.Fatalf("after Sync: callbacks %v, %d pending", called, m.PendingCount())
	}
	lost := Meta{Promised: ids.Ballot{Number: 9, Node: 1}, ChosenNext: 3}
	commit(2, 2, true, &lost)
	commit(3, 1, false, nil) // overwrites a durable record; the overwrite is lost
	if m.PendingCount() != 2 {
		t.Fatalf("%d pending, want 2", m.PendingCount())
	}
	if got, _ := m.LoadMeta(1); !sameMeta(got, lost) {
		t.Fatalf("unsynced meta not visible before the crash: %+v", got)
	}
	m.Crash()
	if len(called) != 2 || m.PendingCount() != 0 {
		t.Fatalf("after Crash: callbacks %v, %d pending", called, m.PendingCount())
	}
	if got, _ := m.LoadMeta(1); !sameMeta(got, synced) {
		t.Fatalf("meta after crash = %+v, want %+v", got, synced)
	}
	if _, err := m.Entry(1, 2); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unsynced entry after crash: %v", err)
	}
	if e, _ := m.Entry(1, 1); e.Ballot.Number != 1 {
		t.Fatalf("entry 1 after crash has ballot %d, want the synced 1", e.Ballot.Number)
	}
	if inst, ok, _ := m.LastInstance(1); !ok || inst != 1 {
		t.Fatalf("LastInstance after crash = %d, %v", inst, ok)
	}
	m.Sync() // nothing pending: no callback from before the crash may run
	if len(called) != 2 {
		t.Fatalf("callbacks of lost batches ran: %v", called)
	}
}

// TestMemSyncOrder: Sync calls callbacks in submission order, and a callback that
// commits again leaves that batch for the next Sync.
func TestMemSyncOrder(t *testing.T) {
	m := NewMemStore()
	var order []int
	for i := range 5 {
		m.Commit(Batch{Sync: i%2 == 0}, func(error) {
			order = append(order, i)
			if i == 2 {
				m.Commit(Batch{Sync: true}, func(error) { order = append(order, 100) })
			}
		})
	}
	m.Sync()
	if want := []int{0, 1, 2, 3, 4}; !slices.Equal(order, want) {
		t.Fatalf("callback order %v, want %v", order, want)
	}
	if m.PendingCount() != 1 {
		t.Fatalf("%d pending after a callback committed, want 1", m.PendingCount())
	}
	m.Sync()
	if order[len(order)-1] != 100 {
		t.Fatalf("callback order %v", order)
	}
	if st := m.Stats(); st.Syncs != 2 || st.Batches != 6 {
		t.Fatalf("Stats = %+v", st)
	}
}

// TestMemTrimIsDurable: Trim is durable at once and, like a synced WAL record,
// takes the batches before it along; their callbacks still wait for Sync.
func TestMemTrimIsDurable(t *testing.T) {
	m := NewMemStore()
	called := 0
	m.Commit(Batch{Writes: []GroupWrite{{Group: 1, Entries: entries(0, 10, 1)}}}, func(error) { called++ })
	if err := m.Trim(1, 4, nil); err != nil {
		t.Fatal(err)
	}
	if called != 0 || m.PendingCount() != 1 {
		t.Fatalf("Trim ran callbacks: %d called, %d pending", called, m.PendingCount())
	}
	m.Crash()
	if got, _ := m.Entries(1, 4, 0, 0); len(got) != 6 {
		t.Fatalf("after Trim and crash: %d entries from 4, want 6", len(got))
	}
	if meta, _ := m.LoadMeta(1); meta.MinRetained != 4 {
		t.Fatalf("MinRetained after crash = %d, want 4", meta.MinRetained)
	}
	if _, err := m.Entry(1, 3); !errors.Is(err, ErrNotFound) {
		t.Fatalf("trimmed entry after crash: %v", err)
	}
}

func TestMemCorruptEntry(t *testing.T) {
	m := NewMemStore()
	mustCommit(t, m, GroupWrite{Group: 1, Entries: entries(0, 3, 10)})
	if err := m.CorruptEntry(1, 1); err != nil {
		t.Fatal(err)
	}
	if err := m.CorruptEntry(1, 7); !errors.Is(err, ErrNotFound) {
		t.Fatalf("CorruptEntry of a missing record: %v", err)
	}
	if e, err := m.Entry(1, 1); !errors.Is(err, ErrCorrupt) || e.Value != nil {
		t.Fatalf("Entry of a corrupt record = %+v, %v; want ErrCorrupt", e, err)
	}
	if _, err := m.Entries(1, 0, 0, 0); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Entries over a corrupt record: %v", err)
	}
	m.Crash() // the damage is on the disk, not only in the visible copy
	if _, err := m.Entry(1, 1); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Entry of a corrupt record after crash: %v", err)
	}
	if _, err := m.Entry(1, 0); err != nil {
		t.Fatalf("undamaged neighbour: %v", err)
	}
}
