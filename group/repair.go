package group

import (
	"errors"
	"fmt"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/instance"
	"github.com/multipaxos/engine/logstore"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// # Repairing a corrupt log
//
// A chosen record whose checksum fails on read (a flipped bit on disk), or that
// is missing below the chosen point, is never applied. At start the replay stops
// before it and the member repairs: it learns the chosen values from that instance
// up to its old chosen point from peers (a teacher streams them as to any lagging
// learner, or offers a checkpoint image if it trimmed them), rewrites them, and
// executes them in order. Until the repair is done the member takes no part in the
// protocol: it neither votes nor proposes nor serves reads, because the system
// state (membership, master) past the bad record is not known yet. It still
// teaches the records it holds, skipping none: a stream stops before a bad record,
// so when several members lost different records each learns from the others. Its acceptor
// state is untouched - the promise and the instances it voted in stay as they are
// - so no vote of it is ever taken back.
//
// A damaged record at the chosen point itself (a value accepted there but not
// known chosen) cannot be repaired this way: the member cannot tell what it
// accepted, and Paxos needs it to remember. That stops the group from starting,
// with an error saying so; replace the member (remove it, add a fresh one).

type repair struct {
	next, to ids.InstanceID // relearn [next, to)
	teacher  int            // index into the voters, rotated on silence
	wait     int            // ticks until the next request
}

// readGoodPrefix reads the chosen records from `from` one at a time and returns
// those before the first corrupt or missing one, which it logs at level lvl.
func (r *Replica) readGoodPrefix(from, next ids.InstanceID, lvl zapcore.Level) ([]logstore.Entry, error) {
	var out []logstore.Entry
	for i := from; i < next && len(out) < 256; i++ {
		e, err := r.cfg.Storage.Entry(r.cfg.Group, i)
		if errors.Is(err, logstore.ErrCorrupt) || errors.Is(err, logstore.ErrNotFound) {
			if ce := r.log.Check(lvl, "chosen log record unreadable; it will be learned again from peers"); ce != nil {
				ce.Write(zap.Uint64("instance", uint64(i)), zap.Error(err))
			}
			break
		}
		if err != nil {
			return nil, fmt.Errorf("group %d: replay at %d: %w", r.cfg.Group, i, err)
		}
		out = append(out, e)
	}
	return out, nil
}

func (r *Replica) startRepair(from, to ids.InstanceID) {
	r.repair = &repair{next: from, to: to}
	r.stats.Repairs++
	r.log.Warn("repairing the log from peers: this member takes no part in the group until it is done",
		zap.Uint64("from", uint64(from)), zap.Uint64("to", uint64(to)))
	// The local image may cover the damage already.
	if r.cp != nil && r.cp.image != nil {
		r.skipTo(r.cp.image.m.Instance, r.cp.image.m.System, r.cp.image.dir)
	}
}

// skipTo moves the group past instance inst, given the engine's state there
// (from an image's manifest), when the state machine already holds every instance
// below inst - or takes them from the image in dir: a repair no longer needs the
// damaged records below inst, and a learner whose state machine is ahead of its
// log (an install that a crash cut short) needs only the engine's state. The log
// is trimmed to inst, which also deletes whatever is below it.
func (r *Replica) skipTo(inst ids.InstanceID, system []byte, dir string) bool {
	if inst <= r.applied || (r.repair != nil && inst > r.repair.to) {
		return false
	}
	sys, err := DecodeSystemState(system)
	if err != nil {
		return false
	}
	if r.smFloor < inst {
		if dir == "" || r.cp == nil {
			return false // the state machine would need the image's files
		}
		got, err := r.cp.cfg.Installer.Install(dir)
		if err != nil || got != inst {
			r.log.Warn("the local image could not be installed", zap.Uint64("instance", uint64(inst)), zap.Error(err))
			return false
		}
		r.smFloor = inst
	}
	if err := r.cfg.Storage.Trim(r.cfg.Group, inst, system); err != nil {
		r.storageFailed(fmt.Errorf("trim to %d: %w", inst, err))
		return false
	}
	r.log.Info("moved to a checkpoint image's instance the state machine already holds", zap.Uint64("instance", uint64(inst)))
	r.rebase(inst, sys)
	r.drive()
	r.flush()
	return true
}

// repairStep takes the chosen values the repair asked for; every other protocol
// message is dropped.
func (r *Replica) repairStep(m instance.Message) {
	if m.Type == instance.MsgLearnReq {
		// It still teaches what it holds: when several members repair at once,
		// each may hold what another lost.
		r.teacher.Request(m.From, m.Instance)
		r.pumpTeacher()
		return
	}
	if m.Type != instance.MsgLearnValues {
		return
	}
	rp := r.repair
	var write []logstore.Entry
	for _, e := range m.Entries {
		if e.Instance < rp.next {
			continue
		}
		if e.Instance > rp.next || e.Instance >= rp.to {
			break
		}
		write = append(write, logstore.Entry{Instance: e.Instance, Ballot: e.Ballot, Value: e.Value})
		r.applySystem(e)
		r.applyQueue = append(r.applyQueue, e)
		rp.next++
	}
	if len(write) == 0 {
		return
	}
	// Not synced: a crash before the next fsync only means repairing again.
	r.cfg.Storage.Commit(logstore.Batch{Writes: []logstore.GroupWrite{{Group: r.cfg.Group, Entries: write}}}, func(err error) {
		if err != nil {
			r.cfg.Schedule(func() { r.storageFailed(err) })
		}
	})
	r.drainApply()
	rp.wait = 0
	if rp.next >= rp.to {
		r.finishRepair()
		return
	}
	r.askRepair(m.From)
}

func (r *Replica) repairTick() {
	r.teacher.Tick()
	r.pumpTeacher()
	rp := r.repair
	if rp.wait > 0 {
		rp.wait--
		return
	}
	// Silent teacher, or the first request: ask the next member in turn.
	voters := r.members.Voters
	if len(voters) == 0 {
		return
	}
	rp.teacher = (rp.teacher + 1) % len(voters)
	if to := voters[rp.teacher]; to != r.cfg.Self {
		r.askRepair(to)
	}
}

// askRepair asks a member to teach from the repair's next instance; the request
// also acks what came (the teacher's window moves on).
func (r *Replica) askRepair(to ids.NodeID) {
	rp := r.repair
	rp.wait = r.cfg.Protocol.WithDefaults().LearnTimeoutTicks
	r.cfg.Sender.Send(to, r.cfg.Group, &instance.Message{Type: instance.MsgLearnReq, From: r.cfg.Self, To: to,
		Instance: rp.next, Next: rp.next})
}

// repairedTo moves the repair past an installed checkpoint image.
func (r *Replica) repairedTo(inst ids.InstanceID) {
	if rp := r.repair; rp != nil && inst > rp.next {
		rp.next = inst
		if rp.next >= rp.to {
			r.finishRepair()
		}
	}
}

func (r *Replica) finishRepair() {
	rp := r.repair
	r.repair = nil
	// The membership the core started with was the one at the bad record; the
	// repaired instances may have changed it.
	r.setMembers(r.members)
	r.log.Info("log repaired from peers", zap.Uint64("to", uint64(rp.to)))
	r.drive()
	r.flush()
}
