// Package server is shardkv's Redis-protocol (RESP2) front end, built on
// github.com/tidwall/redcon. It parses Redis commands into kv.Commands, runs them
// through a kv.Client and writes Redis replies, with Redis's own error texts for
// unknown commands, wrong arity and syntax errors, so that redis-cli,
// redis-benchmark and go-redis work against it unchanged.
//
// # Guarantees
//
// Every data command runs in the Paxos group of its key and is linearizable there:
// writes go through the group's log (forwarded by the engine to the group's
// master), reads are lease reads on the master or go through the log via the
// master (see package kv). READMODE changes a connection's reads: "follower" reads
// after a read barrier on the member the client is connected to (still
// linearizable), "stale" reads that member's state without coordination (may miss
// acknowledged writes), "linearizable" is the default. READONLY and READWRITE, as
// Redis Cluster clients send them, switch to follower and back. A command over keys of several groups (DEL, EXISTS, MGET, MSET) is split
// into one command per group: each group's part is atomic and linearizable, the
// whole is not (another client may see one group's part before the other's), and
// if a part fails the reply is an error although other parts may have been applied
// (PARTIAL). DBSIZE sums a linearizable count of every group, taken at different
// moments.
//
// # Errors beyond Redis's
//
// The engine's outcomes map to error prefixes a client can act on:
//
//	TRYAGAIN  the command was not executed and will not be (queue full, the wait
//	          ended before it was proposed, the node is stopping): retrying is safe
//	UNKNOWN   the command was in flight when the wait ended: it may or may not be
//	          applied; retry only if it is idempotent
//	PARTIAL   a multi-group write was applied in some groups and not (or maybe
//	          not) in others
//
// go-redis retries TRYAGAIN by itself; it does not retry the others.
//
// # Administration
//
// SHARDKV MEMBERS, ADDFOLLOWER, ADDMEMBER, REMOVEMEMBER, CHANGEMEMBER,
// TRANSFERMASTER and MASTERCANDIDATE change the groups' membership through
// Config.Admin (SHARDKV HELP lists the syntax), behind the same AUTH as the rest;
// FORGETPEER calls Node.ForgetPeer on this replica.
package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tidwall/redcon"
	"go.uber.org/zap"

	"github.com/multipaxos/engine/group"
	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/kv"
	"github.com/multipaxos/engine/node"
)

// ErrInvalidConfig is wrapped by every Config violation Start reports.
var ErrInvalidConfig = errors.New("server: invalid config")

// NodeInfo is what INFO reports about the engine; *node.Node implements it.
type NodeInfo interface {
	ID() ids.NodeID
	Stats() node.Stats
	GroupStats(ctx context.Context, g ids.GroupID) (group.Stats, error)
	Master(g ids.GroupID) (ids.NodeID, time.Time)
}

// Config configures a Server.
type Config struct {
	// Addr is the RESP listen address. Default 127.0.0.1:6379: loopback unless
	// asked otherwise, since RESP has no transport security.
	Addr string
	// Client runs the commands. Required.
	Client *kv.Client
	// Node feeds INFO; optional.
	Node NodeInfo
	// Admin serves the SHARDKV membership commands (guarded by Password like
	// every other command); optional: without it they fail.
	Admin Admin
	// Password, if set, must be given with AUTH (or HELLO ... AUTH) before any
	// other command.
	Password string
	// ReadMode is the read mode new connections start in (READMODE changes it per
	// connection). Default kv.ReadLinearizable.
	ReadMode kv.ReadMode
	// Timeout bounds each command's wait for the engine. Default 5 s.
	Timeout time.Duration
	// Logger; nil = no-op.
	Logger *zap.Logger
}

// Server is a running RESP listener.
type Server struct {
	cfg     Config
	log     *zap.Logger
	ln      net.Listener
	srv     *redcon.Server
	done    chan struct{} // closed when redcon's Serve returned
	started time.Time

	// Commands in progress, so Close can wait for them. Not a WaitGroup: a
	// connection's goroutine may start a pipelined command while Close waits.
	mu       sync.Mutex
	idle     sync.Cond // on mu: signaled when inflight drops to 0
	inflight int       // under mu
	closing  bool      // under mu

	nextConnID atomic.Int64
	conns      atomic.Int64
	commands   atomic.Uint64
	errs       atomic.Uint64
	closeOnce  sync.Once
}

// connState is one client connection's state (redcon's conn context).
type connState struct {
	id     int64
	authed bool
	name   string
	mode   kv.ReadMode
}

// Start listens on cfg.Addr and serves until Close.
func Start(cfg Config) (*Server, error) {
	if cfg.Client == nil {
		return nil, fmt.Errorf("%w: Client is nil", ErrInvalidConfig)
	}
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:6379"
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("%w: Timeout %v", ErrInvalidConfig, cfg.Timeout)
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("server: listen on %s: %w", cfg.Addr, err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger.Named("resp"), ln: ln, done: make(chan struct{}), started: time.Now()}
	s.idle.L = &s.mu
	s.srv = redcon.NewServer(cfg.Addr, s.handle, s.accept, s.closed)
	go func() {
		defer close(s.done)
		// Serve returns nil once the listener is closed; it then closes every
		// client connection.
		if err := s.srv.Serve(ln); err != nil {
			s.log.Error("RESP server stopped", zap.Error(err))
		}
	}()
	s.log.Info("RESP server listening", zap.String("addr", ln.Addr().String()), zap.Bool("auth", cfg.Password != ""))
	return s, nil
}

// Addr is the bound address (useful with port 0).
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close stops accepting, closes every client connection and waits for commands
// in progress to finish (each is bounded by Config.Timeout). Stop the node after
// Close, so those commands can still complete.
func (s *Server) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closing = true
		s.mu.Unlock()
		err = s.ln.Close()
		<-s.done
		s.mu.Lock()
		for s.inflight > 0 {
			s.idle.Wait()
		}
		s.mu.Unlock()
		if errors.Is(err, net.ErrClosed) {
			err = nil
		}
		s.log.Info("RESP server closed")
	})
	return err
}

func (s *Server) accept(c redcon.Conn) bool {
	c.SetContext(&connState{id: s.nextConnID.Add(1), authed: s.cfg.Password == "", mode: s.cfg.ReadMode})
	s.conns.Add(1)
	return true
}

func (s *Server) closed(c redcon.Conn, err error) {
	s.conns.Add(-1)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		s.log.Debug("client connection closed", zap.String("remote", c.RemoteAddr()), zap.Error(err))
	}
}

// call is one command being handled.
type call struct {
	s    *Server
	conn redcon.Conn
	st   *connState
	name string   // lower case, as Redis reports it in errors
	args [][]byte // args[0] is the command name
}

func (s *Server) handle(c redcon.Conn, cmd redcon.Command) {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		c.WriteError("TRYAGAIN server shutting down")
		return
	}
	s.inflight++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if s.inflight--; s.inflight == 0 {
			s.idle.Broadcast()
		}
		s.mu.Unlock()
	}()
	s.commands.Add(1)
	st, _ := c.Context().(*connState)
	if st == nil {
		st = &connState{authed: s.cfg.Password == "", mode: s.cfg.ReadMode}
		c.SetContext(st)
	}
	cl := &call{s: s, conn: c, st: st, name: strings.ToLower(string(cmd.Args[0])), args: cmd.Args}
	if text := dispatch(cl); text != "" {
		s.errs.Add(1)
		s.log.Debug("error reply", zap.String("command", cl.name), zap.String("reply", text))
		c.WriteError(text)
	}
}

// dispatch runs one command and returns an error text to reply with, or "" when
// the command wrote its own reply. The checks come in Redis's order: unknown
// command, arity, then authentication.
func dispatch(c *call) string {
	spec, ok := commands[c.name]
	if !ok {
		return unknownCommand(c.args)
	}
	if !arityOK(spec.arity, len(c.args)) {
		return wrongArity(c.name)
	}
	if !c.st.authed && !spec.noAuth {
		return "NOAUTH Authentication required."
	}
	return spec.run(c)
}

func arityOK(arity, n int) bool {
	if arity >= 0 {
		return n == arity
	}
	return n >= -arity
}

// unknownCommand is Redis 7's text, down to the trailing space after each
// argument.
func unknownCommand(args [][]byte) string {
	var b strings.Builder
	for _, a := range args[1:] {
		if b.Len() >= 128 {
			break
		}
		fmt.Fprintf(&b, "'%s' ", truncate(a, 128-b.Len()))
	}
	return fmt.Sprintf("ERR unknown command '%s', with args beginning with: %s", truncate(args[0], 128), b.String())
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		b = b[:n]
	}
	return string(b)
}

func wrongArity(name string) string {
	return fmt.Sprintf("ERR wrong number of arguments for '%s' command", name)
}

// Redis's texts for the errors shared by many commands.
const (
	errSyntax     = "ERR syntax error"
	errNotInteger = "ERR value is not an integer or out of range"
	errOverflow   = "ERR increment or decrement would overflow"
)

// do runs a kv command with the server's timeout and writes its reply.
func (c *call) do(cmd kv.Command) string {
	ctx, cancel := context.WithTimeout(context.Background(), c.s.cfg.Timeout)
	defer cancel()
	r, err := c.s.cfg.Client.DoMode(ctx, cmd, c.st.mode)
	if err != nil {
		return c.s.engineError(cmd, err)
	}
	return writeReply(c.conn, r, nil)
}

// doThen is do with a transformation of a successful reply (TTL's seconds).
func (c *call) doThen(cmd kv.Command, f func(kv.Reply) kv.Reply) string {
	ctx, cancel := context.WithTimeout(context.Background(), c.s.cfg.Timeout)
	defer cancel()
	r, err := c.s.cfg.Client.DoMode(ctx, cmd, c.st.mode)
	if err != nil {
		return c.s.engineError(cmd, err)
	}
	return writeReply(c.conn, r, f)
}

func writeReply(conn redcon.Conn, r kv.Reply, f func(kv.Reply) kv.Reply) string {
	if f != nil && r.Kind != kv.KindErr {
		r = f(r)
	}
	switch r.Kind {
	case kv.KindOK:
		conn.WriteString("OK")
	case kv.KindNil:
		conn.WriteNull()
	case kv.KindInt:
		conn.WriteInt64(r.Int)
	case kv.KindBulk:
		conn.WriteBulk(r.Bulk)
	case kv.KindArray:
		conn.WriteArray(len(r.Array))
		for _, e := range r.Array {
			if text := writeReply(conn, e, nil); text != "" {
				// An array element cannot be an error reply in RESP2 here; the
				// array length is already written, so write the error in place.
				conn.WriteError(text)
			}
		}
	case kv.KindErr:
		return errorText(r.Err)
	default:
		return fmt.Sprintf("ERR internal: reply of kind %d", r.Kind)
	}
	return ""
}

func errorText(code kv.ErrCode) string {
	switch code {
	case kv.ErrCodeNotInteger:
		return errNotInteger
	case kv.ErrCodeOverflow:
		return errOverflow
	}
	return "ERR internal: " + code.Error().Error()
}

// engineError maps a failed or uncertain command to a reply (package doc).
func (s *Server) engineError(cmd kv.Command, err error) string {
	var text string
	switch {
	case errors.Is(err, kv.ErrPartial):
		text = "PARTIAL " + err.Error()
	case errors.Is(err, node.ErrUnknownOutcome):
		text = "UNKNOWN the command may or may not have been applied: " + err.Error()
	case errors.Is(err, node.ErrCanceled), errors.Is(err, node.ErrBusy), errors.Is(err, node.ErrStopped):
		text = "TRYAGAIN the command was not applied: " + err.Error()
	case errors.Is(err, node.ErrValueTooLarge):
		text = "ERR command too large: " + err.Error()
	default:
		text = "ERR " + err.Error()
	}
	s.log.Debug("command failed", zap.Stringer("op", cmd.Op), zap.Error(err))
	return strings.ReplaceAll(text, "\n", " ")
}
