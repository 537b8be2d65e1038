package logstore

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/multipaxos/engine/ids"
)

func openPebble(t testing.TB, dir string, opts Options) *PebbleStore {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = zaptest.NewLogger(t)
	}
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestPebbleReopen(t *testing.T) {
	dir := t.TempDir()
	s := openPebble(t, dir, Options{})
	meta := Meta{Promised: ids.Ballot{Number: 12, Node: 3}, ChosenNext: 8}
	mustCommit(t, s, GroupWrite{Group: 1, Meta: &meta, Entries: entries(0, 10, 50)})
	if err := s.Trim(1, 4, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openPebble(t, dir, Options{})
	defer s.Close()
	meta.MinRetained = 4
	if m, err := s.LoadMeta(1); !sameMeta(m, meta) || err != nil {
		t.Fatalf("LoadMeta after reopen = %+v, %v; want %+v", m, err, meta)
	}
	if got, err := s.Entries(1, 4, 0, 0); err != nil || !equalEntries(got, entries(4, 10, 50)) {
		t.Fatalf("Entries after reopen: %d, %v", len(got), err)
	}
	if _, err := s.Entry(1, 3); !errors.Is(err, ErrNotFound) {
		t.Fatalf("trimmed Entry after reopen: %v", err)
	}
}

// TestPebbleGroupCommit: concurrent Sync commits share WAL fsyncs. That fewer
// fsyncs than commits happen is structural (64 writers each wait for their own
// fsync, so while one runs the others queue up); the ratio is only logged.
func TestPebbleGroupCommit(t *testing.T) {
	s := openPebble(t, t.TempDir(), Options{})
	defer s.Close()
	const writers, perWriter = 64, 20
	var wg sync.WaitGroup
	var failed atomic.Int64
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				err := commitWait(s, Batch{Sync: true, Writes: []GroupWrite{{
					Group: ids.GroupID(w), Entries: []Entry{ent(ids.InstanceID(i), 1, strings.Repeat("v", 100))},
				}}})
				if err != nil {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d commits failed", failed.Load())
	}
	st := s.Stats()
	if st.Batches != writers*perWriter || st.Writes != writers*perWriter {
		t.Fatalf("Stats = %+v, want %d batches and writes", st, writers*perWriter)
	}
	if st.Syncs == 0 || st.Syncs >= st.Writes {
		t.Fatalf("%d fsyncs for %d Sync commits: want 0 < fsyncs < commits", st.Syncs, st.Writes)
	}
	t.Logf("%d writes, %d WAL fsyncs: %.1f writes/fsync", st.Writes, st.Syncs, float64(st.Writes)/float64(st.Syncs))
	for w := range writers {
		if got, err := s.Entries(ids.GroupID(w), 0, 0, 0); len(got) != perWriter || err != nil {
			t.Fatalf("group %d: %d entries, %v", w, len(got), err)
		}
	}
}

// TestPebbleSyncsCounted: one writer waiting for each commit gets one fsync per
// commit, which shows that Stats.Syncs counts fsyncs at the file system.
func TestPebbleSyncsCounted(t *testing.T) {
	s := openPebble(t, t.TempDir(), Options{})
	defer s.Close()
	before := s.Stats().Syncs
	for i := range 10 {
		mustCommit(t, s, GroupWrite{Group: 1, Entries: []Entry{ent(ids.InstanceID(i), 1, "v")}})
	}
	if got := s.Stats().Syncs - before; got < 10 {
		t.Fatalf("%d fsyncs counted for 10 sequential Sync commits", got)
	}
	// Commits without Sync need no fsync.
	before = s.Stats().Syncs
	for i := range 10 {
		if err := commitWait(s, Batch{Writes: []GroupWrite{{Group: 2, Entries: []Entry{ent(ids.InstanceID(i), 1, "v")}}}}); err != nil {
			t.Fatal(err)
		}
	}
	if got := s.Stats().Syncs - before; got != 0 {
		t.Fatalf("%d fsyncs for commits without Sync", got)
	}
}

// TestPebbleQueueBound: with a queue bound far below the offered load, Commit
// waits for room instead of failing, and everything commits.
func TestPebbleQueueBound(t *testing.T) {
	s := openPebble(t, t.TempDir(), Options{CommitBatchBytesMax: 1 << 10, CommitQueueBytesMax: 2 << 10, CommitPipelineDepth: 1})
	defer s.Close()
	var wg sync.WaitGroup
	var failed atomic.Int64
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				// Not waited for: the queue fills up.
				s.Commit(Batch{Sync: i%10 == 0, Writes: []GroupWrite{{Group: ids.GroupID(w),
					Entries: []Entry{ent(ids.InstanceID(i), 1, strings.Repeat("x", 300))}}}},
					func(err error) {
						if err != nil {
							failed.Add(1)
						}
					})
			}
		}()
	}
	wg.Wait()
	if err := commitWait(s, Batch{Sync: true}); err != nil {
		t.Fatal(err)
	}
	if failed.Load() != 0 {
		t.Fatalf("%d commits failed", failed.Load())
	}
	for w := range 8 {
		if got, _ := s.Entries(ids.GroupID(w), 0, 0, 0); len(got) != 50 {
			t.Fatalf("group %d: %d entries, want 50", w, len(got))
		}
	}
}

// TestPebbleCorruption damages records through the pebble DB underneath the
// store: every read of a damaged record must fail with ErrCorrupt, never return
// the damaged bytes.
func TestPebbleCorruption(t *testing.T) {
	dir := t.TempDir()
	s := openPebble(t, dir, Options{})
	meta := Meta{Promised: ids.Ballot{Number: 2, Node: 1}}
	mustCommit(t, s, GroupWrite{Group: 1, Meta: &meta, Entries: entries(0, 4, 20)})
	if err := s.Trim(2, 5, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	db, err := pebble.Open(dir, &pebble.Options{FormatMajorVersion: pebble.FormatNewest})
	if err != nil {
		t.Fatal(err)
	}
	get := func(key []byte) []byte {
		v, closer, err := db.Get(key)
		if err != nil {
			t.Fatal(err)
		}
		defer closer.Close()
		return append([]byte(nil), v...)
	}
	set := func(key, v []byte) {
		if err := db.Set(key, v, pebble.Sync); err != nil {
			t.Fatal(err)
		}
	}
	rec := get(logKey(1, 1))
	flipped := append([]byte(nil), rec...)
	flipped[entryHeaderLen+3] ^= 0x01 // one bit of the value
	set(logKey(1, 1), flipped)
	set(logKey(1, 2), rec)              // a valid record under the wrong instance
	set(logKey(1, 3), rec[:len(rec)/2]) // a torn record
	m := get(metaKey(1))
	m[len(m)-1] ^= 0x80 // the checksum itself
	set(metaKey(1), m)
	tr := get(trimKey(2))
	tr[0] = formatEntryV1 // a record of another kind
	set(trimKey(2), tr)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s = openPebble(t, dir, Options{})
	defer s.Close()
	if e, err := s.Entry(1, 0); err != nil || len(e.Value) != 20 {
		t.Fatalf("undamaged Entry(1, 0) = %+v, %v", e, err)
	}
	for inst := ids.InstanceID(1); inst <= 3; inst++ {
		if e, err := s.Entry(1, inst); !errors.Is(err, ErrCorrupt) || e.Value != nil {
			t.Errorf("Entry(1, %d) = %+v, %v; want ErrCorrupt", inst, e, err)
		} else {
			t.Logf("Entry(1, %d): %v", inst, err)
		}
	}
	if got, err := s.Entries(1, 0, 0, 0); !errors.Is(err, ErrCorrupt) || got != nil {
		t.Errorf("Entries over a damaged record = %d entries, %v; want ErrCorrupt", len(got), err)
	}
	if _, err := s.LoadMeta(1); !errors.Is(err, ErrCorrupt) {
		t.Errorf("LoadMeta with a damaged meta record: %v; want ErrCorrupt", err)
	}
	if _, err := s.LoadMeta(2); !errors.Is(err, ErrCorrupt) {
		t.Errorf("LoadMeta with a damaged trim record: %v; want ErrCorrupt", err)
	}
}

// TestPebbleFsyncFailure injects a failing WAL fsync under concurrent Sync
// commits. Every commit reported done(nil) must survive a crash right after (a
// crash clone of the file system keeps only what was synced); the failing commit
// and every later one must get ErrFatal; the store must stop (fail-stop).
func TestPebbleFsyncFailure(t *testing.T) {
	mem := vfs.NewCrashableMem()
	var failSync atomic.Bool
	fs := errorfs.Wrap(mem, errorfs.InjectorFunc(func(op errorfs.Op) error {
		if failSync.Load() && (op.Kind == errorfs.OpFileSync || op.Kind == errorfs.OpFileSyncData) &&
			strings.HasSuffix(op.Path, ".log") {
			return errorfs.ErrInjected
		}
		return nil
	}))
	s := openPebble(t, "db", Options{FS: fs})

	const writers = 8
	var (
		mu     sync.Mutex
		acked  []GroupWrite
		wg     sync.WaitGroup
		ackedN atomic.Int64
	)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				gw := GroupWrite{Group: ids.GroupID(w), Entries: []Entry{ent(ids.InstanceID(i), 1, "acked value")}}
				if err := commitWait(s, Batch{Sync: true, Writes: []GroupWrite{gw}}); err != nil {
					if !errors.Is(err, ErrFatal) {
						t.Errorf("writer %d: commit failed with %v, want ErrFatal", w, err)
					}
					return // fail-stop: every later commit fails too (checked below)
				}
				mu.Lock()
				acked = append(acked, gw)
				mu.Unlock()
				if ackedN.Add(1) == 200 {
					failSync.Store(true)
				}
			}
		}()
	}
	wg.Wait()
	// A crash now: only what was synced survives.
	crashed := mem.CrashClone(vfs.CrashCloneCfg{})

	if err := commitWait(s, Batch{Sync: true}); !errors.Is(err, ErrFatal) {
		t.Fatalf("commit after the failure: %v, want ErrFatal", err)
	}
	if _, err := s.Entry(0, 0); !errors.Is(err, ErrFatal) {
		t.Fatalf("read after the failure: %v, want ErrFatal", err)
	}
	if err := s.Close(); !errors.Is(err, ErrFatal) {
		t.Fatalf("Close after the failure: %v, want ErrFatal", err)
	}

	s = openPebble(t, "db", Options{FS: crashed})
	defer s.Close()
	for _, gw := range acked {
		e := gw.Entries[0]
		if _, err := s.Entry(gw.Group, e.Instance); err != nil {
			t.Fatalf("acked write (group %d, instance %d) lost in the crash: %v", gw.Group, e.Instance, err)
		}
	}
	t.Logf("%d acked writes all survived the crash", len(acked))
}

func TestOptionsValidate(t *testing.T) {
	err := Options{MemTableSize: 10, CacheSize: -1, CommitBatchBytesMax: -1, CommitQueueBytesMax: -5,
		CommitPipelineDepth: 100}.withDefaults().validate()
	if err == nil {
		t.Fatal("no error for invalid options")
	}
	for _, field := range []string{"MemTableSize", "CacheSize", "CommitBatchBytesMax", "CommitQueueBytesMax", "CommitPipelineDepth"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("error does not name %s: %v", field, err)
		}
	}
	if err := (Options{}).withDefaults().validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	if _, err := Open(t.TempDir(), Options{CommitPipelineDepth: -1}); err == nil {
		t.Fatal("Open accepted invalid options")
	}
}

// TestPebbleLoggerFatalPanics: pebble must not continue after Fatalf, so the
// adapter panics (with a value the committer recognises) after logging.
func TestPebbleLoggerFatalPanics(t *testing.T) {
	defer func() {
		if r, ok := recover().(pebbleFatal); !ok || r.msg != "fatal commit error: disk gone" {
			t.Fatalf("recovered %#v, want pebbleFatal", r)
		}
	}()
	pebbleLogger{s: zap.NewNop().Sugar()}.Fatalf("fatal commit error: %s", "disk gone")
	t.Fatal("Fatalf returned")
}

func TestPebbleCorruptionIsErrCorrupt(t *testing.T) {
	err := asCorrupt(fmt.Errorf("block: %w", pebble.ErrCorruption))
	if !errors.Is(err, ErrCorrupt) || !errors.Is(err, pebble.ErrCorruption) {
		t.Fatalf("a pebble checksum failure is not an ErrCorrupt: %v", err)
	}
	if other := errors.New("io"); asCorrupt(other) != other {
		t.Fatal("another error was changed")
	}
}
