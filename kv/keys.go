package kv

import (
	"encoding/binary"
	"fmt"

	"github.com/multipaxos/engine/ids"
)

// Key kinds within a group's span; see the package doc for the layout.
const (
	kindMeta   byte = 'm'
	kindData   byte = 'd'
	kindExpiry byte = 'x'
)

// formatKey sorts after every group's span (groups are < 2^16).
var formatKey = []byte{0xff, 0xff, 0xff, 0xff, 'f'}

func groupPrefix(g ids.GroupID, kind byte, extra int) []byte {
	b := make([]byte, 5, 5+extra)
	binary.BigEndian.PutUint32(b, uint32(g))
	b[4] = kind
	return b
}

// groupSpan is [lo, hi) holding every key of group g.
func groupSpan(g ids.GroupID) (lo, hi []byte) {
	lo = binary.BigEndian.AppendUint32(nil, uint32(g))
	hi = binary.BigEndian.AppendUint32(nil, uint32(g)+1)
	return lo, hi
}

func metaKey(g ids.GroupID) []byte { return groupPrefix(g, kindMeta, 0) }

func dataKey(g ids.GroupID, key []byte) []byte {
	return append(groupPrefix(g, kindData, len(key)), key...)
}

// dataSpan holds every data record of group g.
func dataSpan(g ids.GroupID) (lo, hi []byte) {
	return groupPrefix(g, kindData, 0), groupPrefix(g, kindData+1, 0)
}

// expiryKey orders a group's expiring keys by deadline, so the sweep reads only
// the entries that are due.
func expiryKey(g ids.GroupID, deadline int64, key []byte) []byte {
	b := binary.BigEndian.AppendUint64(groupPrefix(g, kindExpiry, 8+len(key)), uint64(deadline))
	return append(b, key...)
}

// expiryDue is [lo, hi) of the expiry entries of group g with deadline <= now.
func expiryDue(g ids.GroupID, now int64) (lo, hi []byte) {
	lo = groupPrefix(g, kindExpiry, 8)
	hi = binary.BigEndian.AppendUint64(groupPrefix(g, kindExpiry, 8), uint64(now)+1)
	return lo, hi
}

func parseExpiryKey(k []byte) (deadline int64, key []byte, err error) {
	if len(k) < 13 || k[4] != kindExpiry {
		return 0, nil, fmt.Errorf("%w: bad expiry index key (%d bytes)", ErrStorage, len(k))
	}
	return int64(binary.BigEndian.Uint64(k[5:13])), k[13:], nil
}

// record is a stored value.
type record struct {
	deadline int64 // unix ms; 0 = none
	value    []byte
}

const recordVersion = 1

func encodeRecord(r record) []byte {
	b := make([]byte, 9, 9+len(r.value))
	b[0] = recordVersion
	binary.BigEndian.PutUint64(b[1:], uint64(r.deadline))
	return append(b, r.value...)
}

// decodeRecord copies the value out of b (Pebble's buffers are reused).
func decodeRecord(b []byte) (record, error) {
	if len(b) < 9 || b[0] != recordVersion {
		return record{}, fmt.Errorf("%w: bad data record (%d bytes)", ErrStorage, len(b))
	}
	return record{deadline: int64(binary.BigEndian.Uint64(b[1:])), value: append([]byte{}, b[9:]...)}, nil
}

// recordDeadline reads only the deadline, for counting without copying values.
func recordDeadline(b []byte) (int64, error) {
	if len(b) < 9 || b[0] != recordVersion {
		return 0, fmt.Errorf("%w: bad data record (%d bytes)", ErrStorage, len(b))
	}
	return int64(binary.BigEndian.Uint64(b[1:])), nil
}

func (r record) live(now int64) bool { return r.deadline == 0 || r.deadline > now }
