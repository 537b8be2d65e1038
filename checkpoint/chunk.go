package checkpoint

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
)

// ChunkRef names a chunk of an image: a file by its index in Manifest.Files and
// an offset in it, a multiple of the transfer's chunk size.
type ChunkRef struct {
	File   uint32
	Offset int64
}

// Chunk is a piece of one image file in transfer.
type Chunk struct {
	File   uint32 // index in Manifest.Files
	Offset int64  // where Data starts in the file
	Data   []byte // at most MaxChunkBytes
	// CRC is Checksum(): the CRC-32C of File, Offset and Data, so a chunk whose
	// position was damaged fails its check as surely as one whose data was.
	CRC uint32
}

// Checksum returns the CRC-32C over c's file index (4 bytes, big-endian), offset
// (8 bytes, big-endian) and data.
func (c Chunk) Checksum() uint32 {
	var head [12]byte
	binary.BigEndian.PutUint32(head[:4], c.File)
	binary.BigEndian.PutUint64(head[4:], uint64(c.Offset))
	return crc32.Update(crc32.Checksum(head[:], castagnoli), castagnoli, c.Data)
}

// chunkFields is the number of elements of an encoded chunk:
// [file, offset, data, crc].
const chunkFields = 4

// EncodeChunk encodes c as a msgpack array [file, offset, data, crc]. It does not
// check c: a chunk out of the limits encodes, and its encoding fails DecodeChunk.
func EncodeChunk(c Chunk) []byte {
	b := make([]byte, 0, 32+len(c.Data))
	b = appendArrayLen(b, chunkFields)
	b = appendUint(b, uint64(c.File))
	b = appendUint(b, uint64(c.Offset))
	b = appendBin(b, c.Data)
	return appendUint(b, uint64(c.CRC))
}

// DecodeChunk decodes what EncodeChunk produced; Data is a copy, not a view of
// b. It checks the encoding and the limits (offset at most MaxFileBytes, data at
// most MaxChunkBytes), not the checksum: Receiver.Put does. Failures wrap
// ErrBadChunk.
func DecodeChunk(b []byte) (Chunk, error) {
	fail := func(format string, args ...any) (Chunk, error) {
		return Chunk{}, fmt.Errorf("%w: %s", ErrBadChunk, fmt.Sprintf(format, args...))
	}
	r := &reader{b: b}
	n, err := r.arrayLen()
	if err != nil || n != chunkFields {
		return fail("array of %d fields, %v", n, err)
	}
	file, err := r.uintMax(0xffffffff, "file")
	if err != nil {
		return fail("%v", err)
	}
	off, err := r.uintMax(uint64(MaxFileBytes), "offset")
	if err != nil {
		return fail("%v", err)
	}
	data, err := r.bin(MaxChunkBytes)
	if err != nil {
		return fail("data: %v", err)
	}
	crc, err := r.uintMax(0xffffffff, "crc")
	if err != nil {
		return fail("%v", err)
	}
	if r.left() != 0 {
		return fail("%d trailing bytes", r.left())
	}
	return Chunk{File: uint32(file), Offset: int64(off), Data: append([]byte{}, data...), CRC: uint32(crc)}, nil
}

// ReadChunk reads the chunk of image dir (described by m) that starts at offset
// off of file number file: up to max bytes, fewer at the end of the file, and one
// empty chunk at offset 0 for an empty file. It sets the chunk's CRC. A request
// that names no chunk of m (file out of range, off outside the file, max not in
// 1..MaxChunkBytes) wraps ErrBadChunk; a file shorter than m says wraps
// ErrBadImage. It holds no state: the teacher answers each request on its own.
func ReadChunk(dir string, m Manifest, file uint32, off int64, max int) (Chunk, error) {
	if uint64(file) >= uint64(len(m.Files)) {
		return Chunk{}, fmt.Errorf("%w: file %d of an image of %d files", ErrBadChunk, file, len(m.Files))
	}
	f := m.Files[file]
	if err := validName(f.Name); err != nil {
		return Chunk{}, fmt.Errorf("%w: %v", ErrBadManifest, err)
	}
	if max <= 0 || max > MaxChunkBytes {
		return Chunk{}, fmt.Errorf("%w: chunk of %d bytes asked, limit %d", ErrBadChunk, max, MaxChunkBytes)
	}
	if off < 0 || off > f.Size || (off == f.Size && f.Size > 0) {
		return Chunk{}, fmt.Errorf("%w: offset %d in %q of %d bytes", ErrBadChunk, off, f.Name, f.Size)
	}
	c := Chunk{File: file, Offset: off, Data: make([]byte, min(int64(max), f.Size-off))}
	if len(c.Data) > 0 {
		path := filepath.Join(dir, f.Name)
		fh, err := os.Open(path)
		if err != nil {
			return Chunk{}, fmt.Errorf("%w: %w", ErrBadImage, err)
		}
		defer fh.Close()
		if _, err := fh.ReadAt(c.Data, off); err == io.EOF {
			return Chunk{}, fmt.Errorf("%w: %s is shorter than the %d bytes the manifest says", ErrBadImage, path, f.Size)
		} else if err != nil {
			return Chunk{}, fmt.Errorf("read chunk: %w", err)
		}
	}
	c.CRC = c.Checksum()
	return c, nil
}
