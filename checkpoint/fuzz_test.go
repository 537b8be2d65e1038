package checkpoint

import (
	"bytes"
	"reflect"
	"testing"
)

// FuzzDecodeManifest: any input either fails with ErrBadManifest or decodes to a
// valid manifest that round-trips. Each input is also tried with a correct
// checksum appended, so the fuzzer reaches the parser behind the CRC.
func FuzzDecodeManifest(f *testing.F) {
	f.Add(EncodeManifest(Manifest{}))
	f.Add(EncodeManifest(sampleManifest()))
	f.Add(EncodeManifest(Manifest{Group: 1, Instance: 99, Files: []FileInfo{{Name: "x", Size: 1, CRC: 2}, {Name: "y"}}}))
	body := EncodeManifest(sampleManifest())
	f.Add(body[:len(body)-4])
	f.Add([]byte{0x95, 1, 0, 0, 0xc4, 0, 0xdd, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0x95, 1, 0, 0, 0xc6, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, in := range [][]byte{b, withCRC(b)} {
			m, err := DecodeManifest(in)
			if err != nil {
				continue
			}
			if err := m.Validate(); err != nil {
				t.Fatalf("decoded an invalid manifest: %v", err)
			}
			again, err := DecodeManifest(EncodeManifest(m))
			if err != nil || !reflect.DeepEqual(again, m) {
				t.Fatalf("manifest does not round-trip: %v\n%+v\n%+v", err, m, again)
			}
		}
	})
}

// FuzzDecodeChunk: any input either fails with ErrBadChunk or decodes to a chunk
// that round-trips.
func FuzzDecodeChunk(f *testing.F) {
	c := Chunk{File: 2, Offset: 1 << 20, Data: []byte("some data")}
	c.CRC = c.Checksum()
	f.Add(EncodeChunk(c))
	f.Add(EncodeChunk(Chunk{}))
	f.Add([]byte{0x94, 0, 0, 0xc6, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeChunk(b)
		if err != nil {
			return
		}
		again, err := DecodeChunk(EncodeChunk(c))
		if err != nil || again.File != c.File || again.Offset != c.Offset || again.CRC != c.CRC || !bytes.Equal(again.Data, c.Data) {
			t.Fatalf("chunk does not round-trip: %v\n%+v\n%+v", err, c, again)
		}
	})
}
