package logstore

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"

	"github.com/multipaxos/engine/ids"
)

// Record codec. Every stored value is
//
//	[format byte][fixed fields, big-endian][variable part][CRC-32C u32 BE]
//
// with the CRC (Castagnoli) over everything before it. The format byte is the
// version and also names the kind of record, so a record read under the wrong kind
// of key fails to decode instead of being misread. Decoders check length, format
// and checksum before they look at a field, never panic, and allocate at most the
// size of their input (the copy of an entry's value), so garbage from a disk or a
// fuzzer costs nothing. A new layout gets a new format byte; readers keep decoding
// the old ones.
const (
	formatMetaV1  byte = 0x11
	formatTrimV1  byte = 0x21 // MinRetained only; still decoded
	formatTrimV2  byte = 0x22 // MinRetained and the engine's base state there
	formatEntryV1 byte = 0x31
)

const (
	crcLen         = 4
	metaRecordLen  = 1 + 8 + 8 + 8 + crcLen // format, Promised.Number, Promised.Node, ChosenNext
	trimRecordLen  = 1 + 8 + crcLen         // format, MinRetained (+ base, in V2)
	entryHeaderLen = 1 + 8 + 8 + 8          // format, Instance, Ballot.Number, Ballot.Node
	// entryOverhead is what an entry record adds to its value.
	entryOverhead = entryHeaderLen + crcLen
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// checkRecord validates the length (exactly want, or at least want when variable),
// format and checksum of rec.
func checkRecord(rec []byte, what string, format byte, want int, variable bool) error {
	if len(rec) < want || (!variable && len(rec) != want) {
		return fmt.Errorf("%w: %s record of %d bytes, want %d", ErrCorrupt, what, len(rec), want)
	}
	if rec[0] != format {
		return fmt.Errorf("%w: %s record has format byte %#x, want %#x", ErrCorrupt, what, rec[0], format)
	}
	body := len(rec) - crcLen
	if got, want := binary.BigEndian.Uint32(rec[body:]), crc32.Checksum(rec[:body], castagnoli); got != want {
		return fmt.Errorf("%w: %s record checksum %#08x, computed %#08x", ErrCorrupt, what, got, want)
	}
	return nil
}

// putMeta encodes Promised and ChosenNext into dst, which must be metaRecordLen
// long (MinRetained has its own record, see keys.go).
func putMeta(dst []byte, m *Meta) {
	dst[0] = formatMetaV1
	binary.BigEndian.PutUint64(dst[1:], m.Promised.Number)
	binary.BigEndian.PutUint64(dst[9:], uint64(m.Promised.Node))
	binary.BigEndian.PutUint64(dst[17:], uint64(m.ChosenNext))
	body := len(dst) - crcLen
	binary.BigEndian.PutUint32(dst[body:], crc32.Checksum(dst[:body], castagnoli))
}

func encodeMeta(m Meta) []byte {
	rec := make([]byte, metaRecordLen)
	putMeta(rec, &m)
	return rec
}

// decodeMeta decodes a meta record; MinRetained is left 0.
func decodeMeta(rec []byte) (Meta, error) {
	if err := checkRecord(rec, "meta", formatMetaV1, metaRecordLen, false); err != nil {
		return Meta{}, err
	}
	return Meta{
		Promised: ids.Ballot{
			Number: binary.BigEndian.Uint64(rec[1:]),
			Node:   ids.NodeID(binary.BigEndian.Uint64(rec[9:])),
		},
		ChosenNext: ids.InstanceID(binary.BigEndian.Uint64(rec[17:])),
	}, nil
}

func encodeTrim(minRetained ids.InstanceID, base []byte) []byte {
	rec := make([]byte, trimRecordLen+len(base))
	rec[0] = formatTrimV2
	binary.BigEndian.PutUint64(rec[1:], uint64(minRetained))
	copy(rec[9:], base)
	body := len(rec) - crcLen
	binary.BigEndian.PutUint32(rec[body:], crc32.Checksum(rec[:body], castagnoli))
	return rec
}

// decodeTrim decodes a trim record; base is a fresh copy (nil in a V1 record).
func decodeTrim(rec []byte) (ids.InstanceID, []byte, error) {
	if len(rec) > 0 && rec[0] == formatTrimV1 {
		if err := checkRecord(rec, "trim", formatTrimV1, trimRecordLen, false); err != nil {
			return 0, nil, err
		}
		return ids.InstanceID(binary.BigEndian.Uint64(rec[1:])), nil, nil
	}
	if err := checkRecord(rec, "trim", formatTrimV2, trimRecordLen, true); err != nil {
		return 0, nil, err
	}
	var base []byte
	if n := len(rec) - trimRecordLen; n > 0 {
		base = append([]byte(nil), rec[9:9+n]...)
	}
	return ids.InstanceID(binary.BigEndian.Uint64(rec[1:])), base, nil
}

// entryRecordLen is the encoded size of e.
func entryRecordLen(e *Entry) int { return entryOverhead + len(e.Value) }

// putEntry encodes e into dst, which must be entryRecordLen(e) long. Writing in
// place lets the committer encode straight into a pebble batch. The instance is
// stored although the key has it too, so a record that ends up under the wrong key
// is caught on read.
func putEntry(dst []byte, e *Entry) {
	dst[0] = formatEntryV1
	binary.BigEndian.PutUint64(dst[1:], uint64(e.Instance))
	binary.BigEndian.PutUint64(dst[9:], e.Ballot.Number)
	binary.BigEndian.PutUint64(dst[17:], uint64(e.Ballot.Node))
	copy(dst[entryHeaderLen:], e.Value)
	body := len(dst) - crcLen
	binary.BigEndian.PutUint32(dst[body:], crc32.Checksum(dst[:body], castagnoli))
}

func encodeEntry(e Entry) []byte {
	rec := make([]byte, entryRecordLen(&e))
	putEntry(rec, &e)
	return rec
}

// decodeEntry decodes an entry record. The value is copied, so rec may be a
// buffer that pebble reuses; an empty value decodes as nil.
func decodeEntry(rec []byte) (Entry, error) {
	if err := checkRecord(rec, "entry", formatEntryV1, entryOverhead, true); err != nil {
		return Entry{}, err
	}
	e := Entry{
		Instance: ids.InstanceID(binary.BigEndian.Uint64(rec[1:])),
		Ballot: ids.Ballot{
			Number: binary.BigEndian.Uint64(rec[9:]),
			Node:   ids.NodeID(binary.BigEndian.Uint64(rec[17:])),
		},
	}
	if v := rec[entryHeaderLen : len(rec)-crcLen]; len(v) > 0 {
		e.Value = append([]byte(nil), v...)
	}
	return e, nil
}

// decodeEntryAt decodes the record stored under (g, inst) and checks that it is
// that instance's record; errors carry the group and instance.
func decodeEntryAt(rec []byte, g ids.GroupID, inst ids.InstanceID) (Entry, error) {
	e, err := decodeEntry(rec)
	if err == nil && e.Instance != inst {
		err = fmt.Errorf("%w: entry record holds instance %d", ErrCorrupt, e.Instance)
	}
	if err != nil {
		return Entry{}, fmt.Errorf("group %d instance %d: %w", g, inst, err)
	}
	return e, nil
}

// entryValueLen is the value length an entry record of rec's size holds, without
// decoding it; 0 for a record too short to be one.
func entryValueLen(rec []byte) int { return max(len(rec)-entryOverhead, 0) }
