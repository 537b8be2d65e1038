package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
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
		"serve": {"id", "peers", "listen", "resp", "data", "groups", "requirepass", "cluster-id", "cluster-secret", "read-mode", "timeout", "log-level"},
		"demo":  {"data", "groups", "peer-port", "resp-port", "requirepass", "log-level"},
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
