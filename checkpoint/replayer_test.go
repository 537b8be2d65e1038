package checkpoint

import (
	"bufio"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/logstore"
	"github.com/multipaxos/engine/statemachine"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// The test log: instance i holds the commands "k<i%keys>=v<i>" (two of them when
// i is a multiple of 7), so the state after every instance below n is easy to
// compute on its own.
const testKeys = 50

func valueAt(i ids.InstanceID) []byte {
	v := fmt.Sprintf("k%d=v%d", i%testKeys, i)
	if i%7 == 0 {
		v += fmt.Sprintf(";x=%d", i)
	}
	return []byte(v)
}

func decodeTestValue(value []byte) ([][]byte, error) {
	var cmds [][]byte
	for _, c := range strings.Split(string(value), ";") {
		cmds = append(cmds, []byte(c))
	}
	return cmds, nil
}

// stateBelow is the state after executing every instance below n.
func stateBelow(n ids.InstanceID) map[string]string {
	st := map[string]string{}
	for i := ids.InstanceID(0); i < n; i++ {
		cmds, _ := decodeTestValue(valueAt(i))
		for _, c := range cmds {
			k, v, _ := strings.Cut(string(c), "=")
			st[k] = v
		}
	}
	return st
}

// testLog is a logstore.MemStore behind a lock (MemStore is single-goroutine),
// with the chosen point the Replayer reads.
type testLog struct {
	mu     sync.Mutex
	store  *logstore.MemStore
	chosen atomic.Uint64
	group  ids.GroupID
}

func newTestLog(g ids.GroupID) *testLog {
	return &testLog{store: logstore.NewMemStore(), group: g}
}

func (l *testLog) Entries(g ids.GroupID, from ids.InstanceID, maxCount, maxBytes int) ([]logstore.Entry, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.store.Entries(g, from, maxCount, maxBytes)
}

// appendChosen commits instances [Chosen, to) as chosen.
func (l *testLog) appendChosen(t *testing.T, to ids.InstanceID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	from := ids.InstanceID(l.chosen.Load())
	var entries []logstore.Entry
	for i := from; i < to; i++ {
		entries = append(entries, logstore.Entry{Instance: i, Ballot: ids.Ballot{Number: 1, Node: 1}, Value: valueAt(i)})
	}
	var commitErr error
	l.store.Commit(logstore.Batch{Writes: []logstore.GroupWrite{{Group: l.group, Entries: entries}}, Sync: true},
		func(err error) { commitErr = err })
	l.store.Sync()
	if commitErr != nil {
		t.Error(commitErr)
	}
	l.chosen.Store(uint64(to))
}

func (l *testLog) trim(t *testing.T, below ids.InstanceID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.store.Trim(l.group, below, nil); err != nil {
		t.Fatal(err)
	}
}

func (l *testLog) Chosen() ids.InstanceID { return ids.InstanceID(l.chosen.Load()) }

// copyWorld holds what the test copies of one test share: failures to inject
// and the violations of the contract they saw.
type copyWorld struct {
	mu         sync.Mutex
	failAt     map[ids.InstanceID]int // instance -> Execute failures still to inject
	calls      map[ids.InstanceID]int // Execute calls per instance
	violations []string
	open       int  // copies open now
	inPlace    bool // Flush rewrites its file in place (else: temporary file and rename)
	flushFail  bool
}

func newCopyWorld() *copyWorld {
	return &copyWorld{failAt: map[ids.InstanceID]int{}, calls: map[ids.InstanceID]int{}, inPlace: true}
}

func (w *copyWorld) violate(format string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.violations = append(w.violations, fmt.Sprintf(format, args...))
}

func (w *copyWorld) check(t *testing.T) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.violations) > 0 {
		t.Fatalf("contract violations: %v", w.violations)
	}
}

// testCopy is a statemachine.Copy: a map saved by Flush to one file, "state",
// whose first line is the applied instance.
type testCopy struct {
	w       *copyWorld
	dir     string
	state   map[string]string
	applied ids.InstanceID
	closed  bool
}

const stateFile = "state"

func (w *copyWorld) factory(g ids.GroupID, dir string) (statemachine.Copy, error) {
	applied, state, err := readStateFile(filepath.Join(dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		applied, state, err = 0, map[string]string{}, nil
	}
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	w.open++
	if w.open > 1 {
		w.violations = append(w.violations, "two copies open at once")
	}
	w.mu.Unlock()
	return &testCopy{w: w, dir: dir, state: state, applied: applied}, nil
}

func readStateFile(path string) (ids.InstanceID, map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0, nil, fmt.Errorf("%s: empty", path)
	}
	applied, err := strconv.ParseUint(sc.Text(), 10, 64)
	if err != nil {
		return 0, nil, err
	}
	state := map[string]string{}
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")
		state[k] = v
	}
	return ids.InstanceID(applied), state, sc.Err()
}

func (c *testCopy) Execute(inst ids.InstanceID, cmds [][]byte) ([][]byte, error) {
	w := c.w
	w.mu.Lock()
	w.calls[inst]++
	fail := w.failAt[inst] > 0
	if fail {
		w.failAt[inst]--
	}
	w.mu.Unlock()
	if c.closed {
		w.violate("Execute(%d) on a closed copy", inst)
	}
	if inst != c.applied {
		w.violate("Execute(%d), expected %d", inst, c.applied)
	}
	if fail {
		return nil, errors.New("injected failure")
	}
	for _, cmd := range cmds {
		k, v, _ := strings.Cut(string(cmd), "=")
		c.state[k] = v
	}
	c.applied = inst + 1
	return nil, nil
}

func (c *testCopy) Applied() ids.InstanceID { return c.applied }

func (c *testCopy) Flush() error {
	if c.w.flushFail {
		return errors.New("injected flush failure")
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d\n", c.applied)
	for _, k := range slices.Sorted(maps.Keys(c.state)) {
		fmt.Fprintf(&b, "%s=%s\n", k, c.state[k])
	}
	path := filepath.Join(c.dir, stateFile)
	if c.w.inPlace {
		return os.WriteFile(path, []byte(b.String()), 0o644)
	}
	if err := os.WriteFile(path+".tmp", []byte(b.String()), 0o644); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}

func (c *testCopy) Close() error {
	if c.closed {
		c.w.violate("copy closed twice")
	}
	c.closed = true
	c.w.mu.Lock()
	c.w.open--
	c.w.mu.Unlock()
	return nil
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func newTestReplayer(t *testing.T, dir string, l *testLog, w *copyWorld) *Replayer {
	t.Helper()
	r, err := NewReplayer(ReplayerConfig{
		Group: l.group, Dir: dir, Factory: w.factory, Log: l, Decode: decodeTestValue, Chosen: l.Chosen,
		PollInterval: 5 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// checkImage checks that the image in dir holds exactly the state below inst.
func checkImage(t *testing.T, dir string, inst ids.InstanceID) {
	t.Helper()
	applied, state, err := readStateFile(filepath.Join(dir, stateFile))
	if err != nil {
		t.Fatal(err)
	}
	if applied != inst {
		t.Fatalf("image of instance %d holds the state of %d", inst, applied)
	}
	if want := stateBelow(inst); !maps.Equal(state, want) {
		t.Fatalf("image of instance %d: state %v, want %v", inst, state, want)
	}
}

func TestReplayerFeedsAndCheckpoints(t *testing.T) {
	l, w := newTestLog(3), newCopyWorld()
	r := newTestReplayer(t, filepath.Join(t.TempDir(), "copy"), l, w)
	r.Start()
	for n := ids.InstanceID(100); n <= 1000; n += 100 {
		l.appendChosen(t, n)
		r.Notify()
	}
	waitFor(t, "the copy to reach 1000", func() bool { return r.Applied() == 1000 })
	img := t.TempDir()
	inst, err := r.Checkpoint(img)
	if err != nil || inst != 1000 {
		t.Fatalf("Checkpoint: %d, %v", inst, err)
	}
	checkImage(t, img, 1000)
	if _, err := r.Checkpoint(img); err == nil {
		t.Fatal("Checkpoint into a directory that already holds the files succeeded")
	}
	w.check(t)
	for i := ids.InstanceID(0); i < 1000; i++ {
		if w.calls[i] != 1 {
			t.Fatalf("instance %d executed %d times", i, w.calls[i])
		}
	}
}

// TestReplayerCheckpointWhileFeeding: images taken while the feeder runs each
// hold exactly the state below their instance. Run with -race.
func TestReplayerCheckpointWhileFeeding(t *testing.T) {
	l, w := newTestLog(1), newCopyWorld()
	r := newTestReplayer(t, filepath.Join(t.TempDir(), "copy"), l, w)
	r.Start()
	const last = 3000
	stop := make(chan struct{})
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for n := ids.InstanceID(10); n <= last; n += 10 {
			select {
			case <-stop:
				return
			default:
			}
			l.appendChosen(t, n)
			r.Notify()
			if n%200 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	defer func() { close(stop); <-writerDone }()
	var prev ids.InstanceID
	for k := 0; k < 30 || r.Applied() < last; k++ {
		img := t.TempDir()
		inst, err := r.Checkpoint(img)
		if err != nil {
			t.Fatal(err)
		}
		if inst < prev {
			t.Fatalf("image %d after image %d", inst, prev)
		}
		prev = inst
		checkImage(t, img, inst)
		if k > 10000 {
			t.Fatal("the copy never caught up")
		}
	}
	w.check(t)
}

// TestReplayerExecuteErrorRetried: a failing Execute stalls the copy at that
// instance and is retried until it succeeds; nothing is skipped.
func TestReplayerExecuteErrorRetried(t *testing.T) {
	l, w := newTestLog(2), newCopyWorld()
	w.failAt[5] = 3
	w.failAt[6] = 1
	r := newTestReplayer(t, filepath.Join(t.TempDir(), "copy"), l, w)
	l.appendChosen(t, 10)
	r.Start()
	waitFor(t, "the copy to get past the failures", func() bool { return r.Applied() == 10 })
	w.check(t)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.calls[5] != 4 || w.calls[6] != 2 || w.calls[4] != 1 || w.calls[7] != 1 {
		t.Fatalf("Execute calls: %v", w.calls)
	}
}

// TestReplayerReset: a copy behind a trimmed log stalls, and a Reset with an
// image of a later instance (made by another member's replayer) moves it there,
// after which it follows the log again.
func TestReplayerReset(t *testing.T) {
	l := newTestLog(4)
	l.appendChosen(t, 600)
	other := newTestReplayer(t, filepath.Join(t.TempDir(), "other"), l, newCopyWorld())
	other.Start()
	waitFor(t, "the other copy to reach 600", func() bool { return other.Applied() == 600 })
	imgDir := t.TempDir()
	inst, err := other.Checkpoint(imgDir)
	if err != nil || inst != 600 {
		t.Fatalf("Checkpoint: %d %v", inst, err)
	}
	m, err := Seal(imgDir, 4, inst, []byte("sys"))
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Close(); err != nil {
		t.Fatal(err)
	}

	l.trim(t, 600)
	w := newCopyWorld()
	copyDir := filepath.Join(t.TempDir(), "copy")
	core, logs := observer.New(zap.WarnLevel)
	r, err := NewReplayer(ReplayerConfig{Group: 4, Dir: copyDir, Factory: w.factory, Log: l, Decode: decodeTestValue,
		Chosen: l.Chosen, PollInterval: time.Millisecond, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.Start()
	l.appendChosen(t, 650)
	r.Notify()
	waitFor(t, "a warning that the log was trimmed past the copy", func() bool {
		return logs.FilterMessageSnippet("trimmed past the copy").Len() > 0
	})
	time.Sleep(20 * time.Millisecond) // more polls: still one warning, still no progress
	if n := logs.FilterMessageSnippet("trimmed past the copy").Len(); n != 1 || r.Applied() != 0 {
		t.Fatalf("a copy behind the trimmed log: %d warnings, at instance %d", n, r.Applied())
	}
	if err := r.Reset(imgDir); err != nil {
		t.Fatalf("Reset: %v", err)
	}
	if a := r.Applied(); a < 600 {
		t.Fatalf("after Reset the copy is at %d", a)
	}
	l.appendChosen(t, 900)
	r.Notify()
	waitFor(t, "the reset copy to reach 900", func() bool { return r.Applied() == 900 })
	img := t.TempDir()
	if inst, err := r.Checkpoint(img); err != nil || inst != 900 {
		t.Fatalf("Checkpoint after Reset: %d %v", inst, err)
	}
	checkImage(t, img, 900)
	if err := VerifyImage(imgDir, m); err != nil {
		t.Fatalf("the installed image changed: %v", err)
	}
	for _, leftover := range []string{copyDir + ".new", copyDir + ".old", filepath.Join(copyDir, ManifestName)} {
		if _, err := os.Lstat(leftover); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s after Reset: %v", leftover, err)
		}
	}
	// A copy already past the image keeps its state.
	if err := r.Reset(imgDir); err != nil || r.Applied() != 900 {
		t.Fatalf("Reset to an older image: %v, copy at %d", err, r.Applied())
	}
	m.Group = 5
	wrong := t.TempDir()
	if err := CopyFiles(imgDir, wrong, []string{stateFile}); err != nil {
		t.Fatal(err)
	}
	if err := writeManifest(wrong, m); err != nil {
		t.Fatal(err)
	}
	if err := r.Reset(wrong); !errors.Is(err, ErrBadImage) {
		t.Fatalf("Reset with another group's image: %v", err)
	}
	if err := r.Reset(t.TempDir()); !errors.Is(err, ErrBadImage) {
		t.Fatalf("Reset with no image: %v", err)
	}
	w.check(t)
}

// TestReplayerImagesSurviveInPlaceWrites: the default byte copies keep an image
// intact when the copy later rewrites its file in place; with LinkFiles such a
// copy would change the image (that is why LinkFiles is off by default).
func TestReplayerImagesSurviveInPlaceWrites(t *testing.T) {
	l, w := newTestLog(1), newCopyWorld()
	r := newTestReplayer(t, filepath.Join(t.TempDir(), "copy"), l, w)
	r.Start()
	l.appendChosen(t, 100)
	waitFor(t, "100", func() bool { return r.Applied() == 100 })
	first := t.TempDir()
	if _, err := r.Checkpoint(first); err != nil {
		t.Fatal(err)
	}
	m, err := Seal(first, 1, 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	l.appendChosen(t, 200)
	r.Notify()
	waitFor(t, "200", func() bool { return r.Applied() == 200 })
	if _, err := r.Checkpoint(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	if err := VerifyImage(first, m); err != nil {
		t.Fatalf("an image changed when the copy flushed again: %v", err)
	}
	checkImage(t, first, 100)
}

// TestReplayerLinkFiles: with LinkFiles and a copy that writes new files and
// renames them, images are hard links and stay intact.
func TestReplayerLinkFiles(t *testing.T) {
	l, w := newTestLog(1), newCopyWorld()
	w.inPlace = false
	r, err := NewReplayer(ReplayerConfig{Group: 1, Dir: filepath.Join(t.TempDir(), "copy"), Factory: w.factory,
		Log: l, Decode: decodeTestValue, Chosen: l.Chosen, LinkFiles: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.Start()
	l.appendChosen(t, 50)
	r.Notify()
	waitFor(t, "50", func() bool { return r.Applied() == 50 })
	first := t.TempDir()
	if _, err := r.Checkpoint(first); err != nil {
		t.Fatal(err)
	}
	a, errA := os.Stat(filepath.Join(first, stateFile))
	c, errC := os.Stat(filepath.Join(r.cfg.Dir, stateFile))
	if err := errors.Join(errA, errC); err != nil || !os.SameFile(a, c) {
		t.Fatalf("the image's file is no hard link of the copy's: %v", err)
	}
	l.appendChosen(t, 80)
	r.Notify()
	waitFor(t, "80", func() bool { return r.Applied() == 80 })
	if _, err := r.Checkpoint(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	checkImage(t, first, 50)
}

// TestReplayerRecoversInterruptedReset: NewReplayer finishes a swap cut between
// its renames and drops the leftovers of one cut before or after them.
func TestReplayerRecoversInterruptedReset(t *testing.T) {
	saveState := func(dir string, applied ids.InstanceID) {
		t.Helper()
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, stateFile), fmt.Appendf(nil, "%d\n", applied), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name          string
		dir, old, new ids.InstanceID // 0: absent; else the state's applied
		want          ids.InstanceID
	}{
		{name: "between the renames", old: 10, new: 20, want: 20},
		{name: "building the new copy", dir: 10, new: 20, want: 10},
		{name: "removing the old copy", dir: 20, old: 10, want: 20},
		{name: "only the old copy", old: 10, want: 10},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			copyDir := filepath.Join(t.TempDir(), "copy")
			for dir, applied := range map[string]ids.InstanceID{copyDir: c.dir, copyDir + ".old": c.old, copyDir + ".new": c.new} {
				if applied != 0 {
					saveState(dir, applied)
				}
			}
			w := newCopyWorld()
			r := newTestReplayer(t, copyDir, newTestLog(1), w)
			if r.Applied() != c.want {
				t.Fatalf("copy opened at %d, want %d", r.Applied(), c.want)
			}
			for _, leftover := range []string{copyDir + ".new", copyDir + ".old"} {
				if _, err := os.Lstat(leftover); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("%s left: %v", leftover, err)
				}
			}
		})
	}
}

func TestReplayerCloseAndErrors(t *testing.T) {
	l, w := newTestLog(1), newCopyWorld()
	base := ReplayerConfig{Group: 1, Dir: filepath.Join(t.TempDir(), "copy"), Factory: w.factory, Log: l,
		Decode: decodeTestValue, Chosen: l.Chosen}
	for name, mutate := range map[string]func(*ReplayerConfig){
		"dir":     func(c *ReplayerConfig) { c.Dir = "" },
		"factory": func(c *ReplayerConfig) { c.Factory = nil },
		"log":     func(c *ReplayerConfig) { c.Log = nil },
		"decode":  func(c *ReplayerConfig) { c.Decode = nil },
		"chosen":  func(c *ReplayerConfig) { c.Chosen = nil },
	} {
		cfg := base
		mutate(&cfg)
		if _, err := NewReplayer(cfg); !errors.Is(err, ErrBadConfig) {
			t.Errorf("without %s: %v", name, err)
		}
	}
	failing := base
	failing.Factory = func(ids.GroupID, string) (statemachine.Copy, error) { return nil, errors.New("no") }
	if _, err := NewReplayer(failing); err == nil {
		t.Error("a failing factory went unnoticed")
	}

	// Closed before it started: no goroutine, the copy closed, every call refused.
	r, err := NewReplayer(base)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r.Start()
	r.Notify()
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := r.Checkpoint(t.TempDir()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Checkpoint after Close: %v", err)
	}
	if w.open != 0 {
		t.Fatalf("%d copies open after Close", w.open)
	}

	// A subdirectory in the copy's directory would be lost in transfer.
	r, err = NewReplayer(base)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.Start()
	if err := os.Mkdir(filepath.Join(base.Dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Checkpoint(t.TempDir()); !errors.Is(err, ErrBadImage) {
		t.Fatalf("Checkpoint of a copy with a subdirectory: %v", err)
	}
	w.flushFail = true
	if _, err := r.Checkpoint(t.TempDir()); err == nil {
		t.Fatal("a failed Flush went unnoticed")
	}
	w.flushFail = false
	w.check(t)
}
