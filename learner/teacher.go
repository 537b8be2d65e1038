// Package learner streams chosen values to members that fell behind, the way TCP
// streams bytes: instance IDs are the sequence numbers.
//
// # The protocol
//
// A member that sees a higher instance ID than its own Next - in any message, in the
// node-wide status exchange, or in a Chosen it holds no value for - asks one member
// that is ahead to teach it (instance.MsgLearnReq carrying its Next), preferring the
// master. The teacher opens a session for that learner and streams chosen values
// from the learner's Next in MsgLearnValues messages. The learner executes them
// strictly in order (a value past a gap is dropped: it never applies an instance out
// of order or twice) and, after the batch that recorded them is durable, acks with
// another MsgLearnReq carrying its new Next: a cumulative ack, "everything below
// this is durable here".
//
// The teacher keeps at most a window of unacked values per learner (a count and a
// byte budget, both options). When a session's window makes no progress for
// ResendTicks it goes back to the last ack and sends again (go-back-N: lost,
// duplicated and reordered messages cost a timeout, never a wrong value). A session
// ends when the learner's ack reaches the teacher's own Next, or when the learner
// has been silent for IdleTicks. A learner whose teacher went silent asks another
// member (package instance rotates over the members it knows to be ahead).
//
// The learner's side - in-order execution, durable acks, choosing a teacher - is
// protocol state and lives in the pure core (package instance). This package owns
// the teacher's side, which reads the log: the sessions, the window, resends, and
// the bandwidth share.
//
// # Bandwidth share
//
// A node teaches many groups' learners through the same connections that carry its
// own groups' traffic. Every message a Teacher sends first takes its bytes from a
// Budget shared by all groups of the node (a token bucket, see package node): when
// the bucket is empty the sessions wait for the next tick, so catching members up
// takes at most the configured rate and never starves the node's own instances.
//
// # Trimmed logs
//
// A learner may ask for instances the teacher has already trimmed from its log.
// Pump then reports the session as needing a checkpoint (package checkpoint) and
// stops streaming to it; once the learner has installed the checkpoint it asks
// again from the checkpoint's instance and the stream resumes from the log.
package learner

import (
	"slices"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/instance"
)

// Config bounds a Teacher. Durations are in ticks of the group's clock.
type Config struct {
	// WindowCount bounds the values sent to one learner and not yet acked.
	// Default 1024.
	WindowCount int
	// WindowBytes bounds the value bytes sent to one learner and not yet acked.
	// Default 8 MiB.
	WindowBytes int
	// MessageCount bounds the values of one MsgLearnValues. Default 128.
	MessageCount int
	// MessageBytes bounds the value bytes of one MsgLearnValues (it must fit the
	// transport's frame limit; a single larger value is sent alone). Default 1 MiB.
	MessageBytes int
	// ResendTicks is how long a session waits for an ack that moves before it
	// sends again from the last ack. Default 20.
	ResendTicks int
	// IdleTicks ends a session whose learner sent nothing for that long.
	// Default 500.
	IdleTicks int
	// SessionsMax bounds the learners one group teaches at once; further
	// requests are ignored until a session ends (the learner asks again).
	// Default 8.
	SessionsMax int
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.WindowCount, 1024)
	def(&c.WindowBytes, 8<<20)
	def(&c.MessageCount, 128)
	def(&c.MessageBytes, 1<<20)
	def(&c.ResendTicks, 20)
	def(&c.IdleTicks, 500)
	def(&c.SessionsMax, 8)
	return c
}

// Source reads chosen values from the teacher's log: consecutive entries from
// `from`, at most maxCount of them and about maxBytes of value bytes (the first one
// whatever its size). It returns fewer when the log ends or a record is missing.
type Source interface {
	Entries(from ids.InstanceID, maxCount, maxBytes int) ([]instance.Entry, error)
}

// Budget is the node-wide share of bandwidth for teaching. Take reports whether
// bytes may be sent now (and spends them); nil means no limit.
type Budget interface {
	Take(bytes int) bool
}

// Stats counts a Teacher's work since it was created.
type Stats struct {
	Sessions       uint64 // sessions opened
	Values         uint64 // values sent (resends included)
	Bytes          uint64 // value bytes sent (resends included)
	Resends        uint64 // go-back-N events
	BudgetWaits    uint64 // pumps cut short by the bandwidth budget
	NeedCheckpoint uint64 // sessions that asked for trimmed instances
}

// Teacher is the teaching side of one member of one group. It is not safe for
// concurrent use: the group drives it from its serial context.
type Teacher struct {
	cfg      Config
	now      uint64
	sessions map[ids.NodeID]*session
	order    []ids.NodeID // session keys, sorted: a deterministic pump order
	stats    Stats
}

// session is one learner's stream. [acked, sent) is in flight, split into the
// messages that carried it so that acks release their bytes.
type session struct {
	acked, sent ids.InstanceID
	flights     []flight
	inBytes     int
	lastMove    uint64 // tick of the last ack that moved, or of the last go-back
	lastHeard   uint64
	waiting     bool // needs a checkpoint: stream nothing until it asks again
}

type flight struct {
	end   ids.InstanceID // one past the last value of the message
	bytes int
}

// New returns a Teacher with cfg's defaults filled in.
func New(cfg Config) *Teacher {
	return &Teacher{cfg: cfg.WithDefaults(), sessions: map[ids.NodeID]*session{}}
}

// Active reports whether any session is open (the group keeps ticking it).
func (t *Teacher) Active() bool { return len(t.sessions) > 0 }

// Stats returns the counters.
func (t *Teacher) Stats() Stats { return t.stats }

// Request handles a learn request from learner `from` that holds every instance
// below next durably: it opens a session, acks one, or restarts one whose learner
// went back (a learner that restarted and lost what it had not synced).
func (t *Teacher) Request(from ids.NodeID, next ids.InstanceID) {
	s := t.sessions[from]
	if s == nil {
		if len(t.sessions) >= t.cfg.SessionsMax {
			return
		}
		s = &session{acked: next, sent: next, lastMove: t.now}
		t.sessions[from] = s
		i, _ := slices.BinarySearch(t.order, from)
		t.order = slices.Insert(t.order, i, from)
		t.stats.Sessions++
	}
	s.lastHeard = t.now
	s.waiting = false
	switch {
	case next > s.acked:
		s.acked = next
		for len(s.flights) > 0 && s.flights[0].end <= next {
			s.inBytes -= s.flights[0].bytes
			s.flights = s.flights[1:]
		}
		if s.sent < next {
			s.sent, s.flights, s.inBytes = next, nil, 0
		}
		s.lastMove = t.now
	case next < s.acked:
		s.acked, s.sent, s.flights, s.inBytes = next, next, nil, 0
		s.lastMove = t.now
	}
}

// Tick advances the clock: sessions without progress go back to their last ack,
// silent ones end.
func (t *Teacher) Tick() {
	t.now++
	for i := 0; i < len(t.order); i++ {
		id := t.order[i]
		s := t.sessions[id]
		if t.now-s.lastHeard >= uint64(t.cfg.IdleTicks) {
			t.end(id) // removes order[i]: look at i again
			i--
			continue
		}
		if s.sent > s.acked && t.now-s.lastMove >= uint64(t.cfg.ResendTicks) {
			s.sent, s.flights, s.inBytes = s.acked, nil, 0
			s.lastMove = t.now
			t.stats.Resends++
		}
	}
}

func (t *Teacher) end(id ids.NodeID) {
	delete(t.sessions, id)
	if i, ok := slices.BinarySearch(t.order, id); ok {
		t.order = slices.Delete(t.order, i, i+1)
	}
}

// Pump sends what the windows allow. chosen is the teacher's Next (values at and
// above it are not known chosen and never taught); minRetained is the lowest
// instance its log still holds. send gets each message's entries, which it owns.
// Pump returns the learners that need instances below minRetained: they need a
// checkpoint, and get nothing more until they ask again. Sessions whose learner
// caught up end here.
func (t *Teacher) Pump(chosen, minRetained ids.InstanceID, src Source, budget Budget,
	send func(to ids.NodeID, entries []instance.Entry)) (needCheckpoint []ids.NodeID, err error) {
	for i := 0; i < len(t.order); i++ {
		id := t.order[i]
		s := t.sessions[id]
		if s.acked >= chosen {
			t.end(id)
			i--
			continue
		}
		if s.waiting {
			continue
		}
		if s.sent < minRetained {
			s.waiting = true
			t.stats.NeedCheckpoint++
			needCheckpoint = append(needCheckpoint, id)
			continue
		}
		for s.sent < chosen && int(s.sent-s.acked) < t.cfg.WindowCount && s.inBytes < t.cfg.WindowBytes {
			count := min(t.cfg.MessageCount, t.cfg.WindowCount-int(s.sent-s.acked), int(chosen-s.sent))
			es, rerr := src.Entries(s.sent, count, min(t.cfg.MessageBytes, t.cfg.WindowBytes-s.inBytes))
			if rerr != nil {
				return needCheckpoint, rerr
			}
			if len(es) == 0 || es[0].Instance != s.sent {
				// A record below the teacher's Next is missing: trimmed meanwhile
				// (the next Pump sees the new minRetained) or lost; the learner's
				// timeout sends it to another member.
				break
			}
			for len(es) > 0 && es[len(es)-1].Instance >= chosen {
				es = es[:len(es)-1]
			}
			bytes := 0
			for _, e := range es {
				bytes += len(e.Value)
			}
			if budget != nil && !budget.Take(bytes) {
				t.stats.BudgetWaits++
				return needCheckpoint, nil
			}
			end := es[len(es)-1].Instance + 1
			send(id, es)
			s.flights = append(s.flights, flight{end: end, bytes: bytes})
			s.inBytes += bytes
			s.sent = end
			t.stats.Values += uint64(len(es))
			t.stats.Bytes += uint64(bytes)
		}
	}
	return needCheckpoint, nil
}
