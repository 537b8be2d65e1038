package group

import (
	"time"

	"github.com/multipaxos/engine/ids"
)

// Exactly-once across forwards.
//
// A command forwarded to the master can reach it twice (a retry after a master
// change, a frame duplicated or delayed past a restart), and proposing it again
// after it was chosen would execute it twice. Every forwarded command therefore
// carries since: an instance below which it was certainly not chosen (its
// origin's next instance to execute when the command was created; a command did
// not exist when earlier instances were chosen). The master keeps the IDs of the
// commands it executed in the instances [floor, applied) - the executed window -
// and before it proposes a forwarded command it asks the window:
//
//   - the ID is there: chosen already, a duplicate, dropped;
//   - since >= floor and the ID is not there: not chosen in [since, applied),
//     nor below since: it may be proposed (the in-flight value is settled first;
//     see maybePropose);
//   - since < floor: the window no longer covers the instances the command may
//     have been chosen in, so nobody here can tell. The copy is dropped and
//     counted (Stats.ForwardsTooOld); its origin still waits for it and learns
//     the outcome by executing the log, or gives up with ErrUnknownOutcome.
//
// So the check is exact where the window reaches and fails safe where it does
// not, and the window may be bounded freely: it keeps the commands of the last
// executedHorizon, at least executedKeepMin of them (a quiet group remembers a
// long time back for little memory) and at most executedIDsMax (a hot group
// cannot hold more). Memory follows a group's throughput, not its age, and a
// group that goes quiet gives it back (Sweep).
//
// Only commands that were forwarded before they were proposed can have copies,
// so only those are checked and recorded (Command.MayDup, carried in the value
// so that every member, and a replay, records the same). One that a master
// proposed before it was ever forwarded is forwarded only after its instance chose
// another value (requeueInflight), and a value proposed in one instance is never
// chosen in another: so no copy of a forwarded command is chosen unmarked.

const (
	executedHorizon = 10 * time.Second
	executedKeepMin = 64
	executedIDsMax  = 1 << 16
)

type executedEntry struct {
	id   RequestID
	inst ids.InstanceID
	at   int64 // the replica's clock, unix nanoseconds, when executed
}

// executedWindow is the set of application command IDs executed in [floor, ...).
type executedWindow struct {
	set   map[RequestID]struct{}
	fifo  []executedEntry // in execution order; live from head
	head  int
	floor ids.InstanceID // every command executed at floor or later is in set
}

// reset starts an empty window at instance from: nothing below it is known.
func (w *executedWindow) reset(from ids.InstanceID) {
	*w = executedWindow{floor: from}
}

// add records id, executed in instance inst at time now.
func (w *executedWindow) add(id RequestID, inst ids.InstanceID, now time.Time) {
	if w.set == nil {
		w.set = make(map[RequestID]struct{})
	}
	if _, ok := w.set[id]; ok {
		return
	}
	w.set[id] = struct{}{}
	w.fifo = append(w.fifo, executedEntry{id: id, inst: inst, at: now.UnixNano()})
	if w.len() > executedIDsMax {
		w.dropOldest()
	}
}

// skipTo records that the instances below inst were not executed here (a
// checkpoint image replaced them): their commands are not known.
func (w *executedWindow) skipTo(inst ids.InstanceID) { w.floor = max(w.floor, inst) }

// lookup reports whether id was executed (then known is true too) and, if it was
// not found, whether that is certain for a command not chosen below since.
func (w *executedWindow) lookup(id RequestID, since ids.InstanceID) (executed, known bool) {
	if _, ok := w.set[id]; ok {
		return true, true
	}
	return false, since >= w.floor
}

// expire drops the entries older than executedHorizon beyond the newest
// executedKeepMin.
func (w *executedWindow) expire(now time.Time) {
	old := now.Add(-executedHorizon).UnixNano()
	for w.len() > executedKeepMin && w.fifo[w.head].at < old {
		w.dropOldest()
	}
	if w.head > 0 && w.head >= len(w.fifo)/2 {
		// Compact, into a new slice when the old one is mostly empty, so a burst's
		// capacity is given back.
		live := w.fifo[w.head:]
		if cap(w.fifo) > 4*len(live)+executedKeepMin {
			// Go maps never shrink: the set goes with the slice.
			w.fifo = append([]executedEntry(nil), live...)
			w.set = make(map[RequestID]struct{}, len(w.fifo))
			for _, e := range w.fifo {
				w.set[e.id] = struct{}{}
			}
		} else {
			w.fifo = w.fifo[:copy(w.fifo, live)]
		}
		w.head = 0
	}
}

// expiring reports whether expire may still drop something.
func (w *executedWindow) expiring() bool { return w.len() > executedKeepMin }

func (w *executedWindow) len() int { return len(w.fifo) - w.head }

func (w *executedWindow) dropOldest() {
	e := w.fifo[w.head]
	w.fifo[w.head] = executedEntry{}
	w.head++
	delete(w.set, e.id)
	// Other commands of e.inst may still be in the set; that does not matter:
	// every command executed above e.inst is.
	w.floor = max(w.floor, e.inst+1)
	if w.len() == 0 {
		w.set, w.fifo, w.head = nil, nil, 0 // let an emptied set's memory go
	}
}
