package logstore

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/multipaxos/engine/ids"
)

// The tests in this file run against both stores: the simulation's MemStore must
// behave like the PebbleStore it stands in for.

type storeKind struct {
	name string
	open func(t *testing.T) Store
	// reopen closes s and opens the same data again; nil if the kind cannot.
	reopen func(t *testing.T, s Store) Store
}

var storeKinds = []storeKind{
	{
		name: "pebble",
		open: func(t *testing.T) Store {
			s, err := Open(t.TempDir(), Options{Logger: zaptest.NewLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = s.Close() })
			return s
		},
	},
	{
		name: "mem",
		open: func(t *testing.T) Store { return NewMemStore() },
	},
}

func forEachStore(t *testing.T, f func(t *testing.T, s Store)) {
	for _, k := range storeKinds {
		t.Run(k.name, func(t *testing.T) { f(t, k.open(t)) })
	}
}

// commitWait commits b and waits for its done.
func commitWait(s Store, b Batch) error {
	ch := make(chan error, 1)
	s.Commit(b, func(err error) { ch <- err })
	if m, ok := s.(*MemStore); ok {
		m.Sync()
	}
	return <-ch
}

func mustCommit(t *testing.T, s Store, writes ...GroupWrite) {
	t.Helper()
	if err := commitWait(s, Batch{Writes: writes, Sync: true}); err != nil {
		t.Fatalf("commit: %v", err)
	}
}

func ent(inst ids.InstanceID, ballot uint64, value string) Entry {
	e := Entry{Instance: inst, Ballot: ids.Ballot{Number: ballot, Node: 7}}
	if value != "" {
		e.Value = []byte(value)
	}
	return e
}

// entries returns records from..to-1 with values of size bytes.
func entries(from, to ids.InstanceID, size int) []Entry {
	var es []Entry
	for i := from; i < to; i++ {
		es = append(es, ent(i, 3, string(bytes.Repeat([]byte{byte('a' + i%26)}, size))))
	}
	return es
}

func equalEntries(a, b []Entry) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Instance != b[i].Instance || a[i].Ballot != b[i].Ballot || !bytes.Equal(a[i].Value, b[i].Value) {
			return false
		}
	}
	return true
}

func TestRoundTrip(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		if m, err := s.LoadMeta(9); err != nil || !sameMeta(m, Meta{}) {
			t.Fatalf("LoadMeta of a new group = %+v, %v; want zero", m, err)
		}
		meta := Meta{Promised: ids.Ballot{Number: 5, Node: 2}, ChosenNext: 3}
		mustCommit(t, s,
			GroupWrite{Group: 1, Meta: &meta, Entries: []Entry{ent(0, 1, "a"), ent(1, 1, ""), ent(2, 5, "ccc")}},
			GroupWrite{Group: 2, Entries: []Entry{ent(0, 9, "other group")}},
		)
		if m, err := s.LoadMeta(1); err != nil || !sameMeta(m, meta) {
			t.Fatalf("LoadMeta = %+v, %v; want %+v", m, err, meta)
		}
		for _, want := range []Entry{ent(0, 1, "a"), ent(1, 1, ""), ent(2, 5, "ccc")} {
			got, err := s.Entry(1, want.Instance)
			if err != nil || !equalEntries([]Entry{got}, []Entry{want}) {
				t.Fatalf("Entry(1, %d) = %+v, %v; want %+v", want.Instance, got, err, want)
			}
		}
		if got, err := s.Entry(2, 0); err != nil || string(got.Value) != "other group" {
			t.Fatalf("Entry(2, 0) = %+v, %v", got, err)
		}
		if _, err := s.Entry(1, 3); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Entry of a missing instance: %v, want ErrNotFound", err)
		}
		if _, err := s.Entry(3, 0); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Entry of a missing group: %v, want ErrNotFound", err)
		}
		// A later write to the same record wins, also within one batch; a write
		// without Meta leaves the meta alone.
		mustCommit(t, s, GroupWrite{Group: 1, Entries: []Entry{ent(2, 6, "x"), ent(2, 7, "y")}})
		if got, _ := s.Entry(1, 2); got.Ballot.Number != 7 || string(got.Value) != "y" {
			t.Fatalf("overwritten Entry = %+v, want ballot 7 value y", got)
		}
		if m, _ := s.LoadMeta(1); !sameMeta(m, meta) {
			t.Fatalf("meta changed by a write without Meta: %+v", m)
		}
	})
}

func TestEntriesLimits(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		// 0..5 and 7..9 of group 4, 10-byte values; group 5 right after it in key
		// order, so a scan that ran past its group would show.
		es := append(entries(0, 6, 10), entries(7, 10, 10)...)
		mustCommit(t, s, GroupWrite{Group: 4, Entries: es}, GroupWrite{Group: 5, Entries: entries(0, 3, 10)})
		for _, tc := range []struct {
			from               ids.InstanceID
			maxCount, maxBytes int
			want               []Entry
		}{
			{0, 0, 0, es[:6]},    // stops at the gap at 6
			{0, 3, 0, es[:3]},    // maxCount
			{0, 0, 25, es[:2]},   // a third would make 30 bytes
			{0, 0, 30, es[:3]},   // exactly at the limit
			{2, 0, 5, es[2:3]},   // at least one, whatever its size
			{6, 0, 0, nil},       // nothing at from
			{7, 0, 0, es[6:]},    // stops at the end of the group
			{7, 2, 15, es[6:7]},  // the tighter limit wins
			{100, 10, 100, nil},  // past the end
			{5, -1, -1, es[5:6]}, // negative = no limit
		} {
			got, err := s.Entries(4, tc.from, tc.maxCount, tc.maxBytes)
			if err != nil || !equalEntries(got, tc.want) {
				t.Errorf("Entries(from %d, count %d, bytes %d) = %d entries, %v; want %d",
					tc.from, tc.maxCount, tc.maxBytes, len(got), err, len(tc.want))
			}
		}
	})
}

func TestLastInstance(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		if _, ok, err := s.LastInstance(1); ok || err != nil {
			t.Fatalf("LastInstance of an empty group: ok=%v err=%v", ok, err)
		}
		// 255 and 256 cross a byte boundary of the big-endian key.
		mustCommit(t, s, GroupWrite{Group: 1, Entries: []Entry{ent(3, 1, "a"), ent(256, 1, "b"), ent(255, 1, "c")}},
			GroupWrite{Group: 2, Entries: []Entry{ent(1000, 1, "d")}},
			GroupWrite{Group: 0, Entries: []Entry{ent(5000, 1, "d")}})
		if inst, ok, err := s.LastInstance(1); inst != 256 || !ok || err != nil {
			t.Fatalf("LastInstance = %d, %v, %v; want 256", inst, ok, err)
		}
	})
}

func TestTrim(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		meta := Meta{Promised: ids.Ballot{Number: 4, Node: 1}, ChosenNext: 10}
		mustCommit(t, s, GroupWrite{Group: 1, Meta: &meta, Entries: entries(0, 10, 4)},
			GroupWrite{Group: 2, Entries: entries(0, 10, 4)})
		if err := s.Trim(1, 5, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Entry(1, 4); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Entry below the trim point: %v, want ErrNotFound", err)
		}
		if got, err := s.Entries(1, 0, 0, 0); len(got) != 0 || err != nil {
			t.Fatalf("Entries from 0 after trim = %d, %v; want none", len(got), err)
		}
		if got, err := s.Entries(1, 5, 0, 0); len(got) != 5 || err != nil {
			t.Fatalf("Entries from 5 after trim = %d, %v; want 5", len(got), err)
		}
		if got, _ := s.Entries(2, 0, 0, 0); len(got) != 10 {
			t.Fatalf("trim of group 1 changed group 2: %d entries left", len(got))
		}
		want := meta
		want.MinRetained = 5
		if m, err := s.LoadMeta(1); !sameMeta(m, want) || err != nil {
			t.Fatalf("LoadMeta after trim = %+v, %v; want %+v", m, err, want)
		}
		// A lower trim point changes nothing.
		if err := s.Trim(1, 3, nil); err != nil {
			t.Fatal(err)
		}
		// A meta write from a caller that never saw the trim keeps MinRetained.
		meta.Promised.Number = 6
		mustCommit(t, s, GroupWrite{Group: 1, Meta: &meta})
		want.Promised.Number = 6
		if m, _ := s.LoadMeta(1); !sameMeta(m, want) {
			t.Fatalf("LoadMeta = %+v; want %+v", m, want)
		}
		// Trimming past the end empties the log; a checkpoint's base state is
		// kept with the trim point, and everything below it counts as chosen.
		if err := s.Trim(1, 100, []byte("base at 100")); err != nil {
			t.Fatal(err)
		}
		if m, _ := s.LoadMeta(1); m.MinRetained != 100 || m.ChosenNext != 100 || string(m.Base) != "base at 100" {
			t.Fatalf("LoadMeta after a trim past ChosenNext = %+v", m)
		}
		if _, ok, _ := s.LastInstance(1); ok {
			t.Fatal("LastInstance after trimming everything: want none")
		}
		mustCommit(t, s, GroupWrite{Group: 1, Entries: []Entry{ent(100, 1, "x")}})
		if inst, ok, _ := s.LastInstance(1); !ok || inst != 100 {
			t.Fatalf("LastInstance = %d, %v; want 100", inst, ok)
		}
	})
}

func TestClosed(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		var calls []error
		s.Commit(Batch{Writes: []GroupWrite{{Group: 1, Entries: entries(0, 1, 1)}}}, func(err error) { calls = append(calls, err) })
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		// Close completed the queued commit.
		if len(calls) != 1 || calls[0] != nil {
			t.Fatalf("queued commit's done calls at Close: %v", calls)
		}
		s.Commit(Batch{Sync: true}, func(err error) { calls = append(calls, err) })
		if len(calls) != 2 || !errors.Is(calls[1], ErrClosed) {
			t.Fatalf("commit after Close: %v", calls)
		}
		if _, err := s.Entry(1, 0); !errors.Is(err, ErrClosed) {
			t.Fatalf("Entry after Close: %v", err)
		}
		if _, err := s.LoadMeta(1); !errors.Is(err, ErrClosed) {
			t.Fatalf("LoadMeta after Close: %v", err)
		}
		if err := s.Trim(1, 1, nil); !errors.Is(err, ErrClosed) {
			t.Fatalf("Trim after Close: %v", err)
		}
		if err := s.Close(); !errors.Is(err, ErrClosed) {
			t.Fatalf("second Close: %v", err)
		}
	})
}

// TestDoneOrder: callbacks run in submission order, for batches that were not
// waited for one by one, mixing Sync and not.
func TestDoneOrder(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		const n = 500
		got := make(chan int, n)
		for i := range n {
			w := GroupWrite{Group: ids.GroupID(i % 7), Entries: []Entry{ent(ids.InstanceID(i), 1, fmt.Sprint(i))}}
			s.Commit(Batch{Writes: []GroupWrite{w}, Sync: i%3 == 0}, func(err error) {
				if err != nil {
					t.Errorf("commit %d: %v", i, err)
				}
				got <- i
			})
		}
		if err := commitWait(s, Batch{Sync: true}); err != nil { // a barrier without writes
			t.Fatal(err)
		}
		for i := range n {
			if j := <-got; j != i {
				t.Fatalf("done #%d was for commit %d", i, j)
			}
		}
		if st := s.Stats(); st.Batches != n+1 || st.Writes != n {
			t.Fatalf("Stats = %+v; want %d batches, %d writes", st, n+1, n)
		}
	})
}
