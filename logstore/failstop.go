package logstore

import "sync"

// storeExt holds what a PebbleStore tells its owner beyond the Store interface:
// the fail-stop signal (this file) and the fsync latencies (synctiming.go).
type storeExt struct {
	failOnce sync.Once
	failedCh chan struct{} // made by failInit; closed by notifyFailed
	timing   syncTiming
}

func (e *storeExt) failInit() { e.failedCh = make(chan struct{}) }

// notifyFailed closes the Failed channel; s.failed is already set.
func (s *PebbleStore) notifyFailed() {
	s.ext.failOnce.Do(s.ext.failInit)
	close(s.ext.failedCh)
}

// Failed returns a channel that is closed once the store has fail-stopped: a
// WAL write or fsync failed (ErrFatal; Err returns it). From then on every
// Commit and read fails, so the node can no longer make anything durable and the
// process must restart. Close does not close the channel.
func (s *PebbleStore) Failed() <-chan struct{} {
	s.ext.failOnce.Do(s.ext.failInit)
	return s.ext.failedCh
}

// Err returns the error that fail-stopped the store (wrapping ErrFatal and the
// I/O error), or nil while it works.
func (s *PebbleStore) Err() error { return s.failure() }
