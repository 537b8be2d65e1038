package kv

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"go.uber.org/zap"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/statemachine"
)

// # Checkpoint images
//
// A group's checkpoint image (statemachine.Checkpointer) is one file, ImageFile,
// holding the group's whole key span as it stood at one instance: the meta record,
// every data record and every expiry index entry. The engine trims its log below
// the image's instance and sends the image to members that need what it trimmed.
//
// Invariants:
//   - The image is exact: it holds the effects of every instance below its instance
//     A and of none at or above. It is read from one Pebble snapshot, and Execute
//     writes an instance's effects and the meta record (applied = inst+1) in one
//     batch, so the snapshot's meta record names A for the data beside it.
//   - When Checkpoint returns A, this store's own state is durable up to A, and so
//     is the image. The contract no longer asks for the first (after a crash
//     that leaves Applied() below the log's start the engine installs its local
//     image), but one WAL sync per checkpoint is cheap and spares that install
//     on restart. Execute commits without fsync, so Checkpoint syncs Pebble's
//     WAL after taking the snapshot (everything the snapshot saw is in the WAL
//     ahead of that sync).
//   - Install is all or nothing: the whole image is read and checked (format,
//     group, lengths, key order, CRC-32C over every byte) into one batch that
//     deletes the group's span and writes the image's records, committed with
//     fsync. A bad image, or a crash before the commit, leaves the old state.
//     The batch holds the whole group in memory, which bounds a group's state
//     by memory and by Pebble's 4 GiB batch limit; a server with larger groups
//     would write the image as an sstable and ingest it with an excise of the
//     span instead.
//
// The obvious design is a Pebble checkpoint (db.Checkpoint restricted to the
// group's span). It was not taken: a Pebble checkpoint needs a directory that does
// not exist yet and lays out a whole DB (manifest, OPTIONS, WAL, sstables) where
// the engine gives an existing directory whose regular files it ships; it copies
// the WAL every time, so 64 groups checkpointing every few thousand instances
// would copy the WAL 64 times over; it may carry other groups' keys (Pebble
// restricts by file, not by key), which then travel to other members; and reading
// it back means opening a second DB. One file with the group's records costs a
// scan of the group's span and one WAL sync, and is checked end to end.
//
// File layout, integers big-endian:
//
//	"shardkv-image\n" (14 bytes)
//	u32 image version (imageVersion), u32 store format version, u32 groups,
//	u8 length + hash name, u32 group, u64 applied, i64 clock
//	records in key order, each: 'r', uvarint length + key (the key without its
//	4-byte group prefix), uvarint length + value
//	'e', u64 number of records, u32 CRC-32C (Castagnoli) of every byte before it

// ImageFile is the name of a group's checkpoint image in the engine's directory.
const ImageFile = "kv-group.image"

// imageMagic opens every image; a text line so that `head` shows what the file is.
const imageMagic = "shardkv-image\n"

// imageVersion is the version of the image layout above.
const imageVersion = 1

// ErrBadImage wraps every reason Install refuses an image other than a store
// format mismatch (ErrFormatMismatch): missing, truncated or corrupt, another
// group's, or inconsistent.
var ErrBadImage = errors.New("kv: bad checkpoint image")

var _ statemachine.Checkpointer = (*GroupSM)(nil)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// imageHeader is the part of an image before its records.
type imageHeader struct {
	imageVersion  uint32
	formatVersion uint32
	groups        uint32
	hash          string
	group         ids.GroupID
	applied       uint64
	clock         int64
}

func (h imageHeader) appendTo(b []byte) []byte {
	b = append(b, imageMagic...)
	b = binary.BigEndian.AppendUint32(b, h.imageVersion)
	b = binary.BigEndian.AppendUint32(b, h.formatVersion)
	b = binary.BigEndian.AppendUint32(b, h.groups)
	b = append(b, byte(len(h.hash)))
	b = append(b, h.hash...)
	b = binary.BigEndian.AppendUint32(b, uint32(h.group))
	b = binary.BigEndian.AppendUint64(b, h.applied)
	return binary.BigEndian.AppendUint64(b, uint64(h.clock))
}

const (
	imageRecordTag byte = 'r'
	imageEndTag    byte = 'e'
)

// Checkpoint implements statemachine.Checkpointer: it writes the group's image
// into dir (existing, empty) and returns its instance, with the image and this
// store durable up to that instance. It may run concurrently with Execute (see
// the essay above).
func (m *GroupSM) Checkpoint(dir string) (ids.InstanceID, error) {
	s := m.s
	if s.closed.Load() {
		return 0, ErrClosed
	}
	snap := s.db.NewSnapshot()
	defer snap.Close()
	mt, err := loadMeta(snap, m.g)
	if err != nil {
		return 0, err
	}
	// After the snapshot: every batch it saw is in the WAL ahead of this sync.
	if err := s.Sync(); err != nil {
		return 0, err
	}
	path := s.fs.PathJoin(dir, ImageFile)
	f, err := s.fs.Create(path, vfs.WriteCategoryUnspecified)
	if err != nil {
		return 0, fmt.Errorf("%w: create image %s: %v", ErrStorage, path, err)
	}
	n, err := m.writeImage(f, snap, mt)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(s.fs, dir) // the file's name is durable too
	}
	if err != nil {
		return 0, fmt.Errorf("%w: write image %s: %v", ErrStorage, path, err)
	}
	s.log.Info("group checkpoint written", zap.Uint32("group", uint32(m.g)),
		zap.Uint64("applied", mt.Applied), zap.Int("records", n), zap.String("dir", dir))
	return ids.InstanceID(mt.Applied), nil
}

// writeImage writes the image of the group's span in snap and returns its number
// of records.
func (m *GroupSM) writeImage(w io.Writer, snap *pebble.Snapshot, mt meta) (int, error) {
	crc := crc32.New(castagnoli)
	// The sum first: a writer may scramble what it was given once written (Pebble's
	// in-memory filesystem does, to catch that reliance).
	bw := bufio.NewWriterSize(io.MultiWriter(crc, w), 256<<10)
	h := imageHeader{imageVersion: imageVersion, formatVersion: formatVersion, groups: uint32(len(m.s.groups)),
		hash: HashName, group: m.g, applied: mt.Applied, clock: mt.Clock}
	if _, err := bw.Write(h.appendTo(nil)); err != nil {
		return 0, err
	}
	lo, hi := groupSpan(m.g)
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return 0, err
	}
	n := 0
	var buf []byte
	for it.First(); it.Valid(); it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			_ = it.Close()
			return 0, err
		}
		k := it.Key()[len(lo):]
		buf = append(buf[:0], imageRecordTag)
		buf = binary.AppendUvarint(buf, uint64(len(k)))
		buf = append(buf, k...)
		buf = binary.AppendUvarint(buf, uint64(len(v)))
		if _, err := bw.Write(buf); err != nil {
			_ = it.Close()
			return 0, err
		}
		if _, err := bw.Write(v); err != nil {
			_ = it.Close()
			return 0, err
		}
		n++
	}
	if err := it.Close(); err != nil {
		return 0, err
	}
	buf = binary.BigEndian.AppendUint64(append(buf[:0], imageEndTag), uint64(n))
	if _, err := bw.Write(buf); err != nil {
		return 0, err
	}
	if err := bw.Flush(); err != nil {
		return 0, err
	}
	// The CRC itself is not part of what it covers.
	_, err = w.Write(binary.BigEndian.AppendUint32(nil, crc.Sum32()))
	return n, err
}

func syncDir(fs vfs.FS, dir string) error {
	d, err := fs.OpenDir(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Install implements statemachine.Installer: it replaces the group's whole state
// with the image in dir, atomically and durably, and returns the image's instance.
// The engine calls it from the group's apply context, never concurrently with
// Execute. A bad image (ErrBadImage, ErrFormatMismatch) leaves the state as it was.
func (m *GroupSM) Install(dir string) (ids.InstanceID, error) {
	s := m.s
	if s.closed.Load() {
		return 0, ErrClosed
	}
	path := s.fs.PathJoin(dir, ImageFile)
	f, err := s.fs.Open(path)
	if err != nil {
		return 0, fmt.Errorf("%w: open %s: %v", ErrBadImage, path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("%w: stat %s: %v", ErrStorage, path, err)
	}
	b := s.db.NewBatch()
	defer b.Close()
	lo, hi := groupSpan(m.g)
	if err := b.DeleteRange(lo, hi, nil); err != nil {
		return 0, fmt.Errorf("%w: %v", ErrStorage, err)
	}
	r := &imageReader{r: bufio.NewReaderSize(f, 256<<10), crc: crc32.New(castagnoli), left: st.Size()}
	h, records, err := m.readImage(r, b)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return 0, fmt.Errorf("%w: install group %d: %v", ErrStorage, m.g, err)
	}
	old := m.applied.Swap(h.applied)
	m.clock.Store(h.clock)
	s.log.Info("group installed from checkpoint", zap.Uint32("group", uint32(m.g)), zap.String("dir", dir),
		zap.Uint64("applied", h.applied), zap.Uint64("applied_before", old), zap.Int("records", records))
	return ids.InstanceID(h.applied), nil
}

// readImage checks the image in r and adds its records to b.
func (m *GroupSM) readImage(r *imageReader, b *pebble.Batch) (imageHeader, int, error) {
	var h imageHeader
	bad := func(format string, args ...any) (imageHeader, int, error) {
		return h, 0, fmt.Errorf("%w: "+format, append([]any{ErrBadImage}, args...)...)
	}
	magic := make([]byte, len(imageMagic))
	if err := r.full(magic); err != nil || string(magic) != imageMagic {
		return bad("not an image (magic %q, %v)", magic, err)
	}
	var fixed [12]byte
	if err := r.full(fixed[:]); err != nil {
		return bad("header: %v", err)
	}
	h.imageVersion = binary.BigEndian.Uint32(fixed[0:])
	h.formatVersion = binary.BigEndian.Uint32(fixed[4:])
	h.groups = binary.BigEndian.Uint32(fixed[8:])
	if h.imageVersion != imageVersion {
		return bad("image version %d, this store reads %d", h.imageVersion, imageVersion)
	}
	hashLen, err := r.ReadByte()
	if err != nil {
		return bad("header: %v", err)
	}
	hashName := make([]byte, hashLen)
	var rest [20]byte
	if err := errors.Join(r.full(hashName), r.full(rest[:])); err != nil {
		return bad("header: %v", err)
	}
	h.hash = string(hashName)
	h.group = ids.GroupID(binary.BigEndian.Uint32(rest[0:]))
	h.applied = binary.BigEndian.Uint64(rest[4:])
	h.clock = int64(binary.BigEndian.Uint64(rest[12:]))
	if h.formatVersion != formatVersion || int(h.groups) != len(m.s.groups) || h.hash != HashName {
		return h, 0, fmt.Errorf("%w: image has format version %d, %d groups, hash %q; store has version %d, %d groups, hash %q",
			ErrFormatMismatch, h.formatVersion, h.groups, h.hash, formatVersion, len(m.s.groups), HashName)
	}
	if h.group != m.g {
		return bad("image of group %d, installing into group %d", h.group, m.g)
	}

	prefix, _ := groupSpan(m.g)
	var prev []byte
	haveMeta := false
	records := 0
	for {
		tag, err := r.ReadByte()
		if err != nil {
			return bad("record %d: %v", records, err)
		}
		if tag == imageEndTag {
			break
		}
		if tag != imageRecordTag {
			return bad("record %d: tag %#x", records, tag)
		}
		k, err := r.bytes()
		if err != nil {
			return bad("record %d key: %v", records, err)
		}
		v, err := r.bytes()
		if err != nil {
			return bad("record %d value: %v", records, err)
		}
		if len(k) == 0 || (k[0] != kindMeta && k[0] != kindData && k[0] != kindExpiry) {
			return bad("record %d: key %x of no known kind", records, k)
		}
		if records > 0 && bytes.Compare(prev, k) >= 0 {
			return bad("record %d: key %x not after %x", records, k, prev)
		}
		if k[0] == kindMeta {
			mt, err := decodeMeta(v)
			if err != nil || len(k) != 1 || mt.Applied != h.applied || mt.Clock != h.clock {
				return bad("meta record %x=%x disagrees with the header (applied %d, clock %d)", k, v, h.applied, h.clock)
			}
			haveMeta = true
		}
		if err := b.Set(append(append([]byte{}, prefix...), k...), v, nil); err != nil {
			return h, 0, fmt.Errorf("%w: %v", ErrStorage, err)
		}
		prev = k
		records++
	}
	var count [8]byte
	if err := r.full(count[:]); err != nil {
		return bad("trailer: %v", err)
	}
	if n := binary.BigEndian.Uint64(count[:]); n != uint64(records) {
		return bad("trailer counts %d records, read %d", n, records)
	}
	sum := r.crc.Sum32()
	var stored [4]byte
	if err := r.fullUnhashed(stored[:]); err != nil {
		return bad("checksum: %v", err)
	}
	if got := binary.BigEndian.Uint32(stored[:]); got != sum {
		return bad("checksum %#08x, content sums to %#08x", got, sum)
	}
	if r.left != 0 {
		return bad("%d bytes after the checksum", r.left)
	}
	// Execute writes the meta record with every instance, so only an image of a
	// group that never executed one may lack it.
	if !haveMeta && (h.applied != 0 || h.clock != 0) {
		return bad("no meta record for applied %d", h.applied)
	}
	return h, records, nil
}

// imageReader reads an image, summing what it reads and bounding every length by
// the bytes left in the file, so a corrupt length costs an error, not memory.
type imageReader struct {
	r    *bufio.Reader
	crc  hash.Hash32
	left int64 // bytes of the file not read yet
}

func (r *imageReader) ReadByte() (byte, error) {
	c, err := r.r.ReadByte()
	if err != nil {
		return 0, truncated(err)
	}
	r.left--
	_, _ = r.crc.Write([]byte{c})
	return c, nil
}

func (r *imageReader) fullUnhashed(p []byte) error {
	if int64(len(p)) > r.left {
		return fmt.Errorf("%d bytes wanted, %d left in the file", len(p), r.left)
	}
	if _, err := io.ReadFull(r.r, p); err != nil {
		return truncated(err)
	}
	r.left -= int64(len(p))
	return nil
}

func (r *imageReader) full(p []byte) error {
	if err := r.fullUnhashed(p); err != nil {
		return err
	}
	_, _ = r.crc.Write(p)
	return nil
}

// bytes reads a uvarint length and that many bytes.
func (r *imageReader) bytes() ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, err
	}
	if n > uint64(r.left) {
		return nil, fmt.Errorf("length %d, %d bytes left in the file", n, r.left)
	}
	p := make([]byte, n)
	return p, r.full(p)
}

func truncated(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
