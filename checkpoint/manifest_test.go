package checkpoint

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

func sampleManifest() Manifest {
	return Manifest{
		Group:    7,
		Instance: 1 << 40,
		System:   []byte("system state"),
		Files: []FileInfo{
			{Name: "a", Size: 0, CRC: 0},
			{Name: "data.sst", Size: MaxFileBytes, CRC: 0xdeadbeef},
			{Name: strings.Repeat("n", MaxNameBytes), Size: 300, CRC: 1},
		},
	}
}

// withCRC appends the trailer EncodeManifest would, so a hand-made body reaches
// the parser.
func withCRC(body []byte) []byte {
	return binary.BigEndian.AppendUint32(body, crc32.Checksum(body, castagnoli))
}

func TestManifestRoundTrip(t *testing.T) {
	for _, m := range []Manifest{{}, {Group: 1, Instance: 2}, sampleManifest()} {
		got, err := DecodeManifest(EncodeManifest(m))
		if err != nil {
			t.Fatalf("decode %+v: %v", m, err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, m)
		}
	}
	many := Manifest{Files: make([]FileInfo, 70000)}
	for i := range many.Files {
		many.Files[i] = FileInfo{Name: fmt.Sprintf("%06d.sst", i), Size: int64(i), CRC: uint32(i * 7)}
	}
	if got, err := DecodeManifest(EncodeManifest(many)); err != nil || len(got.Files) != len(many.Files) {
		t.Fatalf("manifest of %d files: %v, %d files back", len(many.Files), err, len(got.Files))
	}
}

// TestManifestRejectsBadNames: a name from a peer becomes a path here, so
// anything that is not one plain path element is refused on decode.
func TestManifestRejectsBadNames(t *testing.T) {
	bad := []string{"", ".", "..", "a/b", "/abs", "..\\x", "nul\x00", ManifestName, manifestTempName,
		strings.Repeat("n", MaxNameBytes+1)}
	for _, name := range bad {
		m := Manifest{Files: []FileInfo{{Name: name}}}
		if err := m.Validate(); !errors.Is(err, ErrBadManifest) {
			t.Errorf("Validate accepted name %q: %v", name, err)
		}
		if _, err := DecodeManifest(EncodeManifest(m)); !errors.Is(err, ErrBadManifest) {
			t.Errorf("DecodeManifest accepted name %q: %v", name, err)
		}
	}
	dup := Manifest{Files: []FileInfo{{Name: "x"}, {Name: "y"}, {Name: "x"}}}
	if _, err := DecodeManifest(EncodeManifest(dup)); !errors.Is(err, ErrBadManifest) {
		t.Errorf("duplicate names accepted: %v", err)
	}
}

func TestManifestRejectsBadLengths(t *testing.T) {
	tooBig := Manifest{Files: []FileInfo{{Name: "f", Size: MaxFileBytes + 1}}}
	negative := Manifest{Files: []FileInfo{{Name: "f", Size: -1}}}
	bigSystem := Manifest{System: make([]byte, MaxSystemBytes+1)}
	for name, m := range map[string]Manifest{"size": tooBig, "negative": negative, "system": bigSystem} {
		if _, err := DecodeManifest(EncodeManifest(m)); !errors.Is(err, ErrBadManifest) {
			t.Errorf("%s: accepted: %v", name, err)
		}
	}
	tooMany := Manifest{Files: make([]FileInfo, MaxFiles+1)}
	for i := range tooMany.Files {
		tooMany.Files[i].Name = strings.Repeat("z", 1+i%250) + string(rune(0x100+i/250))
	}
	if _, err := DecodeManifest(EncodeManifest(tooMany)); !errors.Is(err, ErrBadManifest) {
		t.Errorf("%d files accepted: %v", len(tooMany.Files), err)
	}

	good := EncodeManifest(sampleManifest())
	if _, err := DecodeManifest(append(good[:len(good):len(good)], 0)); !errors.Is(err, ErrBadManifest) {
		t.Errorf("trailing byte accepted: %v", err)
	}
	body := good[:len(good)-4]
	if _, err := DecodeManifest(withCRC(append(body[:len(body):len(body)], 0x90))); !errors.Is(err, ErrBadManifest) {
		t.Errorf("trailing element accepted: %v", err)
	}
	flipped := append([]byte(nil), good...)
	flipped[5] ^= 1
	if _, err := DecodeManifest(flipped); !errors.Is(err, ErrBadManifest) {
		t.Errorf("flipped byte accepted: %v", err)
	}
	for n := range len(good) {
		if _, err := DecodeManifest(good[:n]); !errors.Is(err, ErrBadManifest) {
			t.Fatalf("truncation to %d bytes accepted: %v", n, err)
		}
		if _, err := DecodeManifest(withCRC(body[:min(n, len(body)-1)])); !errors.Is(err, ErrBadManifest) {
			t.Fatalf("truncated body of %d bytes accepted: %v", n, err)
		}
	}
	wrongVersion := append([]byte{0x95, 2}, body[2:]...)
	if _, err := DecodeManifest(withCRC(wrongVersion)); !errors.Is(err, ErrBadManifest) {
		t.Errorf("version 2 accepted: %v", err)
	}
}

// TestManifestLyingLengthsDoNotAllocate: array, bin and str lengths near 4 GiB in
// a few bytes are refused before anything that size is allocated.
func TestManifestLyingLengthsDoNotAllocate(t *testing.T) {
	head := []byte{0x95, 1, 0, 0}
	lies := map[string][]byte{
		"files":  append(append(append([]byte{}, head...), 0xc4, 0), 0xdd, 0xff, 0xff, 0xff, 0xff, 0x93),
		"system": append(append([]byte{}, head...), 0xc6, 0xff, 0xff, 0xff, 0xff),
		"name": append(append(append([]byte{}, head...), 0xc4, 0),
			0x91, 0x93, 0xdb, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0),
		"outer": {0xdd, 0xff, 0xff, 0xff, 0xff},
	}
	for name, body := range lies {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := DecodeManifest(withCRC(body))
		runtime.ReadMemStats(&after)
		if !errors.Is(err, ErrBadManifest) {
			t.Errorf("%s: lying length accepted: %v", name, err)
		}
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
			t.Errorf("%s: decoding %d bytes allocated %d bytes", name, len(body), grew)
		}
	}
}

func TestChunkRoundTripAndRejects(t *testing.T) {
	for _, c := range []Chunk{{}, {File: 3, Offset: 1 << 30, Data: []byte("hello"), CRC: 9}, {File: ^uint32(0), Offset: MaxFileBytes, Data: make([]byte, 70000)}} {
		got, err := DecodeChunk(EncodeChunk(c))
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		if got.File != c.File || got.Offset != c.Offset || string(got.Data) != string(c.Data) || got.CRC != c.CRC {
			t.Fatalf("round trip: got %+v, want %+v", got, c)
		}
	}
	good := EncodeChunk(Chunk{File: 1, Offset: 2, Data: []byte("abc"), CRC: 4})
	for n := range len(good) {
		if _, err := DecodeChunk(good[:n]); !errors.Is(err, ErrBadChunk) {
			t.Fatalf("truncation to %d bytes accepted: %v", n, err)
		}
	}
	if _, err := DecodeChunk(append(good, 0)); !errors.Is(err, ErrBadChunk) {
		t.Errorf("trailing byte accepted: %v", err)
	}
	if _, err := DecodeChunk(EncodeChunk(Chunk{Offset: MaxFileBytes + 1})); !errors.Is(err, ErrBadChunk) {
		t.Errorf("offset over the limit accepted: %v", err)
	}
	if _, err := DecodeChunk([]byte{0x94, 0, 0, 0xc6, 0xff, 0xff, 0xff, 0xff}); !errors.Is(err, ErrBadChunk) {
		t.Errorf("lying data length accepted: %v", err)
	}
	c := Chunk{File: 1, Offset: 2, Data: []byte("abc")}
	c.CRC = c.Checksum()
	moved := c
	moved.Offset = 3
	if moved.Checksum() == c.CRC {
		t.Error("the checksum does not cover the offset")
	}
}
