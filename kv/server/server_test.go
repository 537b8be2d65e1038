package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/kv"
	"github.com/multipaxos/engine/node"
)

const t0 = int64(1_700_000_000_000)

// startDirect serves a store without replication (kv.Direct) on a free port.
func startDirect(t *testing.T, password string, clock func() time.Time) *Server {
	t.Helper()
	st, err := kv.Open(t.TempDir(), kv.Options{Groups: 8, CacheSize: 1 << 20, MemTableSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	return startOn(t, kv.NewDirect(st), st, password, clock)
}

func startOn(t *testing.T, eng kv.Engine, st *kv.Store, password string, clock func() time.Time) *Server {
	t.Helper()
	cl, err := kv.NewClient(kv.ClientOptions{Engine: eng, Store: st, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	s, err := Start(Config{Addr: "127.0.0.1:0", Client: cl, Password: password, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
		if st != nil {
			_ = st.Close()
		}
	})
	return s
}

// rawConn speaks RESP by hand, so tests see the exact bytes of every reply.
type rawConn struct {
	t  *testing.T
	c  net.Conn
	rd *bufio.Reader
}

func dialRaw(t *testing.T, s *Server) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, c: c, rd: bufio.NewReader(c)}
}

// do sends one command and returns its reply rendered as +s, -s, :n, $s, $nil or
// *[a b ...].
func (r *rawConn) do(args ...string) string {
	r.t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	_ = r.c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(r.c, b.String()); err != nil {
		r.t.Fatal(err)
	}
	out, err := r.read()
	if err != nil {
		r.t.Fatalf("%v: %v", args, err)
	}
	return out
}

func (r *rawConn) read() (string, error) {
	line, err := r.rd.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimSuffix(line, "\r\n")
	switch line[0] {
	case '+', '-', ':':
		return line, nil
	case '$':
		n, _ := strconv.Atoi(line[1:])
		if n < 0 {
			return "$nil", nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r.rd, buf); err != nil {
			return "", err
		}
		return "$" + string(buf[:n]), nil
	case '*':
		n, _ := strconv.Atoi(line[1:])
		var parts []string
		for i := 0; i < n; i++ {
			p, err := r.read()
			if err != nil {
				return "", err
			}
			parts = append(parts, p)
		}
		return "*[" + strings.Join(parts, " ") + "]", nil
	}
	return "", fmt.Errorf("bad reply line %q", line)
}

type exchange struct {
	args []string
	want string
}

func check(t *testing.T, r *rawConn, exs []exchange) {
	t.Helper()
	for _, ex := range exs {
		if got := r.do(ex.args...); got != ex.want {
			t.Errorf("%q: got %q, want %q", ex.args, got, ex.want)
		}
	}
}

func TestRedisErrorTexts(t *testing.T) {
	s := startDirect(t, "", nil)
	check(t, dialRaw(t, s), []exchange{
		{[]string{"foo", "a", "b"}, "-ERR unknown command 'foo', with args beginning with: 'a' 'b' "},
		{[]string{"FooBar"}, "-ERR unknown command 'FooBar', with args beginning with: "},
		{[]string{"GET"}, "-ERR wrong number of arguments for 'get' command"},
		{[]string{"get", "a", "b"}, "-ERR wrong number of arguments for 'get' command"},
		{[]string{"SET", "a"}, "-ERR wrong number of arguments for 'set' command"},
		{[]string{"MSET", "a"}, "-ERR wrong number of arguments for 'mset' command"},
		{[]string{"MSET", "a", "1", "b"}, "-ERR wrong number of arguments for 'mset' command"},
		{[]string{"ECHO"}, "-ERR wrong number of arguments for 'echo' command"},
		{[]string{"PING", "a", "b"}, "-ERR wrong number of arguments for 'ping' command"},
		{[]string{"DBSIZE", "x"}, "-ERR wrong number of arguments for 'dbsize' command"},
		{[]string{"CLIENT", "SETNAME"}, "-ERR wrong number of arguments for 'client|setname' command"},
		{[]string{"CLIENT", "KILL", "x"}, "-ERR unknown subcommand 'KILL'. Try CLIENT HELP."},
		{[]string{"SET", "a", "1", "BOGUS"}, "-ERR syntax error"},
		{[]string{"SET", "a", "1", "EX", "0"}, "-ERR invalid expire time in 'set' command"},
		{[]string{"SET", "a", "1", "EX", "x"}, "-ERR value is not an integer or out of range"},
		{[]string{"INCRBY", "a", "x"}, "-ERR value is not an integer or out of range"},
		{[]string{"DECRBY", "a", "-9223372036854775808"}, "-ERR decrement would overflow"},
		{[]string{"EXPIRE", "a", "10", "NX", "XX"}, "-ERR NX and XX, GT or LT options at the same time are not compatible"},
		{[]string{"EXPIRE", "a", "10", "FOO"}, "-ERR Unsupported option FOO"},
		{[]string{"EXPIRE", "a", "9223372036854775807"}, "-ERR invalid expire time in 'expire' command"},
		{[]string{"SELECT", "1"}, "-ERR DB index is out of range"},
		{[]string{"AUTH", "x"}, "-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"},
		{[]string{"HELLO", "3"}, "-NOPROTO sorry, this protocol version is not supported."},
		{[]string{"HELLO", "x"}, "-ERR Protocol version is not an integer or out of range"},
	})
}

func TestCommandsOverRESP(t *testing.T) {
	now := time.UnixMilli(t0)
	s := startDirect(t, "", func() time.Time { return now })
	r := dialRaw(t, s)
	check(t, r, []exchange{
		{[]string{"PING"}, "+PONG"},
		{[]string{"PING", "hi"}, "$hi"},
		{[]string{"ECHO", "x y"}, "$x y"},
		{[]string{"SELECT", "0"}, "+OK"},
		{[]string{"GET", "a"}, "$nil"},
		{[]string{"SET", "a", "1"}, "+OK"},
		{[]string{"GET", "a"}, "$1"},
		{[]string{"SET", "a", "2", "NX"}, "$nil"},
		{[]string{"SET", "a", "2", "XX", "GET"}, "$1"},
		{[]string{"GETSET", "a", "3"}, "$2"},
		{[]string{"INCR", "a"}, ":4"},
		{[]string{"INCRBY", "a", "10"}, ":14"},
		{[]string{"DECR", "a"}, ":13"},
		{[]string{"DECRBY", "a", "20"}, ":-7"},
		{[]string{"SET", "s", "abc"}, "+OK"},
		{[]string{"INCR", "s"}, "-ERR value is not an integer or out of range"},
		{[]string{"SET", "big", "9223372036854775807"}, "+OK"},
		{[]string{"INCR", "big"}, "-ERR increment or decrement would overflow"},
		{[]string{"MSET", "k1", "v1", "k2", "v2", "k3", "v3", "k4", "v4"}, "+OK"},
		{[]string{"MGET", "k1", "nope", "k4", "k2"}, "*[$v1 $nil $v4 $v2]"},
		{[]string{"EXISTS", "k1", "k2", "nope", "k1"}, ":3"},
		{[]string{"DBSIZE"}, ":7"},
		{[]string{"DEL", "k1", "k2", "nope"}, ":2"},
		{[]string{"UNLINK", "k3"}, ":1"},
		{[]string{"DBSIZE"}, ":4"},
		{[]string{"TTL", "k4"}, ":-1"},
		{[]string{"TTL", "nope"}, ":-2"},
		{[]string{"SET", "e", "v", "EX", "10"}, "+OK"},
		{[]string{"TTL", "e"}, ":10"},
		{[]string{"PTTL", "e"}, ":10000"},
		{[]string{"SET", "e", "v", "PX", "1500", "GET"}, "$v"},
		{[]string{"TTL", "e"}, ":2"}, // 1.5 s rounds to 2, as in Redis
		{[]string{"SET", "e", "w", "KEEPTTL"}, "+OK"},
		{[]string{"PTTL", "e"}, ":1500"},
		{[]string{"SET", "e", "w", "EXAT", strconv.FormatInt(t0/1000+100, 10)}, "+OK"},
		{[]string{"TTL", "e"}, ":100"},
		{[]string{"SET", "e", "w", "PXAT", strconv.FormatInt(t0+7, 10)}, "+OK"},
		{[]string{"PTTL", "e"}, ":7"},
		{[]string{"EXPIRE", "k4", "100"}, ":1"},
		{[]string{"EXPIRE", "k4", "50", "GT"}, ":0"},
		{[]string{"PEXPIRE", "k4", "50", "LT"}, ":1"},
		{[]string{"PTTL", "k4"}, ":50"},
		{[]string{"EXPIRE", "nope", "10"}, ":0"},
		{[]string{"EXPIRE", "k4", "-1"}, ":1"},
		{[]string{"GET", "k4"}, "$nil"},
		{[]string{"CLIENT", "SETNAME", "me"}, "+OK"},
		{[]string{"CLIENT", "GETNAME"}, "$me"},
		{[]string{"CLIENT", "SETINFO", "LIB-NAME", "x"}, "+OK"},
		{[]string{"COMMAND"}, "*[]"},
		{[]string{"COMMAND", "DOCS"}, "*[]"},
		{[]string{"COMMAND", "INFO", "get", "set"}, "*[$nil $nil]"},
		{[]string{"CONFIG", "GET", "save"}, "*[$save $]"},
		{[]string{"CONFIG", "GET", "appendonly"}, "*[$appendonly $no]"},
		{[]string{"READMODE"}, "$linearizable"},
		{[]string{"READONLY"}, "+OK"},
		{[]string{"READMODE"}, "$follower"},
		{[]string{"MGET", "k1", "k4"}, "*[$nil $nil]"},
		{[]string{"GET", "a"}, "$-7"},
		{[]string{"READMODE", "STALE"}, "+OK"},
		{[]string{"GET", "a"}, "$-7"},
		{[]string{"DBSIZE"}, ":4"},
		{[]string{"READMODE", "bogus"}, "-ERR read mode must be linearizable, follower or stale"},
		{[]string{"READWRITE"}, "+OK"},
		{[]string{"READMODE"}, "$linearizable"},
		{[]string{"HELLO", "2"}, "*[$server $redis $version $7.0.0 $proto :2 $id :1 $mode $standalone $role $master $modules *[]]"},
	})
	// The clock moves: the key set with PXAT t0+7 expires.
	now = now.Add(7 * time.Millisecond)
	check(t, r, []exchange{{[]string{"GET", "e"}, "$nil"}, {[]string{"TTL", "e"}, ":-2"}})
	if got := r.do("INFO"); !strings.Contains(got, "# Server") || !strings.Contains(got, "groups:8") {
		t.Errorf("INFO: %q", got)
	}
	if got := r.do("COMMAND", "COUNT"); got != fmt.Sprintf(":%d", len(commands)) {
		t.Errorf("COMMAND COUNT: %q", got)
	}
	check(t, r, []exchange{{[]string{"QUIT"}, "+OK"}})
	if _, err := r.read(); err == nil {
		t.Error("connection still open after QUIT")
	}
}

func TestAuth(t *testing.T) {
	s := startDirect(t, "sesame", nil)
	check(t, dialRaw(t, s), []exchange{
		{[]string{"GET", "a"}, "-NOAUTH Authentication required."},
		{[]string{"nope"}, "-ERR unknown command 'nope', with args beginning with: "},
		{[]string{"GET"}, "-ERR wrong number of arguments for 'get' command"},
		{[]string{"AUTH", "wrong"}, "-WRONGPASS invalid username-password pair or user is disabled."},
		{[]string{"AUTH", "bob", "sesame"}, "-WRONGPASS invalid username-password pair or user is disabled."},
		{[]string{"PING"}, "-NOAUTH Authentication required."},
		{[]string{"AUTH", "sesame"}, "+OK"},
		{[]string{"PING"}, "+PONG"},
	})
	check(t, dialRaw(t, s), []exchange{
		{[]string{"HELLO", "2", "AUTH", "default", "sesame", "SETNAME", "x"}, "*[$server $redis $version $7.0.0 $proto :2 $id :2 $mode $standalone $role $master $modules *[]]"},
		{[]string{"CLIENT", "GETNAME"}, "$x"},
		{[]string{"SET", "a", "1"}, "+OK"},
	})
	ctx := context.Background()
	good := redis.NewClient(&redis.Options{Addr: s.Addr().String(), Password: "sesame"})
	defer good.Close()
	if v, err := good.Get(ctx, "a").Result(); err != nil || v != "1" {
		t.Fatalf("go-redis with password: %q %v", v, err)
	}
	bad := redis.NewClient(&redis.Options{Addr: s.Addr().String(), Password: "nope", MaxRetries: -1})
	defer bad.Close()
	if err := bad.Get(ctx, "a").Err(); err == nil || !strings.Contains(err.Error(), "WRONGPASS") {
		t.Fatalf("go-redis with a wrong password: %v", err)
	}
}

// TestGoRedis drives the server with go-redis's default options: it opens with
// HELLO 3, falls back to RESP2 on NOPROTO, and sends CLIENT SETINFO.
func TestGoRedis(t *testing.T) {
	// A fixed clock: the TTL checks below do not depend on how fast the test runs.
	s := startDirect(t, "", func() time.Time { return time.UnixMilli(t0) })
	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: s.Addr().String(), ClientName: "test"})
	defer c.Close()
	if err := c.Set(ctx, "a", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Incr(ctx, "a").Result(); err != nil || n != 2 {
		t.Fatalf("incr %d %v", n, err)
	}
	if _, err := c.Get(ctx, "missing").Result(); !errors.Is(err, redis.Nil) {
		t.Fatalf("get missing: %v", err)
	}
	if err := c.MSet(ctx, "x", "1", "y", "2", "z", "3").Err(); err != nil {
		t.Fatal(err)
	}
	vs, err := c.MGet(ctx, "x", "nope", "z").Result()
	if err != nil || fmt.Sprint(vs) != "[1 <nil> 3]" {
		t.Fatalf("mget %v %v", vs, err)
	}
	if ok, err := c.SetNX(ctx, "x", "9", time.Minute).Result(); err != nil || ok {
		t.Fatalf("setnx on existing: %v %v", ok, err)
	}
	if ok, err := c.SetNX(ctx, "w", "9", time.Minute).Result(); err != nil || !ok {
		t.Fatalf("setnx: %v %v", ok, err)
	}
	if d, err := c.TTL(ctx, "w").Result(); err != nil || d != time.Minute {
		t.Fatalf("ttl %v %v", d, err)
	}
	if ok, err := c.Expire(ctx, "x", time.Hour).Result(); err != nil || !ok {
		t.Fatalf("expire %v %v", ok, err)
	}
	if old, err := c.GetSet(ctx, "y", "22").Result(); err != nil || old != "2" {
		t.Fatalf("getset %q %v", old, err)
	}
	if n, err := c.Del(ctx, "x", "y", "nope").Result(); err != nil || n != 2 {
		t.Fatalf("del %d %v", n, err)
	}
	if n, err := c.DBSize(ctx).Result(); err != nil || n != 3 {
		t.Fatalf("dbsize %d %v", n, err)
	}
	cmds, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, "p", "1", 0)
		p.IncrBy(ctx, "p", 5)
		p.Get(ctx, "p")
		return nil
	})
	if err != nil || cmds[2].(*redis.StringCmd).Val() != "6" {
		t.Fatalf("pipeline: %v %v", cmds, err)
	}
	if err := c.Do(ctx, "nosuch").Err(); err == nil || !strings.HasPrefix(err.Error(), "ERR unknown command 'nosuch'") {
		t.Fatalf("unknown command: %v", err)
	}
}

func TestParseSet(t *testing.T) {
	now := t0
	for _, tc := range []struct {
		args     string
		flags    kv.Flags
		deadline int64
		err      string
	}{
		{"SET k v", 0, 0, ""},
		{"SET k v nx", kv.SetNX, 0, ""},
		{"SET k v XX GET", kv.SetXX | kv.SetGet, 0, ""},
		{"SET k v EX 10", 0, now + 10000, ""},
		{"SET k v px 10 NX", kv.SetNX, now + 10, ""},
		{"SET k v EXAT 2000000000", 0, 2000000000000, ""},
		{"SET k v PXAT 5", 0, 5, ""},
		{"SET k v KEEPTTL GET", kv.SetKeepTTL | kv.SetGet, 0, ""},
		{"SET k v NX XX", 0, 0, errSyntax},
		{"SET k v NX NX", 0, 0, errSyntax},
		{"SET k v EX 1 PX 1", 0, 0, errSyntax},
		{"SET k v EX 1 KEEPTTL", 0, 0, errSyntax},
		{"SET k v KEEPTTL EX 1", 0, 0, errSyntax},
		{"SET k v EX", 0, 0, errSyntax},
		{"SET k v EX -1", 0, 0, "ERR invalid expire time in 'set' command"},
		{"SET k v EX 9223372036854775", 0, 0, "ERR invalid expire time in 'set' command"},
		{"SET k v PX 9223372036854775807", 0, 0, "ERR invalid expire time in 'set' command"},
		{"SET k v EX 1.5", 0, 0, errNotInteger},
	} {
		var args [][]byte
		for _, a := range strings.Fields(tc.args) {
			args = append(args, []byte(a))
		}
		cmd, text := ParseSet(args, now)
		if text != tc.err {
			t.Errorf("%s: error %q, want %q", tc.args, text, tc.err)
			continue
		}
		if text == "" && (cmd.Flags != tc.flags || cmd.Int != tc.deadline || string(cmd.Keys[0]) != "k" || string(cmd.Values[0]) != "v" || cmd.Now != now) {
			t.Errorf("%s: got flags %b deadline %d, want %b %d", tc.args, cmd.Flags, cmd.Int, tc.flags, tc.deadline)
		}
	}
}

// failingEngine fails every proposal with err.
type failingEngine struct{ err error }

func (f failingEngine) Propose(context.Context, ids.GroupID, []byte) (node.Result, error) {
	return node.Result{}, f.err
}
func (failingEngine) Groups() int { return 4 }

func TestEngineErrorReplies(t *testing.T) {
	for _, tc := range []struct {
		err    error
		prefix string
	}{
		{fmt.Errorf("%w: %w", node.ErrUnknownOutcome, context.DeadlineExceeded), "-UNKNOWN "},
		{fmt.Errorf("%w: %w", node.ErrCanceled, context.DeadlineExceeded), "-TRYAGAIN "},
		{node.ErrBusy, "-TRYAGAIN "},
		{node.ErrStopped, "-TRYAGAIN "},
		{fmt.Errorf("%w: %w", node.ErrStopped, node.ErrUnknownOutcome), "-UNKNOWN "},
		{node.ErrValueTooLarge, "-ERR command too large"},
		{errors.New("disk on fire"), "-ERR disk on fire"},
	} {
		s := startOn(t, failingEngine{tc.err}, nil, "", nil)
		r := dialRaw(t, s)
		if got := r.do("SET", "a", "1"); !strings.HasPrefix(got, tc.prefix) {
			t.Errorf("%v: reply %q, want prefix %q", tc.err, got, tc.prefix)
		}
		if tc.prefix == "-UNKNOWN " {
			// A multi-group write that fails is PARTIAL only if a part got
			// through; here every part failed.
			if got := r.do("MSET", "a", "1", "b", "2", "c", "3", "d", "4"); !strings.HasPrefix(got, "-UNKNOWN ") {
				t.Errorf("mset: %q", got)
			}
		}
	}
}

// halfEngine executes in every group but group 0, where it fails with an unknown
// outcome. It has no lease reads, so reads go through Propose too.
type halfEngine struct{ d *kv.Direct }

func (h halfEngine) Propose(ctx context.Context, g ids.GroupID, cmd []byte) (node.Result, error) {
	if g == 0 {
		return node.Result{}, fmt.Errorf("%w: %w", node.ErrUnknownOutcome, context.DeadlineExceeded)
	}
	return h.d.Propose(ctx, g, cmd)
}

func (h halfEngine) Groups() int { return h.d.Groups() }

func TestPartialMultiGroupWrite(t *testing.T) {
	st, err := kv.Open(t.TempDir(), kv.Options{Groups: 8})
	if err != nil {
		t.Fatal(err)
	}
	s := startOn(t, halfEngine{kv.NewDirect(st)}, st, "", nil)
	var args []string
	in0, other := "", ""
	for i := 0; in0 == "" || other == ""; i++ {
		k := fmt.Sprint("key", i)
		if kv.GroupOf([]byte(k), 8) == 0 {
			in0 = k
		} else {
			other = k
		}
	}
	args = append(args, "MSET", in0, "1", other, "2")
	r := dialRaw(t, s)
	if got := r.do(args...); !strings.HasPrefix(got, "-PARTIAL ") {
		t.Fatalf("mset over a failing and a working group: %q", got)
	}
	if got := r.do("GET", other); got != "$2" {
		t.Fatalf("the working group's part: %q", got)
	}
	if got := r.do("MGET", in0, other); !strings.HasPrefix(got, "-UNKNOWN ") {
		t.Fatalf("a read that partly failed is not PARTIAL: %q", got)
	}
}
