package main

import (
	"context"
	"errors"
	"flag"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/multipaxos/engine/ids"
)

type fakeNode struct {
	id     ids.NodeID
	failed chan struct{}
	err    error
}

func (f *fakeNode) ID() ids.NodeID          { return f.id }
func (f *fakeNode) Failed() <-chan struct{} { return f.failed }
func (f *fakeNode) Err() error              { return f.err }

// TestWaitForStop: a signal (ctx) ends the wait quietly; a node that
// fail-stops ends it with an error naming the replica and wrapping the cause
// (run turns it into exit status 1) and an error-level log line. The real
// fail-stop behind Failed is node's TestDiskFaultFailStop.
func TestWaitForStop(t *testing.T) {
	nodes := func() []failStopper {
		return []failStopper{&fakeNode{id: 1, failed: make(chan struct{})},
			&fakeNode{id: 2, failed: make(chan struct{})}, &fakeNode{id: 3, failed: make(chan struct{})}}
	}

	core, logs := observer.New(zapcore.InfoLevel)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := waitForStop(ctx, zap.New(core), nodes()...); err != nil {
		t.Fatalf("signal: %v, want nil", err)
	}
	if logs.Len() != 0 {
		t.Fatalf("signal logged %v", logs.All())
	}

	ns := nodes()
	cause := errors.New("node: group storage failure: logstore: fatal I/O error, store stopped: no space left on device")
	f := ns[1].(*fakeNode)
	f.err = cause
	close(f.failed)
	err := waitForStop(context.Background(), zap.New(core), ns...)
	if !errors.Is(err, cause) || err.Error() != "replica 2 fail-stopped: "+cause.Error() {
		t.Fatalf("fail-stop: %v", err)
	}
	lines := logs.FilterMessageSnippet("fail-stopped").All()
	if len(lines) != 1 || lines[0].Level != zapcore.ErrorLevel || lines[0].ContextMap()["replica"] != uint64(2) {
		t.Fatalf("log lines %+v, want one error line for replica 2", logs.All())
	}
	if errors.Is(err, errUsage) || errors.Is(err, flag.ErrHelp) {
		t.Fatalf("%v would not exit with status 1", err) // run: any other error is 1
	}
}
