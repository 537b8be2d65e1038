package logstore

import (
	"errors"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/multipaxos/engine/ids"
)

// TestPebbleFailedSignal: Failed stays open and Err nil while the store works;
// the first failed WAL fsync or write (ENOSPC) closes Failed, Err wraps ErrFatal
// and the I/O error, and the fail-stop line is logged once at error level.
func TestPebbleFailedSignal(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault func(op errorfs.Op) bool
		cause error
	}{
		{"fsync", func(op errorfs.Op) bool {
			return op.Kind == errorfs.OpFileSync || op.Kind == errorfs.OpFileSyncData
		}, errorfs.ErrInjected},
		{"enospc", func(op errorfs.Op) bool { return op.Kind == errorfs.OpFileWrite }, syscall.ENOSPC},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var armed atomic.Bool
			fs := errorfs.Wrap(vfs.NewMem(), errorfs.InjectorFunc(func(op errorfs.Op) error {
				if armed.Load() && strings.HasSuffix(op.Path, ".log") && tc.fault(op) {
					return tc.cause
				}
				return nil
			}))
			core, logs := observer.New(zapcore.ErrorLevel)
			lg := zap.New(zapcore.NewTee(zaptest.NewLogger(t).Core(), core))
			s := openPebble(t, "db", Options{FS: fs, Logger: lg})
			for i := range 5 {
				if err := commitWait(s, Batch{Sync: true, Writes: []GroupWrite{{Group: 1, Entries: []Entry{ent(ids.InstanceID(1+i), 1, "v")}}}}); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case <-s.Failed():
				t.Fatal("Failed closed while the store works")
			default:
			}
			if err := s.Err(); err != nil {
				t.Fatalf("Err = %v while the store works", err)
			}
			lat, st := s.SyncLatency(), s.Stats()
			if lat.Count != st.Syncs || lat.Count == 0 || lat.Cumulative[len(lat.Cumulative)-1] > lat.Count {
				t.Fatalf("sync latency %+v, %d fsyncs", lat, st.Syncs)
			}

			armed.Store(true)
			if err := commitWait(s, Batch{Sync: true, Writes: []GroupWrite{{Group: 1, Entries: []Entry{ent(9, 1, "lost")}}}}); !errors.Is(err, ErrFatal) {
				t.Fatalf("commit under the fault: %v, want ErrFatal", err)
			}
			<-s.Failed() // closed before the failing commit's done ran
			err := s.Err()
			if !errors.Is(err, ErrFatal) || !errors.Is(err, tc.cause) {
				t.Fatalf("Err = %v, want ErrFatal wrapping %v", err, tc.cause)
			}
			if got := logs.FilterMessageSnippet("store stopped (fail-stop)").Len(); got != 1 {
				t.Fatalf("%d fail-stop log lines, want 1: %v", got, logs.All())
			}
			if err := commitWait(s, Batch{Sync: true}); !errors.Is(err, ErrFatal) {
				t.Fatalf("commit after the failure: %v, want ErrFatal", err)
			}
			if got := s.SyncLatency().Count; got != s.Stats().Syncs {
				t.Fatalf("after the failure: %d timed fsyncs, %d counted", got, s.Stats().Syncs)
			}
			if err := s.Close(); !errors.Is(err, ErrFatal) {
				t.Fatalf("Close: %v, want ErrFatal", err)
			}
		})
	}
}
