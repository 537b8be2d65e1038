package checkpoint

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"strings"

	"github.com/multipaxos/engine/ids"
)

// FileInfo describes one file of an image.
type FileInfo struct {
	// Name is the file's name directly in the image directory: one path element
	// (see Manifest.Validate for the rules).
	Name string
	// Size is the file's length in bytes, 0 .. MaxFileBytes.
	Size int64
	// CRC is the CRC-32C (Castagnoli) of the whole file.
	CRC uint32
}

// Manifest describes an image: whose it is, which instance it stands for, and its
// files. It is stored in the image directory as ManifestName and sent to a learner
// before the files.
type Manifest struct {
	Group ids.GroupID
	// Instance: the image holds the effects of every instance below it and of
	// none at or above it.
	Instance ids.InstanceID
	// System is the engine's own state at Instance (master and membership
	// records), opaque to this package; at most MaxSystemBytes.
	System []byte
	// Files are the image's files, at most MaxFiles, names unique. A file's index
	// here is how chunks name it.
	Files []FileInfo
}

// manifestVersion is the first element of an encoded manifest; a decoder refuses
// any other, so a future format change cannot be misread.
const manifestVersion = 1

// manifestFields is the number of elements of the encoded manifest array:
// [version, group, instance, system, [[name, size, crc], ...]].
const manifestFields = 5

// minFileEntryBytes is the fewest bytes one encoded file entry takes: an array
// header, a name of one byte (two), a size and a CRC. A files array is checked
// against it before its slice is allocated.
const minFileEntryBytes = 5

// EncodeManifest encodes m as a msgpack array followed by a big-endian CRC-32C of
// that array. It does not validate m: an invalid manifest encodes, and its
// encoding fails DecodeManifest.
func EncodeManifest(m Manifest) []byte {
	size := 32 + len(m.System)
	for _, f := range m.Files {
		size += 24 + len(f.Name)
	}
	b := make([]byte, 0, size)
	b = appendArrayLen(b, manifestFields)
	b = appendUint(b, manifestVersion)
	b = appendUint(b, uint64(m.Group))
	b = appendUint(b, uint64(m.Instance))
	b = appendBin(b, m.System)
	b = appendArrayLen(b, len(m.Files))
	for _, f := range m.Files {
		b = appendArrayLen(b, 3)
		b = appendStr(b, f.Name)
		b = appendUint(b, uint64(f.Size))
		b = appendUint(b, uint64(f.CRC))
	}
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// DecodeManifest decodes what EncodeManifest produced and validates it. Any
// failure wraps ErrBadManifest; bad input never panics and never makes it
// allocate much more than the input's size.
func DecodeManifest(b []byte) (Manifest, error) {
	fail := func(format string, args ...any) (Manifest, error) {
		return Manifest{}, fmt.Errorf("%w: %s", ErrBadManifest, fmt.Sprintf(format, args...))
	}
	if len(b) < 4 {
		return fail("%d bytes", len(b))
	}
	body := b[:len(b)-4]
	if want, got := binary.BigEndian.Uint32(b[len(b)-4:]), crc32.Checksum(body, castagnoli); want != got {
		return fail("checksum 0x%08x, computed 0x%08x", want, got)
	}
	r := &reader{b: body}
	n, err := r.arrayLen()
	if err != nil || n != manifestFields {
		return fail("array of %d fields, %v", n, err)
	}
	version, err := r.uint()
	if err != nil || version != manifestVersion {
		return fail("version %d, %v", version, err)
	}
	var m Manifest
	group, err := r.uintMax(uint64(^ids.GroupID(0)), "group")
	if err != nil {
		return fail("%v", err)
	}
	m.Group = ids.GroupID(group)
	inst, err := r.uint()
	if err != nil {
		return fail("instance: %v", err)
	}
	m.Instance = ids.InstanceID(inst)
	system, err := r.bin(MaxSystemBytes)
	if err != nil {
		return fail("system: %v", err)
	}
	if len(system) > 0 {
		m.System = append([]byte(nil), system...)
	}
	count, err := r.arrayLen()
	if err != nil || count > MaxFiles || count*minFileEntryBytes > r.left() {
		return fail("%d files in %d bytes, %v", count, r.left(), err)
	}
	if count > 0 {
		m.Files = make([]FileInfo, 0, count)
	}
	for i := 0; i < count; i++ {
		f, err := decodeFileInfo(r)
		if err != nil {
			return fail("file %d: %v", i, err)
		}
		m.Files = append(m.Files, f)
	}
	if r.left() != 0 {
		return fail("%d trailing bytes", r.left())
	}
	if err := m.Validate(); err != nil {
		return Manifest{}, err
	}
	return m, nil
}

func decodeFileInfo(r *reader) (FileInfo, error) {
	n, err := r.arrayLen()
	if err != nil || n != 3 {
		return FileInfo{}, fmt.Errorf("array of %d fields, %v", n, err)
	}
	name, err := r.str(MaxNameBytes)
	if err != nil {
		return FileInfo{}, fmt.Errorf("name: %w", err)
	}
	size, err := r.uintMax(uint64(MaxFileBytes), "size")
	if err != nil {
		return FileInfo{}, err
	}
	crc, err := r.uintMax(0xffffffff, "crc")
	if err != nil {
		return FileInfo{}, err
	}
	return FileInfo{Name: name, Size: int64(size), CRC: uint32(crc)}, nil
}

// Validate reports why m cannot describe an image, wrapping ErrBadManifest, or
// returns nil. Every function of this package that takes a Manifest calls it
// before touching a file, since a manifest may come from another member.
func (m Manifest) Validate() error {
	if len(m.System) > MaxSystemBytes {
		return fmt.Errorf("%w: system state of %d bytes, limit %d", ErrBadManifest, len(m.System), MaxSystemBytes)
	}
	if len(m.Files) > MaxFiles {
		return fmt.Errorf("%w: %d files, limit %d", ErrBadManifest, len(m.Files), MaxFiles)
	}
	seen := make(map[string]struct{}, len(m.Files))
	for i, f := range m.Files {
		if err := validName(f.Name); err != nil {
			return fmt.Errorf("%w: file %d: %v", ErrBadManifest, i, err)
		}
		if _, dup := seen[f.Name]; dup {
			return fmt.Errorf("%w: file %d: name %q listed twice", ErrBadManifest, i, f.Name)
		}
		seen[f.Name] = struct{}{}
		if f.Size < 0 || f.Size > MaxFileBytes {
			return fmt.Errorf("%w: file %q: size %d out of 0..%d", ErrBadManifest, f.Name, f.Size, MaxFileBytes)
		}
	}
	return nil
}

// validName reports why name cannot be an image file's name: it must be one path
// element that stays inside the image directory on any platform, and not one of
// the manifest's own names.
func validName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty file name")
	case len(name) > MaxNameBytes:
		return fmt.Errorf("file name of %d bytes, limit %d", len(name), MaxNameBytes)
	case name == "." || name == "..":
		return fmt.Errorf("file name %q", name)
	case strings.ContainsAny(name, "/\\\x00"):
		return fmt.Errorf("file name %q holds a path separator or NUL", name)
	case name == ManifestName || name == manifestTempName:
		return fmt.Errorf("file name %q is reserved for the manifest", name)
	}
	return nil
}
