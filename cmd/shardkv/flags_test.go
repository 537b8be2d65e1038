package main

import (
	"bytes"
	"context"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/multipaxos/engine/node"
)

func runArgs(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsageErrorsExit2(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{nil, nil, "usage: shardkv <command>"},
		{[]string{"bogus"}, nil, `unknown command "bogus"`},
		{[]string{"serve", "--bogus"}, nil, "flag provided but not defined: -bogus"},
		{[]string{"serve", "--groups", "x"}, nil, `invalid value "x" for flag -groups`},
		{[]string{"serve"}, nil, "--id is required"},
		{[]string{"serve", "--id", "1"}, nil, "--peers is required"},
		{[]string{"serve", "--id", "4", "--peers", "1=127.0.0.1:7001,2=127.0.0.1:7002"}, nil, "--id 4 is not in --peers"},
		{[]string{"serve", "--id", "1", "--peers", "1=127.0.0.1:7001"}, nil, "--data is required"},
		{[]string{"serve", "--id", "1", "--peers", "1=nohost"}, nil, "missing port in address"},
		{[]string{"serve", "--id", "1", "--peers", "1=h:1,1=h:2"}, nil, "node 1 appears twice"},
		{[]string{"serve", "--id", "1", "--peers", "0=h:1"}, nil, "the ID must be a positive integer"},
		{[]string{"serve", "--id", "1", "--peers", "1=127.0.0.1:1", "--data", "d", "--groups", "0"}, nil, "--groups is 0"},
		{[]string{"serve", "--id", "1", "--peers", "1=h:1", "--data", "d", "--resp", "x"}, nil, "missing port"},
		{[]string{"serve", "--read-mode", "fast"}, nil, "want linearizable, follower or stale"},
		{[]string{"serve", "--log-level", "loud"}, nil, "want debug, info, warn or error"},
		{[]string{"serve", "extra"}, nil, `unexpected argument "extra"`},
		{[]string{"serve"}, map[string]string{"SHARDKV_GROUPS": "many"}, `invalid value "many" for SHARDKV_GROUPS`},
		{[]string{"serve"}, map[string]string{"SHARDKV_ID": "2", "SHARDKV_PEERS": "1=h:1"}, "--id 2 is not in --peers"},
		// The command line wins over the environment.
		{[]string{"serve", "--id", "1"}, map[string]string{"SHARDKV_ID": "2", "SHARDKV_PEERS": "1=h:1"}, "--data is required"},
		{[]string{"serve", "--id", "1", "--peers", "1=127.0.0.1:1", "--data", "d", "--cluster-secret", "short"}, nil, "--cluster-secret is 5 bytes, want at least 16"},
		{[]string{"serve", "--id", "1", "--peers", "1=127.0.0.1:1,2=10.0.0.2:7001", "--data", "d"}, nil, "--cluster-secret (or SHARDKV_CLUSTER_SECRET) is required: peer 2 (10.0.0.2:7001) is not on loopback"},
		{[]string{"serve", "--id", "1", "--peers", "1=127.0.0.1:1", "--data", "d"}, map[string]string{"SHARDKV_CLUSTER_SECRET": "0123456789abcde"}, "--cluster-secret is 15 bytes"},
		{[]string{"demo", "--peer-port", "70000"}, nil, "--peer-port is 70000"},
		{[]string{"demo", "--groups", "-1"}, nil, "--groups is -1"},
		// Tuning and membership flags.
		{serveArgs("--tick-interval", "0s"), nil, "--tick-interval is 0s, want 1ms .. 200ms"},
		{serveArgs("--tick-interval", "1s"), nil, "--tick-interval is 1s, want 1ms .. 200ms"},
		{serveArgs("--lease", "50ms"), nil, "--lease is 50ms, want at least two --tick-interval (100ms)"},
		{serveArgs("--lease", "-1s", "--tick-interval", "1ms"), nil, "--lease is -1s"},
		{serveArgs("--batch-count", "0"), nil, "--batch-count is 0, want at least 1"},
		{serveArgs("--batch-bytes", "512KiB"), nil, "--batch-bytes is 512KiB, want 1MiB .. 8MiB"},
		{serveArgs("--batch-bytes", "9MiB"), nil, "--batch-bytes is 9MiB, want 1MiB .. 8MiB"},
		{serveArgs("--batch-bytes", "4MB"), nil, "want a byte count: a number, or with KiB, MiB or GiB"},
		{serveArgs("--pending-max", "0"), nil, "--pending-max is 0, want at least 1"},
		{serveArgs("--checkpoint-every", "0"), nil, "--checkpoint-every is 0, want at least 1"},
		{serveArgs("--keep-instances", "-5"), nil, "--keep-instances is -5, want at least 1"},
		{serveArgs("--teach-rate", "0"), nil, "want bytes per second above 0 (e.g. 64MiB) or unlimited"},
		{serveArgs("--teach-rate", "fast"), nil, "want bytes per second above 0"},
		{serveArgs("--clock-drift", "0"), nil, "--clock-drift is 0, want above 0 and below 0.25"},
		{serveArgs("--clock-drift", "0.25"), nil, "--clock-drift is 0.25"},
		{serveArgs("--log-memtable", "1000"), nil, "--log-memtable is 1000, want 1MiB .. 1GiB"},
		{serveArgs("--log-memtable", "2GiB"), nil, "--log-memtable is 2GiB"},
		{serveArgs("--may-become-master=maybe"), nil, `invalid boolean value "maybe" for -may-become-master`},
		{serveArgs("--initial-voters", "1,x"), nil, `"x": a node ID is a positive integer`},
		{serveArgs("--initial-voters", "1,2,1"), nil, "node 1 appears twice"},
		{serveArgs("--initial-voters", ","), nil, "no node IDs"},
		{serveArgs(), map[string]string{"SHARDKV_LEASE": "long"}, `invalid value "long" for SHARDKV_LEASE`},
		{serveArgs(), map[string]string{"SHARDKV_MAY_BECOME_MASTER": "perhaps"}, `invalid value "perhaps" for SHARDKV_MAY_BECOME_MASTER`},
		{serveArgs(), map[string]string{"SHARDKV_TICK_INTERVAL": "10ms", "SHARDKV_LEASE": "15ms"}, "--lease is 15ms, want at least two --tick-interval (20ms)"},
		{[]string{"demo", "--lease", "1ms"}, nil, "--lease is 1ms"},
		{[]string{"demo", "--batch-count", "-1"}, nil, "--batch-count is -1"},
		{[]string{"demo", "--clock-drift", "0.1"}, nil, "flag provided but not defined: -clock-drift"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			code, _, stderr := runArgs(tc.args...)
			if code != 2 {
				t.Errorf("exit %d, want 2 (stderr %q)", code, stderr)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr %q does not say %q", stderr, tc.want)
			}
		})
	}
}

func TestHelpListsEveryFlagAndItsEnvironmentVariable(t *testing.T) {
	for cmd, flags := range map[string][]string{
		"serve": {"id", "peers", "listen", "resp", "data", "groups", "requirepass", "cluster-id", "cluster-secret", "read-mode", "timeout", "log-level",
			"metrics", "initial-voters", "lease", "tick-interval", "batch-count", "batch-bytes", "pending-max", "checkpoint-every",
			"keep-instances", "teach-rate", "clock-drift", "log-memtable", "may-become-master"},
		"demo": {"data", "groups", "peer-port", "resp-port", "requirepass", "log-level", "metrics",
			"lease", "tick-interval", "batch-count", "batch-bytes", "pending-max", "checkpoint-every", "keep-instances", "teach-rate"},
	} {
		code, out, _ := runArgs(cmd, "--help")
		if code != 0 {
			t.Fatalf("%s --help: exit %d", cmd, code)
		}
		for _, f := range flags {
			if !strings.Contains(out, "--"+f+" ") || !strings.Contains(out, "env "+envName(f)) {
				t.Errorf("%s --help does not explain --%s and %s:\n%s", cmd, f, envName(f), out)
			}
		}
	}
	if code, out, _ := runArgs("help"); code != 0 || !strings.Contains(out, "serve") {
		t.Errorf("help: %d %q", code, out)
	}
}

func TestLoopbackPeers(t *testing.T) {
	for addr, want := range map[string]bool{"127.0.0.1:7001": true, "127.9.9.9:1": true, "[::1]:7001": true,
		"localhost:7001": true, "10.0.0.1:7001": false, "example.com:7001": false, "0.0.0.0:7001": false, "nohost": false} {
		if got := isLoopback(addr); got != want {
			t.Errorf("isLoopback(%q) = %v, want %v", addr, got, want)
		}
	}
}

// serveArgs is a serve command line that passes the required checks, plus args.
func serveArgs(args ...string) []string {
	return append([]string{"serve", "--id", "1", "--peers", "1=127.0.0.1:1", "--data", "d"}, args...)
}

// TestTuningFlagsReachTheEngine: the defaults are the engine's own, and every
// flag, from the command line or the environment, lands in its node.Options field.
func TestTuningFlagsReachTheEngine(t *testing.T) {
	parse := func(t *testing.T, args ...string) node.Options {
		t.Helper()
		fs := newFlagSet("serve", "", io.Discard)
		tune := addTuningFlags(fs, true)
		if err := parseFlags(fs, args); err != nil {
			t.Fatal(err)
		}
		if err := tune.check(); err != nil {
			t.Fatal(err)
		}
		var o node.Options
		tune.apply(&o)
		return o
	}
	o := parse(t)
	want := node.Options{Lease: time.Second, TickInterval: 50 * time.Millisecond, ClockDrift: 0.01, BatchCountMax: 1024,
		BatchBytesMax: 4 << 20, PendingMax: 65536, CheckpointEvery: 10000, KeepInstances: 500,
		TeachBytesPerSecond: 64 << 20, LogMemTableBytes: 64 << 20}
	if !reflect.DeepEqual(o, want) || o.MasterCandidate != nil {
		t.Errorf("defaults:\n got %+v\nwant %+v", o, want)
	}
	t.Setenv("SHARDKV_KEEP_INSTANCES", "77")
	t.Setenv("SHARDKV_BATCH_COUNT", "9") // the command line wins
	o = parse(t, "--lease", "300ms", "--tick-interval", "10ms", "--clock-drift", "0.05", "--batch-count", "64",
		"--batch-bytes", "2MiB", "--pending-max", "100", "--checkpoint-every", "2000", "--teach-rate", "unlimited",
		"--log-memtable", "8388608", "--may-become-master=false")
	mc := o.MasterCandidate
	o.MasterCandidate = nil
	want = node.Options{Lease: 300 * time.Millisecond, TickInterval: 10 * time.Millisecond, ClockDrift: 0.05, BatchCountMax: 64,
		BatchBytesMax: 2 << 20, PendingMax: 100, CheckpointEvery: 2000, KeepInstances: 77,
		TeachBytesPerSecond: -1, LogMemTableBytes: 8 << 20}
	if !reflect.DeepEqual(o, want) {
		t.Errorf("set:\n got %+v\nwant %+v", o, want)
	}
	if mc == nil || mc(0) || mc(7) {
		t.Error("--may-become-master=false does not keep masters off this replica")
	}
}

func TestSizeFlag(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "1": 1, "1536": 1536, "4KiB": 4096, "3MiB": 3 << 20, "2GiB": 2 << 30} {
		var s sizeFlag
		if err := s.Set(in); err != nil || int64(s) != want {
			t.Errorf("Set(%q) = %d, %v; want %d", in, s, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1.5MiB", "4MB", "4 MiB", "MiB", "99999999999GiB"} {
		var s sizeFlag
		if err := s.Set(in); err == nil {
			t.Errorf("Set(%q) accepted: %d", in, s)
		}
	}
	for v, want := range map[sizeFlag]string{0: "0", 1000: "1000", 1024: "1KiB", 4 << 20: "4MiB", 1 << 30: "1GiB", 1<<20 + 1: "1048577"} {
		if got := v.String(); got != want {
			t.Errorf("%d prints as %q, want %q", int64(v), got, want)
		}
	}
	var r rateFlag
	if err := r.Set("unlimited"); err != nil || r != -1 || r.String() != "unlimited" {
		t.Errorf("rate unlimited: %d %v", r, err)
	}
}
