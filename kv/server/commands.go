package server

import (
	"crypto/subtle"
	"fmt"
	"math"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/multipaxos/engine/kv"
)

// spec describes one command: its arity in Redis's convention (n: exactly n
// arguments counting the name; -n: at least n) and whether it may run before
// AUTH.
type spec struct {
	arity  int
	noAuth bool
	run    func(*call) string
}

var commands map[string]spec

func init() {
	commands = map[string]spec{
		"ping":      {arity: -1, run: cmdPing},
		"echo":      {arity: 2, run: func(c *call) string { c.conn.WriteBulk(c.args[1]); return "" }},
		"quit":      {arity: -1, noAuth: true, run: cmdQuit},
		"select":    {arity: 2, run: cmdSelect},
		"auth":      {arity: -2, noAuth: true, run: cmdAuth},
		"hello":     {arity: -1, noAuth: true, run: cmdHello},
		"client":    {arity: -2, run: cmdClient},
		"command":   {arity: -1, run: cmdCommand},
		"config":    {arity: -2, run: cmdConfig},
		"info":      {arity: -1, run: cmdInfo},
		"get":       {arity: 2, run: cmdGet},
		"set":       {arity: -3, run: cmdSet},
		"getset":    {arity: 3, run: cmdGetSet},
		"del":       {arity: -2, run: cmdKeys(kv.OpDel)},
		"unlink":    {arity: -2, run: cmdKeys(kv.OpDel)},
		"exists":    {arity: -2, run: cmdKeys(kv.OpExists)},
		"mget":      {arity: -2, run: cmdKeys(kv.OpMGet)},
		"mset":      {arity: -3, run: cmdMSet},
		"incr":      {arity: 2, run: cmdIncr(1, false)},
		"decr":      {arity: 2, run: cmdIncr(-1, false)},
		"incrby":    {arity: 3, run: cmdIncr(1, true)},
		"decrby":    {arity: 3, run: cmdIncr(-1, true)},
		"expire":    {arity: -3, run: cmdExpire(1000)},
		"pexpire":   {arity: -3, run: cmdExpire(1)},
		"ttl":       {arity: 2, run: cmdTTL(1000)},
		"pttl":      {arity: 2, run: cmdTTL(1)},
		"dbsize":    {arity: 1, run: func(c *call) string { return c.do(kv.Command{Op: kv.OpDBSize}) }},
		"readmode":  {arity: -1, run: cmdReadMode},
		"readonly":  {arity: 1, run: setReadMode(kv.ReadFollower)},
		"readwrite": {arity: 1, run: setReadMode(kv.ReadLinearizable)},
		"shardkv":   {arity: -2, run: cmdAdmin},
	}
}

func cmdPing(c *call) string {
	switch len(c.args) {
	case 1:
		c.conn.WriteString("PONG")
	case 2:
		c.conn.WriteBulk(c.args[1])
	default:
		return wrongArity(c.name)
	}
	return ""
}

func cmdQuit(c *call) string {
	c.conn.WriteString("OK")
	_ = c.conn.Close()
	return ""
}

func cmdSelect(c *call) string {
	n, err := strconv.ParseInt(string(c.args[1]), 10, 64)
	if err != nil {
		return errNotInteger
	}
	if n != 0 {
		return "ERR DB index is out of range"
	}
	c.conn.WriteString("OK")
	return ""
}

// checkPassword compares in constant time, so that timing does not reveal how
// much of a guess was right.
func (c *call) checkPassword(user, pass []byte) string {
	if c.s.cfg.Password == "" {
		return "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"
	}
	if (user != nil && string(user) != "default") || subtle.ConstantTimeCompare(pass, []byte(c.s.cfg.Password)) != 1 {
		return "WRONGPASS invalid username-password pair or user is disabled."
	}
	c.st.authed = true
	return ""
}

func cmdAuth(c *call) string {
	var text string
	switch len(c.args) {
	case 2:
		text = c.checkPassword(nil, c.args[1])
	case 3:
		text = c.checkPassword(c.args[1], c.args[2])
	default:
		return errSyntax
	}
	if text == "" {
		c.conn.WriteString("OK")
	}
	return text
}

// cmdHello speaks RESP2 only: HELLO 3 gets NOPROTO, which go-redis takes as the
// sign to stay on RESP2.
func cmdHello(c *call) string {
	args := c.args[1:]
	if len(args) > 0 {
		v, err := strconv.ParseInt(string(args[0]), 10, 64)
		if err != nil {
			return "ERR Protocol version is not an integer or out of range"
		}
		if v != 2 {
			return "NOPROTO sorry, this protocol version is not supported."
		}
		args = args[1:]
	}
	var name []byte
	for len(args) > 0 {
		switch opt := strings.ToLower(string(args[0])); {
		case opt == "auth" && len(args) >= 3:
			if text := c.checkPassword(args[1], args[2]); text != "" {
				return text
			}
			args = args[3:]
		case opt == "setname" && len(args) >= 2:
			name = args[1]
			args = args[2:]
		default:
			return fmt.Sprintf("ERR Syntax error in HELLO option '%s'", args[0])
		}
	}
	if !c.st.authed {
		return "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time"
	}
	if name != nil {
		if text := validClientName(name); text != "" {
			return text
		}
		c.st.name = string(name)
	}
	c.conn.WriteArray(14)
	for _, kv := range [][2]string{{"server", "redis"}, {"version", redisVersion}, {"proto", ""}, {"id", ""},
		{"mode", "standalone"}, {"role", "master"}, {"modules", ""}} {
		c.conn.WriteBulkString(kv[0])
		switch kv[0] {
		case "proto":
			c.conn.WriteInt(2)
		case "id":
			c.conn.WriteInt64(c.st.id)
		case "modules":
			c.conn.WriteArray(0)
		default:
			c.conn.WriteBulkString(kv[1])
		}
	}
	return ""
}

// redisVersion is the Redis version shardkv claims to clients that adapt to it.
const redisVersion = "7.0.0"

func validClientName(name []byte) string {
	for _, b := range name {
		if b < '!' || b > '~' {
			return "ERR Client names cannot contain spaces, newlines or special characters."
		}
	}
	return ""
}

func cmdClient(c *call) string {
	sub := strings.ToLower(string(c.args[1]))
	arity := map[string]int{"setname": 3, "getname": 2, "id": 2, "setinfo": 4, "info": 2}
	n, ok := arity[sub]
	if !ok {
		return fmt.Sprintf("ERR unknown subcommand '%s'. Try CLIENT HELP.", c.args[1])
	}
	if len(c.args) != n {
		return wrongArity("client|" + sub)
	}
	switch sub {
	case "setname":
		if text := validClientName(c.args[2]); text != "" {
			return text
		}
		c.st.name = string(c.args[2])
		c.conn.WriteString("OK")
	case "getname":
		if c.st.name == "" {
			c.conn.WriteNull()
		} else {
			c.conn.WriteBulkString(c.st.name)
		}
	case "id":
		c.conn.WriteInt64(c.st.id)
	case "setinfo":
		c.conn.WriteString("OK")
	case "info":
		c.conn.WriteBulkString(fmt.Sprintf("id=%d addr=%s name=%s db=0\n", c.st.id, c.conn.RemoteAddr(), c.st.name))
	}
	return ""
}

// cmdCommand answers what redis-cli asks at start (COMMAND DOCS for its hints)
// with empty but well-formed replies; clients then use their built-in tables.
func cmdCommand(c *call) string {
	if len(c.args) == 1 {
		c.conn.WriteArray(0)
		return ""
	}
	switch sub := strings.ToLower(string(c.args[1])); sub {
	case "count":
		c.conn.WriteInt(len(commands))
	case "docs", "list":
		c.conn.WriteArray(0)
	case "info":
		c.conn.WriteArray(len(c.args) - 2)
		for range c.args[2:] {
			c.conn.WriteNull()
		}
	default:
		return fmt.Sprintf("ERR unknown subcommand '%s'. Try COMMAND HELP.", c.args[1])
	}
	return ""
}

// configParams are the parameters CONFIG GET reports; redis-benchmark asks for
// save and appendonly.
var configParams = map[string]string{"save": "", "appendonly": "no", "databases": "1"}

func cmdConfig(c *call) string {
	switch sub := strings.ToLower(string(c.args[1])); sub {
	case "get":
		if len(c.args) < 3 {
			return wrongArity("config|get")
		}
		var names []string
		for name := range configParams {
			for _, pat := range c.args[2:] {
				if ok, _ := path.Match(strings.ToLower(string(pat)), name); ok {
					names = append(names, name)
					break
				}
			}
		}
		sort.Strings(names)
		c.conn.WriteArray(2 * len(names))
		for _, name := range names {
			c.conn.WriteBulkString(name)
			c.conn.WriteBulkString(configParams[name])
		}
	case "resetstat":
		c.conn.WriteString("OK")
	case "set":
		return "ERR CONFIG SET is not supported; shardkv is configured by flags"
	default:
		return fmt.Sprintf("ERR unknown subcommand '%s'. Try CONFIG HELP.", c.args[1])
	}
	return ""
}

func cmdGet(c *call) string {
	return c.do(kv.Command{Op: kv.OpGet, Keys: c.args[1:2]})
}

func cmdGetSet(c *call) string {
	return c.do(kv.Command{Op: kv.OpSet, Keys: c.args[1:2], Values: c.args[2:3], Flags: kv.SetGet})
}

func cmdSet(c *call) string {
	now := c.s.cfg.Client.Now()
	cmd, text := ParseSet(c.args, now)
	if text != "" {
		return text
	}
	return c.do(cmd)
}

// ParseSet parses SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]
// with now (unix ms) as the base of relative expiries, as Redis 7 does. It returns
// the command, or the Redis error text.
func ParseSet(args [][]byte, now int64) (kv.Command, string) {
	cmd := kv.Command{Op: kv.OpSet, Now: now, Keys: args[1:2], Values: args[2:3]}
	expiry := ""
	for i := 3; i < len(args); i++ {
		opt := strings.ToUpper(string(args[i]))
		switch opt {
		case "NX", "XX":
			if cmd.Flags&(kv.SetNX|kv.SetXX) != 0 {
				return cmd, errSyntax
			}
			if opt == "NX" {
				cmd.Flags |= kv.SetNX
			} else {
				cmd.Flags |= kv.SetXX
			}
		case "GET":
			cmd.Flags |= kv.SetGet
		case "KEEPTTL":
			if expiry != "" {
				return cmd, errSyntax
			}
			expiry = opt
			cmd.Flags |= kv.SetKeepTTL
		case "EX", "PX", "EXAT", "PXAT":
			if expiry != "" || i+1 >= len(args) {
				return cmd, errSyntax
			}
			expiry = opt
			i++
			n, err := strconv.ParseInt(string(args[i]), 10, 64)
			if err != nil {
				return cmd, errNotInteger
			}
			deadline, ok := deadlineOf(opt, n, now)
			if !ok {
				return cmd, "ERR invalid expire time in 'set' command"
			}
			cmd.Int = deadline
		default:
			return cmd, errSyntax
		}
	}
	return cmd, ""
}

// deadlineOf turns an expiry option into an absolute deadline in unix ms; false
// for a non-positive or overflowing value (Redis's "invalid expire time").
func deadlineOf(opt string, n, now int64) (int64, bool) {
	if n <= 0 {
		return 0, false
	}
	switch opt {
	case "EX", "EXAT":
		if n > math.MaxInt64/1000 {
			return 0, false
		}
		n *= 1000
	}
	switch opt {
	case "EX", "PX":
		if n > math.MaxInt64-now {
			return 0, false
		}
		n += now
	}
	return n, true
}

// cmdKeys serves DEL, EXISTS and MGET: the client splits the keys by group.
func cmdKeys(op kv.Op) func(*call) string {
	return func(c *call) string { return c.do(kv.Command{Op: op, Keys: c.args[1:]}) }
}

func cmdMSet(c *call) string {
	if len(c.args)%2 != 1 {
		return wrongArity(c.name)
	}
	cmd := kv.Command{Op: kv.OpMSet}
	for i := 1; i < len(c.args); i += 2 {
		cmd.Keys = append(cmd.Keys, c.args[i])
		cmd.Values = append(cmd.Values, c.args[i+1])
	}
	return c.do(cmd)
}

func cmdIncr(sign int64, withArg bool) func(*call) string {
	return func(c *call) string {
		delta := int64(1)
		if withArg {
			n, err := strconv.ParseInt(string(c.args[2]), 10, 64)
			if err != nil {
				return errNotInteger
			}
			if sign < 0 && n == math.MinInt64 {
				return "ERR decrement would overflow"
			}
			delta = n
		}
		return c.do(kv.Command{Op: kv.OpIncrBy, Keys: c.args[1:2], Int: sign * delta})
	}
}

// cmdExpire serves EXPIRE (unit 1000: seconds) and PEXPIRE (unit 1: ms).
func cmdExpire(unit int64) func(*call) string {
	return func(c *call) string {
		now := c.s.cfg.Client.Now()
		cmd, text := ParseExpire(c.name, c.args, now, unit)
		if text != "" {
			return text
		}
		return c.do(cmd)
	}
}

// ParseExpire parses EXPIRE/PEXPIRE key n [NX|XX|GT|LT] into a command with an
// absolute deadline, or returns the Redis error text.
func ParseExpire(name string, args [][]byte, now, unit int64) (kv.Command, string) {
	cmd := kv.Command{Op: kv.OpExpire, Now: now, Keys: args[1:2]}
	n, err := strconv.ParseInt(string(args[2]), 10, 64)
	if err != nil {
		return cmd, errNotInteger
	}
	invalid := fmt.Sprintf("ERR invalid expire time in '%s' command", name)
	if n > math.MaxInt64/unit || n < math.MinInt64/unit {
		return cmd, invalid
	}
	n *= unit
	if (n > 0 && now > math.MaxInt64-n) || (n < 0 && now < math.MinInt64-n) {
		return cmd, invalid
	}
	cmd.Int = now + n
	if cmd.Int == 0 {
		cmd.Int = -1 // 0 means "no deadline" in a record; this deadline has passed
	}
	for _, a := range args[3:] {
		switch strings.ToUpper(string(a)) {
		case "NX":
			cmd.Flags |= kv.ExpireNX
		case "XX":
			cmd.Flags |= kv.ExpireXX
		case "GT":
			cmd.Flags |= kv.ExpireGT
		case "LT":
			cmd.Flags |= kv.ExpireLT
		default:
			return cmd, fmt.Sprintf("ERR Unsupported option %s", a)
		}
	}
	f := cmd.Flags
	if f&kv.ExpireNX != 0 && f&(kv.ExpireXX|kv.ExpireGT|kv.ExpireLT) != 0 {
		return cmd, "ERR NX and XX, GT or LT options at the same time are not compatible"
	}
	if f&kv.ExpireGT != 0 && f&kv.ExpireLT != 0 {
		return cmd, "ERR GT and LT options at the same time are not compatible"
	}
	return cmd, ""
}

// cmdTTL serves TTL (seconds, rounded as Redis does) and PTTL.
func cmdTTL(unit int64) func(*call) string {
	return func(c *call) string {
		return c.doThen(kv.Command{Op: kv.OpTTL, Keys: c.args[1:2]}, func(r kv.Reply) kv.Reply {
			if r.Kind == kv.KindInt && r.Int >= 0 && unit > 1 {
				r.Int = (r.Int + unit/2) / unit
			}
			return r
		})
	}
}

// cmdReadMode shows (no argument) or sets this connection's read mode.
func cmdReadMode(c *call) string {
	switch len(c.args) {
	case 1:
		c.conn.WriteBulkString(c.st.mode.String())
		return ""
	case 2:
		m, err := kv.ParseReadMode(strings.ToLower(string(c.args[1])))
		if err != nil {
			return "ERR read mode must be linearizable, follower or stale"
		}
		return setReadMode(m)(c)
	}
	return wrongArity(c.name)
}

func setReadMode(m kv.ReadMode) func(*call) string {
	return func(c *call) string {
		c.st.mode = m
		c.conn.WriteString("OK")
		return ""
	}
}
