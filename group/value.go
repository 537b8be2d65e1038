package group

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/multipaxos/engine/ids"
	"github.com/vmihailenco/msgpack/v5"
)

// RequestID names one proposal across the cluster: the node that accepted it from
// its caller and a sequence number unique on that node while it runs (the node
// starts its sequence from a random 64-bit point, so a restart does not reuse IDs).
// The proposer tells its callers which proposals were chosen by this ID, never by
// comparing value bytes.
type RequestID struct {
	Node ids.NodeID
	Seq  uint64
}

// CommandKind says which state machine a command is for.
type CommandKind uint8

const (
	// KindApp commands go to the application's state machine.
	KindApp CommandKind = iota
	// KindMaster commands go to the engine's master-lease state machine.
	KindMaster
	// KindMembership commands change the group's members.
	KindMembership
	kindEnd
)

// Command is one command inside an instance value.
type Command struct {
	ID   RequestID
	Kind CommandKind
	// MayDup: the command was forwarded before it was proposed, so copies of it may
	// be on their way to a master; executing it records its ID in the executed
	// window (executed.go). A command that was never forwarded has no copy.
	MayDup bool
	Data   []byte
}

// kindMayDup is the bit of the encoded kind that carries Command.MayDup.
const kindMayDup = 0x80

// ErrBadValue is wrapped by every failure to decode an instance value.
var ErrBadValue = errors.New("group: bad instance value")

// An instance value is a msgpack array [version, [[node, seq, kind, data], ...]];
// kind's high bit is Command.MayDup.
// An empty batch is a no-op. Engine-internal commands (a master claim) travel in the
// same batch as application commands, so a busy group renews its master lease at no
// extra instance.
const valueVersion = 2

// encodeValue packs a batch of commands into one instance value.
func encodeValue(cmds []Command) []byte {
	var buf bytes.Buffer
	buf.Grow(16 + len(cmds)*24 + batchBytes(cmds))
	e := msgpack.NewEncoder(&buf)
	_ = e.EncodeArrayLen(2)
	_ = e.EncodeUint(valueVersion)
	_ = e.EncodeArrayLen(len(cmds))
	for _, c := range cmds {
		_ = e.EncodeArrayLen(4)
		_ = e.EncodeUint(uint64(c.ID.Node))
		_ = e.EncodeUint(c.ID.Seq)
		kind := uint64(c.Kind)
		if c.MayDup {
			kind |= kindMayDup
		}
		_ = e.EncodeUint(kind)
		_ = e.EncodeBytes(c.Data)
	}
	return buf.Bytes()
}

func batchBytes(cmds []Command) int {
	n := 0
	for _, c := range cmds {
		n += len(c.Data)
	}
	return n
}

// decodeValue unpacks an instance value. Command data are copies. Lengths are
// checked against the bytes left before anything is allocated.
func decodeValue(v []byte) ([]Command, error) {
	r := bytes.NewReader(v)
	d := msgpack.GetDecoder() // NewDecoder's buffers cost as much as the decoding
	defer msgpack.PutDecoder(d)
	d.Reset(r)
	fail := func(what string, err error) ([]Command, error) {
		return nil, fmt.Errorf("%w: %s: %v", ErrBadValue, what, err)
	}
	n, err := d.DecodeArrayLen()
	if err != nil || n != 2 {
		return fail("header", fmt.Errorf("array of %d, %v", n, err))
	}
	ver, err := d.DecodeUint64()
	if err != nil || ver != valueVersion {
		return fail("version", fmt.Errorf("%d, %v", ver, err))
	}
	n, err = d.DecodeArrayLen()
	if err != nil || n < 0 || n > r.Len() {
		return fail("batch length", fmt.Errorf("%d in %d bytes, %v", n, r.Len(), err))
	}
	cmds := make([]Command, 0, n)
	for i := 0; i < n; i++ {
		if k, err := d.DecodeArrayLen(); err != nil || k != 4 {
			return fail("command", fmt.Errorf("array of %d, %v", k, err))
		}
		node, err1 := d.DecodeUint64()
		seq, err2 := d.DecodeUint64()
		kind, err3 := d.DecodeUint64()
		l, err4 := d.DecodeBytesLen()
		if err := errors.Join(err1, err2, err3, err4); err != nil {
			return fail("command", err)
		}
		mayDup := kind&kindMayDup != 0
		if kind &^= kindMayDup; kind >= uint64(kindEnd) {
			return fail("command kind", fmt.Errorf("%d", kind))
		}
		if l > r.Len() {
			return fail("command data", fmt.Errorf("%d bytes claimed, %d left", l, r.Len()))
		}
		var data []byte
		if l > 0 {
			data = make([]byte, l)
			if err := d.ReadFull(data); err != nil {
				return fail("command data", err)
			}
		}
		cmds = append(cmds, Command{ID: RequestID{Node: ids.NodeID(node), Seq: seq}, Kind: CommandKind(kind), MayDup: mayDup, Data: data})
	}
	if r.Len() != 0 {
		return fail("trailer", fmt.Errorf("%d bytes left", r.Len()))
	}
	return cmds, nil
}

// AppCommands returns the application commands of an instance value, in order:
// what the state machine's Execute gets for that instance (a checkpoint.Replayer
// feeds its copy with it).
func AppCommands(value []byte) ([][]byte, error) {
	cmds, err := decodeValue(value)
	if err != nil {
		return nil, err
	}
	var app [][]byte
	for _, c := range cmds {
		if c.Kind == KindApp {
			app = append(app, c.Data)
		}
	}
	return app, nil
}
