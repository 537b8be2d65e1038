package kv

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// CommandVersion is the first byte of every encoded Command. A member that meets
// another version answers ErrCodeBadCommand instead of guessing, identically on
// every member, so a mixed-version cluster fails loudly but stays consistent.
const CommandVersion byte = 1

// ReplyVersion is the first byte of every encoded Reply.
const ReplyVersion byte = 1

// Op is a command's operation.
type Op uint8

// The operations. Their numbers are part of the log format: append only.
const (
	OpGet    Op = 1 // Keys[0] -> bulk or nil
	OpSet    Op = 2 // Keys[0] = Values[0]; Int = deadline (unix ms, 0 = none); Flags: SetNX/XX/Get/KeepTTL
	OpDel    Op = 3 // Keys -> number of keys that existed
	OpExists Op = 4 // Keys -> number of keys that exist (repeats count again)
	OpIncrBy Op = 5 // Keys[0] += Int -> the new value
	OpMGet   Op = 6 // Keys -> array of bulk or nil
	OpMSet   Op = 7 // Keys[i] = Values[i] -> OK
	OpExpire Op = 8 // Keys[0] expires at Int (unix ms); Flags: ExpireNX/XX/GT/LT -> 1 or 0
	OpTTL    Op = 9 // Keys[0] -> ms left, -1 (no deadline) or -2 (absent)
	OpDBSize Op = 10
)

var opNames = [...]string{OpGet: "GET", OpSet: "SET", OpDel: "DEL", OpExists: "EXISTS", OpIncrBy: "INCRBY",
	OpMGet: "MGET", OpMSet: "MSET", OpExpire: "EXPIRE", OpTTL: "TTL", OpDBSize: "DBSIZE"}

func (o Op) String() string {
	if int(o) < len(opNames) && opNames[o] != "" {
		return opNames[o]
	}
	return fmt.Sprintf("Op(%d)", uint8(o))
}

// IsRead says whether the operation changes nothing; reads take the linearizable
// read path (Client.readLinearizable) rather than being writes.
func (o Op) IsRead() bool {
	switch o {
	case OpGet, OpExists, OpMGet, OpTTL, OpDBSize:
		return true
	}
	return false
}

// MultiKey says whether the operation's keys may span groups, so the Client splits
// it into one command per group.
func (o Op) MultiKey() bool {
	switch o {
	case OpDel, OpExists, OpMGet, OpMSet:
		return true
	}
	return false
}

// Flags modify SET and EXPIRE.
type Flags uint8

// Flags of SET.
const (
	SetNX      Flags = 1 << 0 // only if the key is absent
	SetXX      Flags = 1 << 1 // only if the key exists
	SetGet     Flags = 1 << 2 // reply with the old value (SET ... GET, GETSET)
	SetKeepTTL Flags = 1 << 3 // keep the key's deadline; Int is ignored
)

// Flags of EXPIRE (Redis 7 semantics: no deadline counts as an infinite one).
const (
	ExpireNX Flags = 1 << 0 // only if the key has no deadline
	ExpireXX Flags = 1 << 1 // only if the key has a deadline
	ExpireGT Flags = 1 << 2 // only if the new deadline is later
	ExpireLT Flags = 1 << 3 // only if the new deadline is earlier
)

// Command is one operation in one group, as it travels through the log.
type Command struct {
	_msgpack struct{} `msgpack:",as_array"`
	Op       Op
	Now      int64 // the proposer's wall clock, unix ms; execution's only time source
	Keys     [][]byte
	Values   [][]byte
	Int      int64 // OpIncrBy: delta; OpSet, OpExpire: absolute deadline in unix ms
	Flags    Flags
}

// ErrBadCommand is returned by DecodeCommand for bytes that are not a command of
// this version.
var ErrBadCommand = errors.New("kv: undecodable command")

// EncodeCommand returns the log bytes of c.
func EncodeCommand(c *Command) ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteByte(CommandVersion)
	enc := msgpack.NewEncoder(&buf)
	if err := enc.Encode(c); err != nil {
		return nil, fmt.Errorf("kv: encode command: %w", err)
	}
	return buf.Bytes(), nil
}

// DecodeCommand parses the log bytes of a command and checks its shape, so that
// execution can index Keys and Values without further checks. Every length is
// checked against the bytes left before anything is allocated: a corrupt or
// hostile command in the log must cost an error reply, not every member's memory.
func DecodeCommand(b []byte) (Command, error) {
	var c Command
	if len(b) == 0 || b[0] != CommandVersion {
		return c, fmt.Errorf("%w: version byte", ErrBadCommand)
	}
	r := bytes.NewReader(b[1:])
	d := msgpack.NewDecoder(r)
	n, err := d.DecodeArrayLen()
	if err != nil || n != 6 {
		return c, fmt.Errorf("%w: header: array of %d, %v", ErrBadCommand, n, err)
	}
	op, err1 := d.DecodeUint8()
	now, err2 := d.DecodeInt64()
	if err := errors.Join(err1, err2); err != nil {
		return c, fmt.Errorf("%w: %v", ErrBadCommand, err)
	}
	keys, err := decodeBytesList(d, r)
	if err != nil {
		return c, fmt.Errorf("%w: keys: %v", ErrBadCommand, err)
	}
	values, err := decodeBytesList(d, r)
	if err != nil {
		return c, fmt.Errorf("%w: values: %v", ErrBadCommand, err)
	}
	i, err1 := d.DecodeInt64()
	flags, err2 := d.DecodeUint8()
	if err := errors.Join(err1, err2); err != nil {
		return c, fmt.Errorf("%w: %v", ErrBadCommand, err)
	}
	if r.Len() != 0 {
		return c, fmt.Errorf("%w: %d trailing bytes", ErrBadCommand, r.Len())
	}
	c = Command{Op: Op(op), Now: now, Keys: keys, Values: values, Int: i, Flags: Flags(flags)}
	if err := c.validate(); err != nil {
		return c, err
	}
	return c, nil
}

// decodeBytesList decodes an array of byte strings (nil or a bin/str each).
func decodeBytesList(d *msgpack.Decoder, r *bytes.Reader) ([][]byte, error) {
	n, err := d.DecodeArrayLen()
	if err != nil {
		return nil, err
	}
	if n == -1 {
		return nil, nil
	}
	if n < 0 || n > r.Len() { // every element takes at least one byte
		return nil, fmt.Errorf("%d elements claimed, %d bytes left", n, r.Len())
	}
	out := make([][]byte, n)
	for i := range out {
		l, err := d.DecodeBytesLen()
		if err != nil {
			return nil, err
		}
		if l > r.Len() {
			return nil, fmt.Errorf("%d bytes claimed, %d left", l, r.Len())
		}
		if l < 0 {
			continue
		}
		out[i] = make([]byte, l)
		if err := d.ReadFull(out[i]); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (c *Command) validate() error {
	bad := func(why string) error { return fmt.Errorf("%w: %s: %s", ErrBadCommand, c.Op, why) }
	switch c.Op {
	case OpGet, OpTTL, OpIncrBy, OpExpire:
		if len(c.Keys) != 1 {
			return bad("want one key")
		}
	case OpSet:
		if len(c.Keys) != 1 || len(c.Values) != 1 {
			return bad("want one key and one value")
		}
		if c.Flags&SetNX != 0 && c.Flags&SetXX != 0 {
			return bad("NX and XX")
		}
	case OpDel, OpExists, OpMGet:
		if len(c.Keys) == 0 {
			return bad("no keys")
		}
	case OpMSet:
		if len(c.Keys) == 0 || len(c.Keys) != len(c.Values) {
			return bad("keys and values differ in number")
		}
	case OpDBSize:
	default:
		return fmt.Errorf("%w: unknown op %d", ErrBadCommand, c.Op)
	}
	return nil
}

// Kind is the shape of a Reply; it maps one to one onto RESP2 reply types.
type Kind uint8

// Reply kinds.
const (
	KindOK    Kind = 1 // +OK
	KindNil   Kind = 2 // null bulk
	KindInt   Kind = 3 // Int
	KindBulk  Kind = 4 // Bulk
	KindArray Kind = 5 // Array
	KindErr   Kind = 6 // Err
)

// ErrCode is a logical failure of a command, the same on every member.
type ErrCode uint8

// Error codes. Part of the result format: append only.
const (
	ErrCodeNotInteger ErrCode = 1 // the value is not a decimal int64
	ErrCodeOverflow   ErrCode = 2 // INCRBY would overflow int64
	ErrCodeBadCommand ErrCode = 3 // the command could not be decoded
)

// Typed errors for the error codes (Reply.Err).
var (
	ErrNotInteger = errors.New("value is not an integer or out of range")
	ErrOverflow   = errors.New("increment or decrement would overflow")
	// ErrBadCommand above doubles as the error of ErrCodeBadCommand.
)

// Error returns the typed error for the code.
func (e ErrCode) Error() error {
	switch e {
	case ErrCodeNotInteger:
		return ErrNotInteger
	case ErrCodeOverflow:
		return ErrOverflow
	case ErrCodeBadCommand:
		return ErrBadCommand
	}
	return fmt.Errorf("kv: unknown error code %d", uint8(e))
}

// Reply is the result of one command.
type Reply struct {
	_msgpack struct{} `msgpack:",as_array"`
	Kind     Kind
	Int      int64
	Bulk     []byte
	Array    []Reply
	Err      ErrCode
}

// Reply constructors.
var (
	replyOK  = Reply{Kind: KindOK}
	replyNil = Reply{Kind: KindNil}
)

func replyInt(n int64) Reply   { return Reply{Kind: KindInt, Int: n} }
func replyBulk(b []byte) Reply { return Reply{Kind: KindBulk, Bulk: b} }
func replyErr(c ErrCode) Reply { return Reply{Kind: KindErr, Err: c} }
func replyArr(a []Reply) Reply { return Reply{Kind: KindArray, Array: a} }
func bulkOrNil(b []byte, ok bool) Reply {
	if !ok {
		return replyNil
	}
	return replyBulk(b)
}

// AsError returns the typed error of an error reply, nil for any other kind.
func (r Reply) AsError() error {
	if r.Kind != KindErr {
		return nil
	}
	return r.Err.Error()
}

// EncodeReply returns the result bytes of r.
func EncodeReply(r Reply) ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteByte(ReplyVersion)
	if err := msgpack.NewEncoder(&buf).Encode(&r); err != nil {
		return nil, fmt.Errorf("kv: encode reply: %w", err)
	}
	return buf.Bytes(), nil
}

// ErrBadReply is returned by DecodeReply for bytes that are not a reply.
var ErrBadReply = errors.New("kv: undecodable reply")

// DecodeReply parses result bytes.
func DecodeReply(b []byte) (Reply, error) {
	var r Reply
	if len(b) == 0 || b[0] != ReplyVersion {
		return r, fmt.Errorf("%w: version byte", ErrBadReply)
	}
	if err := msgpack.Unmarshal(b[1:], &r); err != nil {
		return r, fmt.Errorf("%w: %v", ErrBadReply, err)
	}
	return r, nil
}
