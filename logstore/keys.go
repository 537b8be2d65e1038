package logstore

import (
	"encoding/binary"

	"github.com/multipaxos/engine/ids"
)

// The whole key layout of the store lives in this file (DESIGN.md section 6).
//
//	meta key:  [group u32 BE][kindMeta]                  -> meta record  (Promised, ChosenNext)
//	trim key:  [group u32 BE][kindTrim]                  -> trim record  (MinRetained)
//	log key:   [group u32 BE][kindLog][instance u64 BE]  -> entry record (Instance, Ballot, Value)
//
// The group comes first so that everything a group owns is one contiguous range,
// and big-endian numbers keep byte order equal to numeric order, so a group's log is
// one range sorted by instance: Entries is a forward scan, LastInstance is a seek to
// the end of the range and Trim is a single DeleteRange.
//
// MinRetained has a key of its own instead of a field in the meta record because
// two writers change a group's header: the group (promise, chosen point) through
// Commit and the checkpointer through Trim. With one record each, neither has to
// read, modify and write the other's field, so a Trim can never lower a promise
// (or a Commit a trim point) by writing back a stale copy.
const (
	kindMeta byte = 0x01
	kindTrim byte = 0x02
	kindLog  byte = 0x03
)

const (
	groupKeyLen = 4 + 1
	logKeyLen   = 4 + 1 + 8
)

func metaKey(g ids.GroupID) []byte { return putGroupKey(make([]byte, groupKeyLen), g, kindMeta) }

func trimKey(g ids.GroupID) []byte { return putGroupKey(make([]byte, groupKeyLen), g, kindTrim) }

func logKey(g ids.GroupID, inst ids.InstanceID) []byte {
	return putLogKey(make([]byte, logKeyLen), g, inst)
}

// logEnd is the exclusive upper bound of group g's log: the first key after every
// log key of g.
func logEnd(g ids.GroupID) []byte { return putGroupKey(make([]byte, groupKeyLen), g, kindLog+1) }

// putGroupKey writes a per-group key into dst, which must be groupKeyLen long; the
// put* forms let the committer fill keys in place inside a pebble batch.
func putGroupKey(dst []byte, g ids.GroupID, kind byte) []byte {
	binary.BigEndian.PutUint32(dst, uint32(g))
	dst[4] = kind
	return dst
}

// putLogKey writes a log key into dst, which must be logKeyLen long.
func putLogKey(dst []byte, g ids.GroupID, inst ids.InstanceID) []byte {
	binary.BigEndian.PutUint32(dst, uint32(g))
	dst[4] = kindLog
	binary.BigEndian.PutUint64(dst[5:], uint64(inst))
	return dst
}

// parseLogKey returns the instance of a log key of group g; ok is false for any key
// that is not one (a wrong length, group or kind).
func parseLogKey(key []byte, g ids.GroupID) (inst ids.InstanceID, ok bool) {
	if len(key) != logKeyLen || binary.BigEndian.Uint32(key) != uint32(g) || key[4] != kindLog {
		return 0, false
	}
	return ids.InstanceID(binary.BigEndian.Uint64(key[5:])), true
}
