package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/kv"
	"github.com/multipaxos/engine/netio"
)

// errUsage marks a command-line mistake: the process exits with status 2.
var errUsage = errors.New("usage")

// envPrefix is the prefix of the environment variable of every flag:
// --read-mode is SHARDKV_READ_MODE.
const envPrefix = "SHARDKV_"

func envName(flagName string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// flagSet is a flag set whose help lists every flag with its environment
// variable. The flag package's own printing is off: a mistake gets one clear line
// (from run), --help the full text on stdout.
type flagSet struct {
	*flag.FlagSet
	help func()
}

func newFlagSet(name, synopsis string, out io.Writer) *flagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	help := func() {
		fmt.Fprintf(out, "usage: shardkv %s [flags]\n\n%s\n\nflags (each also from the environment variable shown; a flag on the command line wins):\n", name, synopsis)
		fs.VisitAll(func(f *flag.Flag) {
			typ, usage := flag.UnquoteUsage(f)
			fmt.Fprintf(out, "  --%s %s\n", f.Name, typ)
			fmt.Fprintf(out, "        %s\n", strings.ReplaceAll(usage, "\n", "\n        "))
			fmt.Fprintf(out, "        env %s", envName(f.Name))
			if f.DefValue != "" && f.DefValue != "0" {
				fmt.Fprintf(out, "; default %s", f.DefValue)
			}
			fmt.Fprintln(out)
		})
	}
	return &flagSet{FlagSet: fs, help: help}
}

// parseFlags applies the environment first and the command line second, so the
// command line wins. Every mistake, from either, is an errUsage.
func parseFlags(fs *flagSet, args []string) error {
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		v, ok := os.LookupEnv(envName(f.Name))
		if !ok || envErr != nil {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			envErr = fmt.Errorf("%w: invalid value %q for %s: %v", errUsage, v, envName(f.Name), err)
		}
	})
	if envErr != nil {
		return envErr
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.help()
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	return nil
}

// peersFlag is --peers: 1=host:port,2=host:port,...
type peersFlag map[ids.NodeID]string

func (p *peersFlag) String() string {
	if p == nil || *p == nil {
		return ""
	}
	var ids []int
	for id := range *p {
		ids = append(ids, int(id))
	}
	sort.Ints(ids)
	var parts []string
	for _, id := range ids {
		parts = append(parts, fmt.Sprintf("%d=%s", id, (*p)[idsNode(id)]))
	}
	return strings.Join(parts, ",")
}

func idsNode(i int) ids.NodeID { return ids.NodeID(i) }

func (p *peersFlag) Set(s string) error {
	m := map[ids.NodeID]string{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		idStr, addr, ok := strings.Cut(part, "=")
		if !ok {
			return fmt.Errorf("%q is not ID=HOST:PORT", part)
		}
		id, err := strconv.ParseUint(idStr, 10, 64)
		if err != nil || id == 0 {
			return fmt.Errorf("%q: the ID must be a positive integer", part)
		}
		if err := checkHostPort(addr); err != nil {
			return fmt.Errorf("%q: %v", part, err)
		}
		if _, dup := m[ids.NodeID(id)]; dup {
			return fmt.Errorf("node %d appears twice", id)
		}
		m[ids.NodeID(id)] = addr
	}
	if len(m) == 0 {
		return errors.New("no peers")
	}
	*p = m
	return nil
}

func checkHostPort(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("port %q is not 1..65535", port)
	}
	return nil
}

// addrFlag is a host:port checked at parse time.
type addrFlag string

func (a *addrFlag) String() string { return string(*a) }
func (a *addrFlag) Set(s string) error {
	if err := checkHostPort(s); err != nil {
		return err
	}
	*a = addrFlag(s)
	return nil
}

// readModeFlag is --read-mode.
type readModeFlag kv.ReadMode

func (m *readModeFlag) String() string { return kv.ReadMode(*m).String() }
func (m *readModeFlag) Set(s string) error {
	v, err := kv.ParseReadMode(s)
	if err != nil {
		return errors.New("want linearizable, follower or stale")
	}
	*m = readModeFlag(v)
	return nil
}

// levelFlag is --log-level.
type levelFlag zapcore.Level

func (l *levelFlag) String() string { return zapcore.Level(*l).String() }
func (l *levelFlag) Set(s string) error {
	var lv zapcore.Level
	if err := lv.UnmarshalText([]byte(s)); err != nil {
		return errors.New("want debug, info, warn or error")
	}
	*l = levelFlag(lv)
	return nil
}

// newLogger logs to stderr: the cmd's stdout is for the user-facing lines.
func newLogger(level levelFlag) (*zap.Logger, error) {
	cfg := zap.NewProductionConfig()
	cfg.Level = zap.NewAtomicLevelAt(zapcore.Level(level))
	cfg.Encoding = "console"
	cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	cfg.OutputPaths = []string{"stderr"}
	cfg.ErrorOutputPaths = []string{"stderr"}
	cfg.Sampling = nil
	return cfg.Build()
}

func checkGroups(n int) error {
	if n < 1 || n > 1<<16 {
		return fmt.Errorf("%w: --groups is %d, want 1 .. 65536", errUsage, n)
	}
	return nil
}

// checkClusterSecret refuses a secret the engine would refuse, and a missing one
// when peers talk over a network: without it anyone who reaches a peer port joins
// the cluster. A loopback-only cluster may run without (the engine logs a warning).
func checkClusterSecret(secret string, peers peersFlag) error {
	if n := len(secret); n > 0 && n < netio.ClusterSecretBytesMin {
		return fmt.Errorf("%w: --cluster-secret is %d bytes, want at least %d", errUsage, n, netio.ClusterSecretBytesMin)
	}
	if secret != "" {
		return nil
	}
	for id, addr := range peers {
		if !isLoopback(addr) {
			return fmt.Errorf("%w: --cluster-secret (or %s) is required: peer %d (%s) is not on loopback",
				errUsage, envName("cluster-secret"), id, addr)
		}
	}
	return nil
}

func isLoopback(hostPort string) bool {
	host, _, err := net.SplitHostPort(hostPort)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
