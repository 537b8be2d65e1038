package logstore

import (
	"bytes"
	"errors"
	"testing"

	"github.com/multipaxos/engine/ids"
)

func TestRecordsRejectDamage(t *testing.T) {
	e := encodeEntry(Entry{Instance: 7, Ballot: ids.Ballot{Number: 3, Node: 2}, Value: []byte("hello")})
	m := encodeMeta(Meta{Promised: ids.Ballot{Number: 1, Node: 1}, ChosenNext: 9})
	tr := encodeTrim(12, []byte("base"))
	// Every single-bit flip and every truncation of a valid record is caught.
	for _, rec := range [][]byte{e, m, tr} {
		for i := range len(rec) * 8 {
			bad := append([]byte(nil), rec...)
			bad[i/8] ^= 1 << (i % 8)
			if decodeAny(bad) == nil {
				t.Fatalf("bit %d flipped in %x: decoded without error", i, rec)
			}
		}
		for n := range len(rec) {
			if err := decodeAny(rec[:n]); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("record %x truncated to %d bytes: %v", rec, n, err)
			}
		}
	}
	// Records of one kind do not decode as another.
	if _, err := decodeMeta(tr); err == nil {
		t.Fatal("trim record decoded as meta")
	}
	if _, err := decodeEntry(m); err == nil {
		t.Fatal("meta record decoded as entry")
	}
}

// decodeAny decodes rec with the decoder its format byte names; nil means rec is
// a valid record of the kind its first byte claims.
func decodeAny(rec []byte) error {
	var err error
	switch {
	case len(rec) > 0 && rec[0] == formatEntryV1:
		_, err = decodeEntry(rec)
	case len(rec) > 0 && rec[0] == formatMetaV1:
		_, err = decodeMeta(rec)
	case len(rec) > 0 && (rec[0] == formatTrimV1 || rec[0] == formatTrimV2):
		_, _, err = decodeTrim(rec)
	default:
		_, err = decodeEntry(rec)
	}
	return err
}

func TestDecodeEntryCopiesValue(t *testing.T) {
	rec := encodeEntry(Entry{Instance: 1, Value: []byte("abc")})
	e, err := decodeEntry(rec)
	if err != nil {
		t.Fatal(err)
	}
	rec[entryHeaderLen] = 'X'
	if string(e.Value) != "abc" {
		t.Fatal("decoded value aliases the record buffer")
	}
}

// FuzzDecodeEntry: decoding arbitrary bytes never panics; what decodes
// re-encodes to the same bytes (one encoding per entry); and any entry survives
// encode then decode.
func FuzzDecodeEntry(f *testing.F) {
	valid := encodeEntry(Entry{Instance: 42, Ballot: ids.Ballot{Number: 7, Node: 3}, Value: []byte("value")})
	f.Add(valid, uint64(42), uint64(7), uint64(3), []byte("value"))
	f.Add(valid[:len(valid)-1], uint64(0), uint64(0), uint64(0), []byte{})
	f.Add([]byte{}, uint64(1)<<63, ^uint64(0), uint64(1), bytes.Repeat([]byte{0xff}, 300))
	f.Fuzz(func(t *testing.T, data []byte, inst, num, node uint64, value []byte) {
		if e, err := decodeEntry(data); err == nil {
			if again := encodeEntry(e); !bytes.Equal(again, data) {
				t.Fatalf("decoded %x, re-encoded %x", data, again)
			}
		} else if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("error %v does not wrap ErrCorrupt", err)
		}
		want := Entry{Instance: ids.InstanceID(inst), Ballot: ids.Ballot{Number: num, Node: ids.NodeID(node)}, Value: value}
		got, err := decodeEntry(encodeEntry(want))
		if err != nil || got.Instance != want.Instance || got.Ballot != want.Ballot || !bytes.Equal(got.Value, want.Value) {
			t.Fatalf("round trip of %+v = %+v, %v", want, got, err)
		}
	})
}

// FuzzDecodeMeta does the same for the fixed-size meta and trim records.
func FuzzDecodeMeta(f *testing.F) {
	f.Add(encodeMeta(Meta{Promised: ids.Ballot{Number: 5, Node: 1}, ChosenNext: 10}), uint64(5), uint64(1), uint64(10), uint64(3))
	f.Add(encodeTrim(77, nil), uint64(0), uint64(0), uint64(0), uint64(0))
	f.Add(encodeTrim(78, []byte("base")), uint64(0), uint64(0), uint64(0), uint64(0))
	f.Add([]byte{formatMetaV1}, ^uint64(0), ^uint64(0), ^uint64(0), ^uint64(0))
	f.Fuzz(func(t *testing.T, data []byte, num, node, chosen, retained uint64) {
		if m, err := decodeMeta(data); err == nil {
			if again := encodeMeta(m); !bytes.Equal(again, data) {
				t.Fatalf("decoded meta %x, re-encoded %x", data, again)
			}
		} else if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("error %v does not wrap ErrCorrupt", err)
		}
		if r, base, err := decodeTrim(data); err == nil && data[0] == formatTrimV2 {
			if again := encodeTrim(r, base); !bytes.Equal(again, data) {
				t.Fatalf("decoded trim %x, re-encoded %x", data, again)
			}
		}
		// MinRetained is not part of the meta record (keys.go says why).
		want := Meta{Promised: ids.Ballot{Number: num, Node: ids.NodeID(node)}, ChosenNext: ids.InstanceID(chosen)}
		if got, err := decodeMeta(encodeMeta(want)); err != nil || !sameMeta(got, want) {
			t.Fatalf("round trip of %+v = %+v, %v", want, got, err)
		}
		if got, base, err := decodeTrim(encodeTrim(ids.InstanceID(retained), data)); err != nil || got != ids.InstanceID(retained) || !bytes.Equal(base, data) {
			t.Fatalf("round trip of trim %d = %d, %v", retained, got, err)
		}
	})
}

// sameMeta compares metas, Base by content.
func sameMeta(a, b Meta) bool {
	return a.Promised == b.Promised && a.ChosenNext == b.ChosenNext && a.MinRetained == b.MinRetained &&
		bytes.Equal(a.Base, b.Base)
}
