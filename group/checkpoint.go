package group

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/multipaxos/engine/checkpoint"
	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/instance"
	"github.com/multipaxos/engine/statemachine"
	"go.uber.org/zap"
)

// # Checkpoints, trim and transfer
//
// A group with checkpoints keeps at most one local image of its state machine
// (package checkpoint): a directory of files and a manifest, whose instance I says
// the image holds every instance below I. Every CheckpointEvery applied instances
// the group has the Maker write a new one in the background, seals it with the
// engine's own state at I (SystemState), and trims its log below
// min(I, Next-KeepInstances): the log keeps the recent instances, so a member a
// little behind learns from the log, and only members further behind than the log
// reaches need the image.
//
// Such a learner asks for a trimmed instance; the teacher offers its image's
// manifest instead (MsgCheckpointOffer). The learner pulls the files chunk by chunk
// (MsgChunkReq / MsgChunk, each chunk with its CRC, a few in flight), writes them
// into a temporary directory, verifies every file against the manifest, fsyncs,
// installs the image through the state machine's Installer, trims its own log
// below I and goes on learning the log from I, all without a restart. While any
// learner pulls from an image, the teacher makes no new one: the image is locked
// until the transfer has been quiet for a while. A broken or stalled transfer is
// thrown away whole and started again; the learner's previous state is replaced
// only by Install, which is atomic.
//
// Persistence order when installing, so that a crash at any point recovers:
//
//  1. the received image is complete and durable in its temporary directory;
//  2. Install makes the state machine's state the image's, atomically;
//  3. the directory is renamed to become the local image;
//  4. the log is trimmed below I with the image's SystemState as its base, which
//     also makes every instance below I count as chosen;
//  5. only then does the core move its Next to I.
//
// A restart after 2 finds the state machine ahead of the log and skips executing
// what it already holds; after 3 it finishes step 4 itself (New); a restart whose
// state machine lost what it had not made durable, below the trim point, installs
// the local image first.

// CheckpointConfig turns checkpoints and log trimming on for a group.
type CheckpointConfig struct {
	// Dir holds the group's image and transfers in progress. Required.
	Dir string
	// Maker makes images: the state machine itself (a statemachine.Checkpointer)
	// or a checkpoint.Replayer over a copy of it. nil: this member makes no images
	// and never trims its log, but installs images it receives.
	Maker interface {
		Checkpoint(dir string) (ids.InstanceID, error)
	}
	// Installer installs images into the state machine. Required.
	Installer statemachine.Installer
	// KeepInstances is how many recent instances the log keeps below Next,
	// whatever the image. Default 500 (Ceph's paxos_min).
	KeepInstances int
	// Every is how many applied instances pass between two images. Default 10000.
	Every int
	// ChunkBytes bounds one transfer chunk; every member must use the same.
	// Default 1 MiB.
	ChunkBytes int
	// ChunksInFlight is how many chunk requests a learner keeps outstanding.
	// Default 4.
	ChunksInFlight int
	// TimeoutTicks: a transfer with no chunk for this long asks again for the
	// missing ones; after 10 times that it is abandoned. Default 20.
	TimeoutTicks int
	// Background runs fn outside the group's serial context: image making,
	// sealing and verification, which read and fsync files. Default: a new
	// goroutine. The simulation runs fn at once.
	Background func(fn func())
	// Installed, if set, is called (in the background) after an image received
	// from another member was installed, with its directory: a checkpoint.Replayer
	// resets its copy from it.
	Installed func(dir string) error
}

func (c *CheckpointConfig) fillDefaults() {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.KeepInstances, 500)
	def(&c.Every, 10000)
	def(&c.ChunkBytes, 1<<20)
	def(&c.ChunksInFlight, 4)
	def(&c.TimeoutTicks, 20)
	if c.Background == nil {
		c.Background = func(fn func()) { go fn() }
	}
}

// servingIdleTicks: an image stays locked this long after a learner last pulled
// from it.
const servingIdleFactor = 10

// checkpoints is a replica's checkpoint state.
type checkpoints struct {
	cfg      CheckpointConfig
	image    *localImage
	making   bool           // an image is being made or sealed
	retryAt  ids.InstanceID // after a failed image, the next attempt waits for this applied point
	trimming bool
	seq      uint64
	serving  map[ids.NodeID]uint64 // learners pulling from the image: tick of their last request
	recv     *transfer
}

type localImage struct {
	dir string
	m   checkpoint.Manifest
}

// transfer is an image being received.
type transfer struct {
	from         ids.NodeID
	m            checkpoint.Manifest
	rx           *checkpoint.Receiver
	dir          string
	lastProgress uint64
	finishing    bool
	inFlight     int
}

// sysPoint is the SystemState in force from instance `from` on.
type sysPoint struct {
	from  ids.InstanceID
	state SystemState
}

// systemState is the SystemState at sysApplied.
func (r *Replica) systemState() SystemState {
	return SystemState{Master: r.lease.state, Members: r.members.Clone()}
}

// sysPointEvery spaces the points of sysHistory: applySystem adds one after a
// change only if the last is this many instances old, and sysStateAt replays the
// log's system commands from the nearest point. One point per change grew by one
// per lease renewal, without bound where no checkpoint trims the log (10 MB a
// minute at 256 busy groups).
const sysPointEvery = 1024

// sysStateAt returns the SystemState after every instance below inst, for inst
// between the log's start and sysApplied: the nearest point of sysHistory at or
// below inst, with the system commands of the instances from there to inst, read
// from the log, applied. False if inst is out of range or the log cannot be read.
func (r *Replica) sysStateAt(inst ids.InstanceID) (SystemState, bool) {
	if len(r.sysHistory) == 0 || inst < r.sysHistory[0].from || inst > r.sysApplied {
		return SystemState{}, false
	}
	if inst == r.sysApplied {
		return r.systemState(), true
	}
	i, _ := slices.BinarySearchFunc(r.sysHistory, inst, func(p sysPoint, t ids.InstanceID) int {
		return compareInst(p.from, t+1)
	})
	p := r.sysHistory[i-1]
	s := p.state.clone()
	for at := p.from; at < inst; {
		es, err := r.cfg.Storage.Entries(r.cfg.Group, at, min(256, int(inst-at)), 4<<20)
		if err != nil || len(es) == 0 || es[0].Instance != at {
			r.log.Warn("system state not rebuilt from the log", zap.Uint64("instance", uint64(inst)),
				zap.Uint64("at", uint64(at)), zap.Error(err))
			return SystemState{}, false
		}
		for _, e := range es {
			if e.Instance != at || at >= inst {
				break
			}
			s.applyValue(e.Instance, e.Value)
			at++
		}
	}
	return s, true
}

func compareInst(a, b ids.InstanceID) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// pruneSysHistory forgets the states before inst, the log's new start, where the
// state was s. s comes from before the trim: sysStateAt may need the instances the
// trim removed.
func (r *Replica) pruneSysHistory(inst ids.InstanceID, s SystemState) {
	keep := []sysPoint{{from: inst, state: s}}
	for _, p := range r.sysHistory {
		if p.from > inst {
			keep = append(keep, p)
		}
	}
	r.sysHistory = keep
}

// resetSystemState makes s, the state after every instance below inst, the
// replica's: at start from the trim point's base, or after installing an image.
func (r *Replica) resetSystemState(inst ids.InstanceID, s SystemState) {
	r.sysHistory = []sysPoint{{from: inst, state: s.clone()}}
	r.sysApplied = inst
	r.lease.state = s.Master
	r.lease.self, r.lease.expiry = false, time.Time{}
	if m := s.Master.Master; m != 0 && m != r.cfg.Self {
		// Like a claim learned now: its lease counts from here, which is later
		// than its start.
		r.lease.expiry = r.cfg.Clock().Add(s.Master.Lease)
	}
	r.setMembers(s.Members.Clone())
}

// ---- start ----

// openCheckpoints runs at start, before the log is replayed: it cleans up what a
// crash left, picks the local image, finishes an install that a crash cut short,
// and installs the image into a state machine that is behind the log's start. It
// returns the meta to start from and the state machine's applied point.
func (r *Replica) openCheckpoints(meta *metaView) (smApplied ids.InstanceID, err error) {
	smApplied = r.cfg.StateMachine.Applied()
	cp := r.cp
	if cp == nil {
		return smApplied, nil
	}
	if err := os.MkdirAll(cp.cfg.Dir, 0o755); err != nil {
		return 0, fmt.Errorf("checkpoint dir: %w", err)
	}
	des, err := os.ReadDir(cp.cfg.Dir)
	if err != nil {
		return 0, fmt.Errorf("checkpoint dir: %w", err)
	}
	var images []localImage
	for _, de := range des {
		p := filepath.Join(cp.cfg.Dir, de.Name())
		inst, ok := imageInstance(de.Name())
		if !ok {
			_ = os.RemoveAll(p) // an image being made or received when the process stopped
			continue
		}
		m, err := checkpoint.OpenImage(p)
		if err != nil || m.Instance != inst || m.Group != r.cfg.Group {
			r.log.Warn("removing a bad checkpoint image", zap.String("dir", p), zap.Error(err))
			_ = os.RemoveAll(p)
			continue
		}
		images = append(images, localImage{dir: p, m: m})
	}
	slices.SortFunc(images, func(a, b localImage) int { return compareInst(a.m.Instance, b.m.Instance) })
	for _, old := range images[:max(0, len(images)-1)] {
		_ = os.RemoveAll(old.dir)
	}
	if len(images) > 0 {
		img := images[len(images)-1]
		cp.image = &img
	}
	if img := cp.image; img != nil && img.m.Instance > meta.ChosenNext {
		// Installed (or made) but the log was not trimmed to it yet: finish.
		if err := r.cfg.Storage.Trim(r.cfg.Group, img.m.Instance, img.m.System); err != nil {
			return 0, fmt.Errorf("finish the install of image %d: %w", img.m.Instance, err)
		}
		if err := meta.reload(); err != nil {
			return 0, err
		}
	}
	if smApplied < meta.MinRetained {
		img := cp.image
		if img == nil || img.m.Instance < meta.MinRetained {
			return 0, fmt.Errorf("state machine at instance %d, the log starts at %d, and no checkpoint image covers the gap",
				smApplied, meta.MinRetained)
		}
		if smApplied, err = cp.cfg.Installer.Install(img.dir); err != nil {
			return 0, fmt.Errorf("install the local image %d: %w", img.m.Instance, err)
		}
		r.log.Info("state machine restored from the local checkpoint image", zap.Uint64("instance", uint64(smApplied)))
	}
	return smApplied, nil
}

// LocalImage returns the directory and instance of the group's local image ("" if
// it has none). Call it from the group's context, or before the replica runs.
func (r *Replica) LocalImage() (dir string, inst ids.InstanceID) {
	if r.cp == nil || r.cp.image == nil {
		return "", 0
	}
	return r.cp.image.dir, r.cp.image.m.Instance
}

const imagePrefix = "image-"

func imageInstance(name string) (ids.InstanceID, bool) {
	if !strings.HasPrefix(name, imagePrefix) {
		return 0, false
	}
	v, err := strconv.ParseUint(name[len(imagePrefix):], 10, 64)
	return ids.InstanceID(v), err == nil
}

// ---- making images and trimming ----

// busy reports whether checkpoint work needs the group's ticks.
func (cp *checkpoints) busy() bool {
	return cp != nil && (cp.recv != nil || cp.making || cp.trimming || len(cp.serving) > 0)
}

// tickCheckpoints expires idle learners' locks on the image and drives a transfer
// in progress.
func (r *Replica) tickCheckpoints() {
	cp := r.cp
	if cp == nil {
		return
	}
	for n, at := range cp.serving {
		if r.ticks-at > uint64(servingIdleFactor*cp.cfg.TimeoutTicks) {
			delete(cp.serving, n)
		}
	}
	r.tickTransfer()
	r.maybeMakeImage()
}

// maybeMakeImage starts making an image once Every instances were applied since
// the last one, unless the image is locked by a transfer.
func (r *Replica) maybeMakeImage() {
	cp := r.cp
	if cp == nil || r.replaying || r.repair != nil {
		return
	}
	imageAt := r.minRetained
	if cp.image != nil {
		imageAt = cp.image.m.Instance
	}
	if cp.cfg.Maker == nil || cp.making || cp.trimming || cp.recv != nil || len(cp.serving) > 0 ||
		r.applied < imageAt+ids.InstanceID(cp.cfg.Every) || r.applied < cp.retryAt || r.failed != nil {
		return
	}
	cp.making = true
	cp.seq++
	dir := filepath.Join(cp.cfg.Dir, fmt.Sprintf("making-%d", cp.seq))
	maker := cp.cfg.Maker
	cp.cfg.Background(func() {
		inst, err := func() (ids.InstanceID, error) {
			if err := os.RemoveAll(dir); err != nil {
				return 0, err
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return 0, err
			}
			return maker.Checkpoint(dir)
		}()
		r.cfg.Schedule(func() { r.imageMade(dir, inst, err) })
	})
}

func (r *Replica) imageMade(dir string, inst ids.InstanceID, err error) {
	cp := r.cp
	if err == nil {
		r.crashPoint(CrashImageMade)
	}
	if err == nil && cp.image != nil && inst <= cp.image.m.Instance {
		err = fmt.Errorf("image of instance %d is not newer than the current one", inst)
	}
	sys, ok := r.sysStateAt(inst)
	if err == nil && !ok {
		err = fmt.Errorf("image of instance %d is outside the log [%d, %d]", inst, r.minRetained, r.sysApplied)
	}
	if err != nil || r.failed != nil {
		cp.making = false
		cp.retryAt = r.applied + ids.InstanceID(max(1, cp.cfg.Every/4))
		r.log.Warn("checkpoint image not made; will try again", zap.Uint64("after instance", uint64(cp.retryAt)), zap.Error(err))
		cp.cfg.Background(func() { _ = os.RemoveAll(dir) })
		return
	}
	final := filepath.Join(cp.cfg.Dir, fmt.Sprintf("%s%d", imagePrefix, inst))
	g, base := r.cfg.Group, EncodeSystemState(sys)
	cp.cfg.Background(func() {
		m, err := checkpoint.Seal(dir, g, inst, base)
		if err == nil {
			err = os.Rename(dir, final)
		}
		if err == nil {
			err = checkpoint.SyncDir(filepath.Dir(final))
		}
		if err != nil {
			_ = os.RemoveAll(dir)
		}
		r.cfg.Schedule(func() { r.imageSealed(final, m, err) })
	})
}

func (r *Replica) imageSealed(dir string, m checkpoint.Manifest, err error) {
	cp := r.cp
	cp.making = false
	if err != nil {
		cp.retryAt = r.applied + ids.InstanceID(max(1, cp.cfg.Every/4))
		r.log.Warn("checkpoint image not sealed; will try again", zap.Uint64("after instance", uint64(cp.retryAt)), zap.Error(err))
		return
	}
	r.crashPoint(CrashImageSealed)
	r.replaceImage(&localImage{dir: dir, m: m})
	r.log.Debug("checkpoint image made", zap.Uint64("instance", uint64(m.Instance)), zap.Int("files", len(m.Files)))
	r.maybeTrim()
}

func (r *Replica) replaceImage(img *localImage) {
	cp := r.cp
	if old := cp.image; old != nil && old.dir != img.dir {
		cp.cfg.Background(func() { _ = os.RemoveAll(old.dir) })
	}
	cp.image = img
	r.stats.Images++
}

// maybeTrim trims the log below min(image, Next-KeepInstances), in coarse steps.
func (r *Replica) maybeTrim() {
	cp := r.cp
	if cp == nil || cp.image == nil || cp.trimming || r.failed != nil || r.replaying || r.repair != nil {
		return
	}
	next := r.core.Next()
	if next < ids.InstanceID(cp.cfg.KeepInstances) {
		return
	}
	below := min(cp.image.m.Instance, next-ids.InstanceID(cp.cfg.KeepInstances), r.applied)
	if below <= r.minRetained || below-r.minRetained < ids.InstanceID(max(1, cp.cfg.KeepInstances/4)) {
		return
	}
	sys, ok := r.sysStateAt(below)
	if !ok {
		return
	}
	cp.trimming = true
	g, base := r.cfg.Group, EncodeSystemState(sys)
	r.crashPoint(CrashBeforeTrim)
	cp.cfg.Background(func() {
		err := r.cfg.Storage.Trim(g, below, base)
		r.cfg.Schedule(func() { r.trimmed(below, sys, err) })
	})
}

func (r *Replica) trimmed(below ids.InstanceID, sys SystemState, err error) {
	r.cp.trimming = false
	if err != nil {
		r.storageFailed(fmt.Errorf("trim below %d: %w", below, err))
		return
	}
	r.crashPoint(CrashAfterTrim)
	if below > r.minRetained {
		r.pruneSysHistory(below, sys)
	}
	r.setMinRetained(below)
	r.stats.Trims++
}

func (r *Replica) setMinRetained(below ids.InstanceID) {
	if below <= r.minRetained {
		return
	}
	r.minRetained = below
}

// ---- teaching an image ----

// offerCheckpoint offers the local image to a learner that needs instances this
// member has trimmed. Without an image (none made yet) it says nothing: the
// learner's timeout sends it to another member.
func (r *Replica) offerCheckpoint(to ids.NodeID) {
	cp := r.cp
	if cp == nil || cp.image == nil {
		r.log.Debug("learner needs trimmed instances and there is no image to offer", zap.Uint64("learner", uint64(to)))
		return
	}
	cp.serving[to] = r.ticks
	r.cfg.Sender.SendGroup(to, r.cfg.Group, &GroupMessage{Type: MsgCheckpointOffer, Data: checkpoint.EncodeManifest(cp.image.m)})
}

func (r *Replica) onChunkReq(from ids.NodeID, m GroupMessage) {
	cp := r.cp
	if cp == nil || cp.image == nil || uint64(cp.image.m.Instance) != m.Image || m.Max > uint64(cp.cfg.ChunkBytes) {
		return // not the image it asks for any more: its transfer times out and starts over
	}
	cp.serving[from] = r.ticks
	c, err := checkpoint.ReadChunk(cp.image.dir, cp.image.m, uint32(m.File), int64(m.Offset), int(m.Max))
	if err != nil {
		r.log.Warn("checkpoint chunk unreadable", zap.Uint64("file", m.File), zap.Uint64("offset", m.Offset), zap.Error(err))
		return
	}
	if b := r.cfg.TeachBudget; b != nil && !b.Take(len(c.Data)) {
		return // over the node's teaching budget: the learner asks again later
	}
	r.stats.ChunksSent++
	r.cfg.Sender.SendGroup(from, r.cfg.Group, &GroupMessage{Type: MsgChunk, Image: m.Image, Data: checkpoint.EncodeChunk(c)})
}

// ---- learning an image ----

func (r *Replica) onCheckpointOffer(from ids.NodeID, m GroupMessage) {
	cp := r.cp
	if cp == nil {
		r.log.Error("offered a checkpoint image, but checkpoints are not configured: this member cannot catch up past the peers' trimmed logs")
		return
	}
	man, err := checkpoint.DecodeManifest(m.Data)
	if err != nil || man.Group != r.cfg.Group {
		r.log.Warn("bad checkpoint offer", zap.Uint64("from", uint64(from)), zap.Error(err))
		return
	}
	if man.Instance > r.applied && man.Instance <= r.smFloor && (r.repair != nil || man.Instance > r.core.Next()) {
		// The state machine holds the image already; the engine's state in its
		// manifest is all this member needs from it.
		r.skipTo(man.Instance, man.System, "")
		return
	}
	if cp.recv != nil || man.Instance <= max(r.applied, r.smFloor) || (r.repair == nil && man.Instance <= r.core.Next()) {
		return // busy with one, or it brings nothing new (the state machine may be ahead of the log)
	}
	if _, err := DecodeSystemState(man.System); err != nil {
		r.log.Warn("checkpoint offer with a bad system state", zap.Uint64("from", uint64(from)), zap.Error(err))
		return
	}
	dir := filepath.Join(cp.cfg.Dir, "receiving")
	_ = os.RemoveAll(dir)
	rx, err := checkpoint.NewReceiver(dir, man, cp.cfg.ChunkBytes)
	if err != nil {
		r.log.Warn("cannot receive a checkpoint image", zap.Error(err))
		return
	}
	cp.recv = &transfer{from: from, m: man, rx: rx, dir: dir, lastProgress: r.ticks}
	r.log.Info("receiving a checkpoint image", zap.Uint64("from", uint64(from)),
		zap.Uint64("instance", uint64(man.Instance)), zap.Int("files", len(man.Files)))
	r.pullChunks()
}

func (r *Replica) pullChunks() {
	t := r.cp.recv
	if t == nil || t.finishing {
		return
	}
	for _, ref := range t.rx.Want(r.cp.cfg.ChunksInFlight - t.inFlight) {
		t.inFlight++
		r.cfg.Sender.SendGroup(t.from, r.cfg.Group, &GroupMessage{Type: MsgChunkReq, Image: uint64(t.m.Instance),
			File: uint64(ref.File), Offset: uint64(ref.Offset), Max: uint64(r.cp.cfg.ChunkBytes)})
	}
}

func (r *Replica) onChunk(from ids.NodeID, m GroupMessage) {
	cp := r.cp
	if cp == nil || cp.recv == nil || cp.recv.from != from || uint64(cp.recv.m.Instance) != m.Image || cp.recv.finishing {
		return
	}
	t := cp.recv
	c, err := checkpoint.DecodeChunk(m.Data)
	if err == nil {
		err = t.rx.Put(c)
	}
	if err != nil {
		r.log.Debug("checkpoint chunk refused", zap.Error(err)) // asked for again after the timeout
		return
	}
	t.inFlight = max(0, t.inFlight-1)
	t.lastProgress = r.ticks
	r.stats.ChunksReceived++
	if !t.rx.Done() {
		r.pullChunks()
		return
	}
	t.finishing = true
	cp.cfg.Background(func() {
		err := t.rx.Finish()
		r.cfg.Schedule(func() { r.imageReceived(t, err) })
	})
}

// tickTransfer asks again for chunks that did not come, and abandons a transfer
// that stalled.
func (r *Replica) tickTransfer() {
	t := r.cp.recv
	if t == nil || t.finishing {
		return
	}
	quiet := r.ticks - t.lastProgress
	switch {
	case quiet >= uint64(10*r.cp.cfg.TimeoutTicks):
		r.log.Warn("checkpoint transfer stalled; abandoned", zap.Uint64("from", uint64(t.from)))
		r.abandonTransfer()
	case quiet > 0 && quiet%uint64(r.cp.cfg.TimeoutTicks) == 0:
		t.rx.Expire()
		t.inFlight = 0
		r.pullChunks()
	}
}

func (r *Replica) abandonTransfer() {
	if t := r.cp.recv; t != nil {
		r.cp.recv = nil
		r.cp.cfg.Background(t.rx.Abort)
	}
}

func (r *Replica) imageReceived(t *transfer, err error) {
	cp := r.cp
	if cp.recv != t {
		return
	}
	cp.recv = nil
	if err == nil && r.failed == nil {
		err = r.installImage(t)
	}
	if err != nil {
		r.log.Warn("checkpoint image not installed; will ask again", zap.Uint64("from", uint64(t.from)), zap.Error(err))
		cp.cfg.Background(t.rx.Abort)
	}
}

// installImage installs a received, verified image: steps 2-5 of the order above.
func (r *Replica) installImage(t *transfer) error {
	cp := r.cp
	inst := t.m.Instance
	if inst <= max(r.applied, r.smFloor) || (r.repair == nil && inst <= r.core.Next()) {
		return errors.New("the image is no longer ahead of this member")
	}
	sys, err := DecodeSystemState(t.m.System)
	if err != nil {
		return err
	}
	r.crashPoint(CrashBeforeInstall)
	got, err := cp.cfg.Installer.Install(t.dir)
	if err != nil {
		return fmt.Errorf("state machine refused the image: %w", err)
	}
	if got != inst {
		// The state machine now holds some other instance's state: executing the
		// log from inst could apply instances twice or skip some.
		r.storageFailed(fmt.Errorf("state machine installed image %d and reports instance %d", inst, got))
		return nil
	}
	r.crashPoint(CrashAfterInstall)
	r.smFloor = max(r.smFloor, inst)
	final := filepath.Join(cp.cfg.Dir, fmt.Sprintf("%s%d", imagePrefix, inst))
	_ = os.RemoveAll(final)
	if err := os.Rename(t.dir, final); err != nil {
		return fmt.Errorf("keep the image: %w", err)
	}
	if err := checkpoint.SyncDir(cp.cfg.Dir); err != nil {
		return err
	}
	r.crashPoint(CrashAfterImageRename)
	if err := r.cfg.Storage.Trim(r.cfg.Group, inst, t.m.System); err != nil {
		r.storageFailed(fmt.Errorf("trim to installed image %d: %w", inst, err))
		return nil
	}
	r.crashPoint(CrashAfterInstallTrim)
	r.replaceImage(&localImage{dir: final, m: t.m})
	r.stats.Installs++
	r.log.Info("checkpoint image installed", zap.Uint64("instance", uint64(inst)), zap.Uint64("from", uint64(t.from)))
	r.rebase(inst, sys)
	if cp.cfg.Installed != nil {
		installed := cp.cfg.Installed
		cp.cfg.Background(func() {
			if err := installed(final); err != nil {
				r.log.Error("after installing an image", zap.Error(err))
			}
		})
	}
	r.drive()
	r.flush()
	return nil
}

// rebase makes instance inst the group's new start once the state machine holds
// every instance below it and the log is trimmed to it (with sys, the engine's
// state there, as the trim's base): the steps after the trim in the install order
// above, shared by an installed image and a repair or learner that skips to one.
func (r *Replica) rebase(inst ids.InstanceID, sys SystemState) {
	r.setMinRetained(inst)
	r.applyQueue = slices.DeleteFunc(r.applyQueue, func(e instance.Entry) bool { return e.Instance < inst })
	r.failLimbo(inst)
	r.applied = max(r.applied, inst)
	r.executed.skipTo(inst)
	r.resetSystemState(inst, sys)
	r.storedNext.Store(max(r.storedNext.Load(), uint64(inst)))
	r.core.InstallCheckpoint(inst) // a no-op while repairing: the core's Next is already past it
	r.repairedTo(inst)
}

// failLimbo fails our proposals that may have been chosen in the instances an
// installed image skipped: nobody here will ever see their outcome.
func (r *Replica) failLimbo(inst ids.InstanceID) {
	err := fmt.Errorf("%w: a checkpoint image up to instance %d replaced the instances it was in", ErrUnknownOutcome, inst)
	for id, p := range r.inflight {
		delete(r.inflight, id)
		if r.lease.claim == p {
			r.lease.claim = nil
		}
		p.fail(err)
	}
	for id, p := range r.forwarded {
		delete(r.forwarded, id)
		p.fail(err)
	}
}
