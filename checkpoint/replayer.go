package checkpoint

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/logstore"
	"github.com/multipaxos/engine/statemachine"
	"go.uber.org/zap"
)

// # The Replayer
//
// The second way of statemachine/checkpoint.go: the live state machine cannot
// make an image while it runs, so the engine keeps a second copy of the state in a
// directory of its own and feeds it the chosen instances from the log, behind the
// live one. An image is the copy's files, taken while the feeding pauses.
//
// Invariants:
//
//   - The copy has executed exactly the instances below next, each once, in order
//     (next starts at the copy's Applied() when it is opened). An instance whose
//     Execute fails is retried after a back-off, never skipped, like on the live
//     side (statemachine package doc).
//   - The copy is fed only instances below Chosen(): values in the log at or
//     above it may be merely accepted.
//   - Checkpoint and Reset hold the lock for their whole work, so no Execute runs
//     between Flush and the end of the copying: the image is the state after
//     exactly the instances below next.
//   - The copy's directory is, at every instant a crash can hit, either the old
//     copy or the complete new one (Reset below), never a mix.
//
// The feeder reads the log without the lock, and executes each instance under it,
// checking first that next and the copy's generation are still what it read the
// log for: a Reset in between makes it drop what it read and start again from the
// new copy's point.
//
// The log may lose instances the copy still needs: the group trims below an image
// it installed from another member, and the copy, behind, finds nothing at next.
// The Replayer then logs once and waits: the group calls Reset with that image.
//
// Reset replaces the copy's files with an image's without ever leaving a
// half-replaced directory: it builds Dir+".new" beside Dir, fsyncs it, renames Dir
// to Dir+".old", renames Dir+".new" to Dir, fsyncs the parent, and removes the
// old one. NewReplayer finishes or undoes what a crash interrupted: without Dir
// but with both others, the new copy was complete (it was made durable before the
// first rename), so it is renamed into place; otherwise the leftovers go.
//
// Files are copied byte by byte by default, in Checkpoint and in Reset: a copy
// that rewrites a file in place after a hard link would change the image the group
// keeps and serves to learners (or the copy would change when the image is
// removed). ReplayerConfig.LinkFiles hard-links instead, for copies that never
// change a file once written.

// LogReader reads chosen values of a group's log: logstore.Store has this method.
// It must be safe to call from the Replayer's goroutine while the engine writes.
type LogReader interface {
	// Entries returns consecutive records of g from `from`, at most maxCount of
	// them and about maxBytes of values (see logstore.Store.Entries); none if the
	// log holds no record at from.
	Entries(g ids.GroupID, from ids.InstanceID, maxCount, maxBytes int) ([]logstore.Entry, error)
}

// ReplayerConfig configures a Replayer. Group, Dir, Factory, Log, Decode and
// Chosen are required.
type ReplayerConfig struct {
	Group ids.GroupID
	// Dir is the copy's own directory, created if missing. Its siblings Dir+".new"
	// and Dir+".old" are the Replayer's too (see Reset).
	Dir string
	// Factory opens the copy in Dir.
	Factory statemachine.CopyFactory
	// Log is where the chosen values are read.
	Log LogReader
	// Decode turns one instance's value in the engine's format into the
	// application commands the state machine's Execute gets for it (possibly
	// none: Execute is called anyway, as on the live side). An error stalls the
	// feeding, retried, like an Execute error.
	Decode func(value []byte) (appCommands [][]byte, err error)
	// Chosen returns the first instance not known to be chosen; the copy is fed
	// only below it. It is called from the Replayer's goroutine and must be safe
	// from any goroutine.
	Chosen func() ids.InstanceID
	// LinkFiles hard-links files into images and from installed images, instead
	// of copying their bytes. Set it only if the copy never changes a file after
	// it was first written (it writes new files and renames them, as an LSM tree
	// does): a file changed in place would change the image too. Default false.
	LinkFiles bool
	// PollInterval is how often a caught-up feeder looks at Chosen without a
	// Notify. Default 50 ms.
	PollInterval time.Duration
	// Logger receives warnings (a stalled feed). Default: none.
	Logger *zap.Logger
}

// Feeding limits: one log read brings at most this many instances and about this
// many bytes of values.
const (
	feedBatchInstances = 256
	feedBatchBytes     = 4 << 20
)

// Back-off after a failed Execute, Decode or log read: it doubles from the
// minimum up to the maximum while the failures go on.
const (
	feedBackoffMin = 10 * time.Millisecond
	feedBackoffMax = time.Second
)

func (c *ReplayerConfig) fillDefaults() {
	if c.PollInterval <= 0 {
		c.PollInterval = 50 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
}

func (c *ReplayerConfig) validate() error {
	var errs []error
	if c.Dir == "" {
		errs = append(errs, errors.New("Dir is empty"))
	}
	if c.Factory == nil {
		errs = append(errs, errors.New("Factory is nil"))
	}
	if c.Log == nil {
		errs = append(errs, errors.New("Log is nil"))
	}
	if c.Decode == nil {
		errs = append(errs, errors.New("Decode is nil"))
	}
	if c.Chosen == nil {
		errs = append(errs, errors.New("Chosen is nil"))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: replayer: %w", ErrBadConfig, errors.Join(errs...))
	}
	return nil
}

// Replayer feeds a group's checkpoint copy with chosen values in the background
// and makes images from it. Its methods are safe from any goroutine.
type Replayer struct {
	cfg    ReplayerConfig
	log    *zap.Logger
	notify chan struct{} // capacity 1: a pending hint
	stop   chan struct{} // closed by Close

	startOnce sync.Once
	closeOnce sync.Once
	closeErr  error

	applied atomic.Uint64 // next, readable without the lock

	mu sync.Mutex
	// The fields below are guarded by mu; holding mu pauses the feeding.
	cp     statemachine.Copy // nil after Close or a failed Reset
	next   ids.InstanceID    // first instance the copy has not executed
	gen    uint64            // bumped when the copy is replaced
	closed bool
	broken error         // why cp is nil, if it is and the Replayer is not closed
	done   chan struct{} // closed when the feeder exits; nil if it never started
}

// NewReplayer opens the copy of cfg.Group in cfg.Dir (finishing or undoing a Reset
// that a crash interrupted first) and returns a Replayer that feeds it once
// Started. A bad configuration wraps ErrBadConfig.
func NewReplayer(cfg ReplayerConfig) (*Replayer, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.fillDefaults()
	cfg.Dir = filepath.Clean(cfg.Dir)
	r := &Replayer{
		cfg:    cfg,
		log:    cfg.Logger.With(zap.Uint32("group", uint32(cfg.Group)), zap.String("copy", cfg.Dir)),
		notify: make(chan struct{}, 1),
		stop:   make(chan struct{}),
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Dir), 0o755); err != nil {
		return nil, fmt.Errorf("checkpoint copy: %w", err)
	}
	if err := r.recoverSwap(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("checkpoint copy: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.openLocked(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Replayer) newDir() string { return r.cfg.Dir + ".new" }
func (r *Replayer) oldDir() string { return r.cfg.Dir + ".old" }

// recoverSwap finishes or undoes the directory swap of a Reset cut short by a
// crash (see the essay above).
func (r *Replayer) recoverSwap() error {
	exists := func(p string) bool { _, err := os.Lstat(p); return err == nil }
	dir, newDir, oldDir := r.cfg.Dir, r.newDir(), r.oldDir()
	if !exists(newDir) && !exists(oldDir) {
		return nil
	}
	var err error
	switch {
	case !exists(dir) && exists(newDir) && exists(oldDir):
		// Between the two renames: Dir.new was durable and complete before the
		// first.
		r.log.Info("finishing a checkpoint copy reset cut short")
		err = os.Rename(newDir, dir)
	case !exists(dir) && exists(oldDir):
		err = os.Rename(oldDir, dir)
	}
	if err == nil {
		err = errors.Join(os.RemoveAll(newDir), os.RemoveAll(oldDir))
	}
	if err == nil {
		err = SyncDir(filepath.Dir(dir))
	}
	if err != nil {
		return fmt.Errorf("checkpoint copy: recover an interrupted reset: %w", err)
	}
	return nil
}

// openLocked opens the copy in Dir and starts feeding from its Applied().
func (r *Replayer) openLocked() error {
	cp, err := r.cfg.Factory(r.cfg.Group, r.cfg.Dir)
	if err != nil {
		r.broken = fmt.Errorf("open the checkpoint copy: %w", err)
		return r.broken
	}
	r.cp, r.broken = cp, nil
	r.next = cp.Applied()
	r.gen++
	r.applied.Store(uint64(r.next))
	return nil
}

// Start starts the one goroutine that feeds the copy: it executes the chosen
// instances from the copy's point on, in order, and when caught up waits for
// Notify, the poll interval or Close. Later calls, and calls after Close, do
// nothing.
func (r *Replayer) Start() {
	r.startOnce.Do(func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.closed {
			return
		}
		r.done = make(chan struct{})
		go r.feed(r.done)
	})
}

// Notify hints that new instances were chosen. It never blocks.
func (r *Replayer) Notify() {
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

// Applied returns the first instance the copy has not executed.
func (r *Replayer) Applied() ids.InstanceID { return ids.InstanceID(r.applied.Load()) }

// feedResult says what the feeder does after one step.
type feedResult int

const (
	feedMore   feedResult = iota // progress: step again at once
	feedIdle                     // nothing to do: wait for a hint or the poll
	feedFailed                   // an error: back off, then retry
	feedStop                     // closed
)

// feed is the feeder goroutine.
func (r *Replayer) feed(done chan struct{}) {
	defer close(done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	wait := func(d time.Duration, hints bool) bool {
		timer.Reset(d)
		var notify chan struct{}
		if hints {
			notify = r.notify
		}
		select {
		case <-r.stop:
			return false
		case <-notify:
		case <-timer.C:
		}
		return true
	}
	st := feedState{}
	backoff := time.Duration(0)
	for {
		switch r.step(&st) {
		case feedStop:
			return
		case feedMore:
			backoff = 0
		case feedIdle:
			backoff = 0
			if !wait(r.cfg.PollInterval, true) {
				return
			}
		case feedFailed:
			backoff = min(max(2*backoff, feedBackoffMin), feedBackoffMax)
			if !wait(backoff, false) {
				return
			}
		}
	}
}

// feedState is the feeder's memory between steps, for its warnings.
type feedState struct {
	warnedTrimmed bool           // the warning for a log trimmed past the copy was given
	warnedAt      ids.InstanceID // ... at this instance
}

// step reads the next chosen instances from the log and executes them on the copy.
func (r *Replayer) step(st *feedState) feedResult {
	select {
	case <-r.stop:
		return feedStop
	default:
	}
	r.mu.Lock()
	from, gen, ok := r.next, r.gen, r.cp != nil
	r.mu.Unlock()
	if !ok {
		return feedIdle // a failed Reset; the next one may bring the copy back
	}
	chosen := r.cfg.Chosen()
	if from >= chosen {
		return feedIdle
	}
	entries, err := r.cfg.Log.Entries(r.cfg.Group, from, int(min(uint64(chosen-from), feedBatchInstances)), feedBatchBytes)
	if err != nil {
		r.log.Warn("checkpoint copy: cannot read the log; retrying", zap.Uint64("instance", uint64(from)), zap.Error(err))
		return feedFailed
	}
	if len(entries) == 0 {
		if !st.warnedTrimmed || st.warnedAt != from {
			st.warnedTrimmed, st.warnedAt = true, from
			r.log.Warn("checkpoint copy: the log no longer holds the next instance (trimmed past the copy); waiting for an image",
				zap.Uint64("instance", uint64(from)), zap.Uint64("chosen", uint64(chosen)))
		}
		return feedIdle
	}
	st.warnedTrimmed = false
	for i, e := range entries {
		if e.Instance != from+ids.InstanceID(i) || e.Instance >= chosen {
			break // not what was asked for: read again from where the copy is
		}
		cmds, err := r.cfg.Decode(e.Value)
		if err != nil {
			r.log.Error("checkpoint copy: cannot decode a chosen value; retrying",
				zap.Uint64("instance", uint64(e.Instance)), zap.Error(err))
			return feedFailed
		}
		r.mu.Lock()
		if r.closed || r.gen != gen || r.next != e.Instance {
			r.mu.Unlock()
			return feedMore // a Reset or Close came in between
		}
		_, err = r.cp.Execute(e.Instance, cmds)
		if err == nil {
			r.next++
			r.applied.Store(uint64(r.next))
		}
		r.mu.Unlock()
		if err != nil {
			r.log.Warn("checkpoint copy: execute failed; retrying the same instance",
				zap.Uint64("instance", uint64(e.Instance)), zap.Error(err))
			return feedFailed
		}
	}
	return feedMore
}

// Checkpoint makes an image of the copy in dir, which must exist and be empty: it
// pauses the feeding, has the copy Flush, copies the regular files of the copy's
// directory into dir and fsyncs them and dir, and returns the image's instance
// (the first instance the copy had not executed), then resumes. It fails if the
// copy's directory holds anything but regular files (wrapping ErrBadImage), or if
// the copy reports an Applied() after Flush other than what it was fed: such an
// image would name the wrong instance. Safe while the feeder runs.
func (r *Replayer) Checkpoint(dir string) (ids.InstanceID, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return 0, ErrClosed
	}
	if r.cp == nil {
		return 0, fmt.Errorf("checkpoint copy unavailable: %w", r.broken)
	}
	if err := r.cp.Flush(); err != nil {
		return 0, fmt.Errorf("checkpoint copy: flush: %w", err)
	}
	if got := r.cp.Applied(); got != r.next {
		return 0, fmt.Errorf("checkpoint copy reports instance %d after executing every instance below %d", got, r.next)
	}
	names, err := regularFiles(r.cfg.Dir, false)
	if err != nil {
		return 0, fmt.Errorf("checkpoint copy: %w", err)
	}
	if err := copyFiles(r.cfg.Dir, dir, names, r.cfg.LinkFiles); err != nil {
		return 0, fmt.Errorf("checkpoint copy: %w", err)
	}
	return r.next, nil
}

// Reset replaces the copy with the image in imageDir, which the group installed
// from another member: it pauses the feeding, closes the copy, replaces the
// files of its directory with the image's (not its manifest), durably and
// crash-safely (see the essay above), opens the copy again through the factory
// and resumes from its Applied(). A copy already at or past the image's instance
// is kept: it holds the same state or a later one. If Reset fails after closing
// the copy, it reopens what the directory holds; if even that fails, the feeding
// stops until a later Reset succeeds. imageDir must be an image of the group.
func (r *Replayer) Reset(imageDir string) error {
	m, err := OpenImage(imageDir)
	if err != nil {
		return err
	}
	if m.Group != r.cfg.Group {
		return fmt.Errorf("%w: %s is an image of group %d, not %d", ErrBadImage, imageDir, m.Group, r.cfg.Group)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	if r.cp != nil && r.next >= m.Instance {
		return nil
	}
	if r.cp != nil {
		if err := r.cp.Close(); err != nil {
			r.log.Warn("checkpoint copy: close before reset", zap.Error(err))
		}
		r.cp = nil
	}
	swapErr := r.swapInLocked(imageDir, m)
	if _, err := os.Stat(r.cfg.Dir); err != nil {
		// The swap failed between its renames and could not put the old copy
		// back: opening now would make an empty copy. NewReplayer recovers it.
		r.broken = errors.Join(swapErr, err)
		return r.broken
	}
	if err := r.openLocked(); err != nil {
		return errors.Join(swapErr, err)
	}
	if swapErr != nil {
		return swapErr
	}
	if r.next != m.Instance {
		r.log.Warn("checkpoint copy: reopened from an image, it reports another instance",
			zap.Uint64("image", uint64(m.Instance)), zap.Uint64("applied", uint64(r.next)))
	}
	r.log.Info("checkpoint copy reset from an image", zap.Uint64("instance", uint64(m.Instance)))
	r.Notify()
	return nil
}

// swapInLocked makes the image's files the content of Dir: build Dir.new, make it
// durable, rename Dir to Dir.old and Dir.new to Dir, make that durable, drop
// Dir.old. On an error before the first rename Dir is untouched; after it, Dir is
// put back.
func (r *Replayer) swapInLocked(imageDir string, m Manifest) error {
	dir, newDir, oldDir := r.cfg.Dir, r.newDir(), r.oldDir()
	parent := filepath.Dir(dir)
	names := make([]string, len(m.Files))
	for i, f := range m.Files {
		names[i] = f.Name
	}
	if err := errors.Join(os.RemoveAll(newDir), os.RemoveAll(oldDir), os.MkdirAll(dir, 0o755)); err != nil {
		return fmt.Errorf("checkpoint copy reset: %w", err)
	}
	if err := os.Mkdir(newDir, 0o755); err != nil {
		return fmt.Errorf("checkpoint copy reset: %w", err)
	}
	err := copyFiles(imageDir, newDir, names, r.cfg.LinkFiles)
	if err == nil {
		err = SyncDir(parent) // Dir.new durable before it can replace Dir
	}
	if err != nil {
		_ = os.RemoveAll(newDir)
		return fmt.Errorf("checkpoint copy reset: %w", err)
	}
	if err := os.Rename(dir, oldDir); err != nil {
		_ = os.RemoveAll(newDir)
		return fmt.Errorf("checkpoint copy reset: %w", err)
	}
	if err := os.Rename(newDir, dir); err != nil {
		if back := os.Rename(oldDir, dir); back != nil {
			err = errors.Join(err, back)
		}
		return fmt.Errorf("checkpoint copy reset: %w", err)
	}
	if err := SyncDir(parent); err != nil {
		return fmt.Errorf("checkpoint copy reset: %w", err)
	}
	if err := os.RemoveAll(oldDir); err != nil {
		r.log.Warn("checkpoint copy reset: old copy not removed", zap.Error(err)) // NewReplayer removes it
	}
	return nil
}

// Close stops the feeder, waits for it, and closes the copy. Later calls return
// the first call's result; every other method then fails with ErrClosed.
func (r *Replayer) Close() error {
	r.closeOnce.Do(func() {
		r.mu.Lock()
		r.closed = true
		done := r.done
		r.mu.Unlock()
		close(r.stop)
		if done != nil {
			<-done
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.cp != nil {
			r.closeErr = r.cp.Close()
			r.cp = nil
		}
	})
	return r.closeErr
}
