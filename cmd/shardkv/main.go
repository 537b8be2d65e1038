// Command shardkv is a Redis-protocol key-value server on the Multi-Paxos engine:
// keys are spread over Paxos groups by a stable hash, each group's state machine is
// a KV in Pebble, and any replica takes any command (writes are forwarded to the
// group's master; reads are lease reads on the master by default).
//
//	shardkv demo                      # a 3-replica cluster in this process; redis-cli -p 6381
//	shardkv serve --id 1 --peers 1=10.0.0.1:7001,2=10.0.0.2:7001,3=10.0.0.3:7001 \
//	              --resp 127.0.0.1:6379 --data /var/lib/shardkv --groups 64
//
// Every flag can also be given as an environment variable (SHARDKV_ID,
// SHARDKV_PEERS, ...); `shardkv serve --help` lists them. Command-line mistakes
// exit with status 2, failures at run time with 1.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

const topUsage = `usage: shardkv <command> [flags]

commands:
  demo    run a 3-replica cluster in this process on loopback (RESP ports 6381-6383)
  serve   run one replica of a cluster

Run 'shardkv <command> --help' for the flags of a command.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is main without the process: it returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, topUsage)
		return 2
	}
	var err error
	switch args[0] {
	case "demo":
		err = runDemo(ctx, args[1:], stdout, stderr)
	case "serve":
		err = runServe(ctx, args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, topUsage)
		return 0
	default:
		fmt.Fprintf(stderr, "shardkv: unknown command %q\n\n%s", args[0], topUsage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "shardkv %s: %s\nRun 'shardkv %s --help' for the flags.\n", args[0], strings.TrimPrefix(err.Error(), errUsage.Error()+": "), args[0])
		return 2
	default:
		fmt.Fprintf(stderr, "shardkv %s: %v\n", args[0], err)
		return 1
	}
}
