package logstore

import (
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"go.uber.org/zap"
)

// syncCountingFS counts the fsyncs of WAL files at the file system, so
// Stats.Syncs reports real fsyncs - the number group commit exists to keep low -
// rather than the number of commits that asked for one. It also times them
// (timing, nil: not timed; synctiming.go).
type syncCountingFS struct {
	vfs.FS
	syncs  *atomic.Uint64
	timing *syncTiming
}

func (fs *syncCountingFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, c)
	return fs.wrap(name, f, err)
}

func (fs *syncCountingFS) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(oldname, newname, c)
	return fs.wrap(newname, f, err)
}

func (fs *syncCountingFS) OpenReadWrite(name string, c vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	f, err := fs.FS.OpenReadWrite(name, c, opts...)
	return fs.wrap(name, f, err)
}

func (fs *syncCountingFS) Unwrap() vfs.FS { return fs.FS }

func (fs *syncCountingFS) wrap(name string, f vfs.File, err error) (vfs.File, error) {
	// Pebble names WAL files NNNNNN.log (NNNNNN-III.log with WAL failover).
	if err != nil || !strings.HasSuffix(fs.PathBase(name), ".log") {
		return f, err
	}
	return &syncCountingFile{File: f, syncs: fs.syncs, timing: fs.timing}, nil
}

type syncCountingFile struct {
	vfs.File
	syncs  *atomic.Uint64
	timing *syncTiming
}

func (f *syncCountingFile) Sync() error {
	start := time.Now()
	err := f.File.Sync()
	if err == nil {
		f.timing.observe(time.Since(start))
		f.syncs.Add(1)
	}
	return err
}

func (f *syncCountingFile) SyncData() error {
	start := time.Now()
	err := f.File.SyncData()
	if err == nil {
		f.timing.observe(time.Since(start))
		f.syncs.Add(1)
	}
	return err
}

// pebbleFatal is the panic value of pebbleLogger.Fatalf.
type pebbleFatal struct{ msg string }

func (p pebbleFatal) Error() string { return p.msg }

// pebbleLogger adapts zap to pebble.Logger.
//
// Pebble calls Fatalf when it cannot go on: a failed WAL write or fsync on the
// commit path, a failed MANIFEST sync, a broken invariant. It expects Fatalf not to
// return - if it did, the commit that failed would be reported as a success. zap's
// own Fatal would os.Exit without running deferred code, so Fatalf logs at error
// level and panics instead. On the commit path the committer recovers that panic and
// turns it into ErrFatal (the store stops, see ErrFatal). Anywhere else, in one of
// pebble's background goroutines, the panic ends the process: fail-stop, which is
// what a storage engine that can no longer write must do.
type pebbleLogger struct{ s *zap.SugaredLogger }

func (l pebbleLogger) Infof(format string, args ...any)  { l.s.Infof(format, args...) }
func (l pebbleLogger) Errorf(format string, args ...any) { l.s.Errorf(format, args...) }

func (l pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	l.s.Desugar().Error("pebble fatal error; stopping", zap.String("error", msg))
	panic(pebbleFatal{msg: msg})
}

// eventListener reports the pebble events an operator needs: a write stall is a
// latency spike for every group on the node.
func eventListener(lg *zap.Logger) *pebble.EventListener {
	return &pebble.EventListener{
		BackgroundError: func(err error) { lg.Error("pebble background error", zap.Error(err)) },
		WriteStallBegin: func(info pebble.WriteStallBeginInfo) {
			lg.Warn("pebble write stall begins", zap.String("reason", info.Reason))
		},
		WriteStallEnd: func() { lg.Warn("pebble write stall ends") },
		DiskSlow: func(info pebble.DiskSlowInfo) {
			lg.Warn("pebble disk slow", zap.String("path", info.Path), zap.Duration("duration", info.Duration))
		},
	}
}
