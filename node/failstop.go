package node

import (
	"fmt"

	"go.uber.org/zap"
)

// # Fail-stop, seen from the embedding process
//
// A failed WAL write or fsync stops the log store for good (logstore.ErrFatal):
// nothing more can be made durable, and retrying is unsafe, so the node must
// not acknowledge anything again until the process restarts and recovers from
// the WAL. The node then refuses every new Propose and call (ErrStopped wrapping
// the cause), each group stops at its next write, and the peers elect other
// masters. The process itself keeps running: Failed and Err let the application
// notice and exit (shardkv does), so that its supervisor restarts it or an
// operator replaces the disk.

// Failed returns a channel that is closed once the node has fail-stopped on a
// storage failure (Err says why). Stop does not close it.
func (n *Node) Failed() <-chan struct{} { return n.store.Failed() }

// Err returns why the node fail-stopped - an error wrapping ErrStorage and
// logstore.ErrFatal, and the I/O error below them - or nil while it works.
func (n *Node) Err() error {
	if err := n.store.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrStorage, err)
	}
	return nil
}

// refuseIfFailed is the error of an operation started after a fail-stop.
func (n *Node) refuseIfFailed() error {
	if err := n.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrStopped, err)
	}
	return nil
}

// watchFailStop logs the node-level fail-stop line once, when the store fails.
func (n *Node) watchFailStop() {
	defer n.wg.Done()
	select {
	case <-n.quit:
	case <-n.store.Failed():
		n.log.Error("node fail-stopped: the log store failed; the node refuses all work until the process restarts (replace the disk if it keeps failing)",
			zap.Error(n.store.Err()))
	}
}
