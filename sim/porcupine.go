package sim

import (
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/multipaxos/engine/ids"
)

// Porcupine checks the reads and writes of a run for linearizability with
// github.com/anishathalye/porcupine, on top of the linear checks in
// linearizability.go (which stay: they run on every event and stop the run at the
// first stale read).
//
// The object of each group is its log of application commands: a write appends one
// command and returns its position (the acknowledgement names the instance, and
// the log orders the commands of an instance); a read (lease read or read
// barrier) returns how many commands its member had executed - a prefix of the
// log. Giving writes their positions keeps porcupine's search linear in the
// history: at any point exactly one write can come next, so the dozens of
// concurrent writes per group that made a plain counter model exponential (see
// linearizability.go) cost nothing. Writes that were executed but never
// acknowledged (timed out, failed with an unknown outcome, still open at the
// end) enter the history with no return: they may take effect at any time after
// their call. Writes never executed anywhere are left out: nothing observed them.
// Groups are independent objects (the model's Partition), checked one by one.
//
// Before the check each group's operation intervals are tightened (tighten), in a
// way that keeps exactly the same linearizations: without it, a stall in which
// dozens of writes and long read barriers overlap (seed 338) sends porcupine's
// depth-first search into backtracking it does not finish in minutes.

// logOp is an operation on a group's log, as porcupine sees it.
type logOp struct {
	g     ids.GroupID
	write bool
	cmd   string // writes, for the report
	lease bool   // reads: a lease read (else a read barrier)
	node  ids.NodeID
}

// readOp is a completed read, recorded for porcupine.
type readOp struct {
	issued, returned time.Time
	count            int
	lease            bool
	node             ids.NodeID
}

var logModel = porcupine.Model{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		by := map[ids.GroupID][]porcupine.Operation{}
		var order []ids.GroupID
		for _, op := range h {
			g := op.Input.(logOp).g
			if _, ok := by[g]; !ok {
				order = append(order, g)
			}
			by[g] = append(by[g], op)
		}
		out := make([][]porcupine.Operation, 0, len(order))
		for _, g := range order {
			out = append(out, by[g])
		}
		return out
	},
	Init: func() any { return 0 },
	Step: func(state, input, output any) (bool, any) {
		n, in, out := state.(int), input.(logOp), output.(int)
		if in.write {
			return out == n+1, out
		}
		return out == n, n
	},
	DescribeOperation: func(input, output any) string {
		in := input.(logOp)
		if in.write {
			return fmt.Sprintf("g%d append %q at %d", in.g, in.cmd, output)
		}
		kind := "barrier"
		if in.lease {
			kind = "lease read"
		}
		return fmt.Sprintf("g%d %s on node %d saw %d", in.g, kind, in.node, output)
	},
}

// porcupineCheck runs porcupine on the run's history, once the cluster converged
// and finalChecks passed (each group's log is then known in full on its members).
// A timeout is reported as a violation: an unchecked history is no pass.
func (c *cluster) porcupineCheck() {
	at := func(t time.Time) int64 { return int64(t.Sub(c.start)) }
	var hist []porcupine.Operation
	for g := 0; g < c.opts.Groups; g++ {
		gid := ids.GroupID(g)
		var part []porcupine.Operation
		sm := c.members(gid)[0].sms[g]
		pos := 0
		for inst := ids.InstanceID(0); inst < sm.next; inst++ {
			for _, cmd := range sm.cmdAt[inst] {
				pos++
				call, ok := c.calls[cmd]
				if !ok {
					continue // validity reports it
				}
				ret := int64(math.MaxInt64)
				if a, ok := c.ackAt[cmd]; ok {
					ret = at(a)
				}
				part = append(part, porcupine.Operation{Input: logOp{g: gid, write: true, cmd: cmd},
					Call: at(call), Output: pos, Return: ret})
			}
		}
		for _, r := range c.readOps[gid] {
			part = append(part, porcupine.Operation{Input: logOp{g: gid, lease: r.lease, node: r.node},
				Call: at(r.issued), Output: r.count, Return: at(r.returned)})
		}
		hist = append(hist, tighten(part)...)
	}
	c.res.PorcupineOps = len(hist)
	timeout := c.opts.PorcupineTimeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	switch res := porcupine.CheckOperationsTimeout(logModel, hist, timeout); res {
	case porcupine.Ok:
	case porcupine.Illegal:
		c.res.PorcupineViolation = fmt.Errorf("seed %d: porcupine: the history of reads and writes (%d operations, %d groups) is not linearizable",
			c.opts.Seed, len(hist), c.opts.Groups)
		c.violation("%v", c.res.PorcupineViolation)
	default:
		c.res.PorcupineTimeouts++
		c.violation("porcupine timed out after %v on %d operations: the history was not checked", timeout, len(hist))
	}
}

// tighten narrows the intervals of one group's operations without changing which
// orders are linearizations of them in the log model. The model fixes the order
// of levels: write 1, the reads that saw 1 command, write 2, the reads that saw 2,
// ... (reads of one level in any order among themselves). So an operation's
// linearization point lies after the calls of all operations of lower levels
// (their points are before its own, and each point is after its call), and
// before the returns of all operations of higher levels; raising each call and
// lowering each return to those bounds admits exactly the same linearizations.
// With the calls raised, porcupine meets the operations in level order and
// linearizes a legal history in one pass. If the bounds cross (a call after a
// return), the history is not linearizable: part is returned as it was, for
// porcupine to find that on its own.
func tighten(part []porcupine.Operation) []porcupine.Operation {
	levels := map[int][]int{} // 2k-1: write k; 2k: the reads that saw k
	top := 0
	for i, op := range part {
		l := 2 * op.Output.(int)
		if op.Input.(logOp).write {
			l--
		}
		if l < 0 {
			return part
		}
		levels[l] = append(levels[l], i)
		top = max(top, l)
	}
	// Time is scaled by f, calls at the start of a unit and returns at its end,
	// so that a bound can be moved by one step (strictly after the lower
	// levels' calls, strictly before the higher levels' returns: porcupine then
	// never meets a tie it must undo). A chain of such steps has at most
	// len(part) of them: raised calls stay in the first half of their unit,
	// lowered returns in the second, so no step crosses another time - the
	// constraints between operations stay those the levels imply.
	f := int64(2*len(part) + 4)
	out := slices.Clone(part)
	for i := range out {
		out[i].Call *= f
		if out[i].Return != math.MaxInt64 {
			out[i].Return = out[i].Return*f + f - 1
		}
	}
	var call int64 = math.MinInt64
	for l := 0; l <= top; l++ {
		next := call
		for _, i := range levels[l] {
			if call != math.MinInt64 {
				out[i].Call = max(out[i].Call, call+1)
			}
			next = max(next, out[i].Call)
		}
		call = next
	}
	var ret int64 = math.MaxInt64
	for l := top; l >= 0; l-- {
		next := ret
		for _, i := range levels[l] {
			if ret != math.MaxInt64 {
				out[i].Return = min(out[i].Return, ret-1)
			}
			next = min(next, out[i].Return)
			if out[i].Call > out[i].Return {
				return part
			}
		}
		ret = next
	}
	return out
}
