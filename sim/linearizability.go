package sim

import (
	"time"

	"github.com/multipaxos/engine/ids"
)

// Reads are checked for linearizability against the group's log, which every
// member's state machine executes as a prefix. A read (lease read or read barrier)
// returns the prefix its member has executed; it must contain
//
//   - every write acknowledged before the read was issued (checked in read), and
//   - everything an earlier read saw, if that read returned before this one was
//     issued: reads never go back in time (checked here).
//
// For a log those two conditions are exactly linearizability of reads against
// writes. porcupine (which the shardkv end-to-end tests use) was tried here with a
// counter model and did not finish 200 seeds in 10 minutes: dozens of concurrent
// writes per group make its search exponential, while these checks are linear.
// porcupine.go now runs porcupine as well, with a model in which each write
// returns its log position, which keeps its search linear.
type readRecord struct {
	issued, returned time.Time
	count            int // commands executed by the reader when it read
}

func (c *cluster) checkReadOrder(g ids.GroupID, r readRecord, node ids.NodeID) {
	for _, prev := range c.readLog[g] {
		if prev.returned.Before(r.issued) && r.count < prev.count {
			c.violation("read on node %d group %d saw %d commands, but a read that returned before it was issued saw %d",
				node, g, r.count, prev.count)
			return
		}
	}
	c.readLog[g] = append(c.readLog[g], r)
}
