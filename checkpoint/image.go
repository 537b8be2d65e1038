package checkpoint

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/multipaxos/engine/ids"
)

// maxManifestFileBytes bounds the manifest file OpenImage reads: far above what
// MaxFiles names of MaxNameBytes and MaxSystemBytes encode to.
const maxManifestFileBytes = 64 << 20

// copyBufferBytes is the buffer of file copies and checksums.
const copyBufferBytes = 256 << 10

// Seal makes dir an image of group g at instance inst: it lists the regular files
// directly in dir, fsyncs each and computes its size and CRC-32C, and writes the
// manifest atomically (temporary file, fsync, rename, fsync of dir). Anything in
// dir that is not a regular file (a subdirectory, a symbolic link) makes it fail
// with an error wrapping ErrBadImage: only regular files are transferred, so an
// image that needed anything else would arrive incomplete. A manifest already in
// dir is replaced. system is the engine's state at inst, stored as Manifest.System.
func Seal(dir string, g ids.GroupID, inst ids.InstanceID, system []byte) (Manifest, error) {
	if len(system) > MaxSystemBytes {
		return Manifest{}, fmt.Errorf("%w: system state of %d bytes, limit %d", ErrBadManifest, len(system), MaxSystemBytes)
	}
	names, err := regularFiles(dir, true)
	if err != nil {
		return Manifest{}, err
	}
	m := Manifest{Group: g, Instance: inst, Files: make([]FileInfo, 0, len(names))}
	if len(system) > 0 {
		m.System = append([]byte(nil), system...)
	}
	for _, name := range names {
		size, crc, err := checksumFile(filepath.Join(dir, name), true)
		if err != nil {
			return Manifest{}, err
		}
		m.Files = append(m.Files, FileInfo{Name: name, Size: size, CRC: crc})
	}
	if err := m.Validate(); err != nil {
		return Manifest{}, fmt.Errorf("%w: %w", ErrBadImage, err)
	}
	if err := writeManifest(dir, m); err != nil {
		return Manifest{}, err
	}
	return m, nil
}

// OpenImage reads and decodes dir's manifest and checks that every file it lists
// is in dir as a regular file of the listed size. It does not read the files (see
// VerifyImage). Every failure wraps ErrBadImage; a manifest that does not decode
// also wraps ErrBadManifest, a missing one fs.ErrNotExist.
func OpenImage(dir string) (Manifest, error) {
	b, err := readManifestFile(filepath.Join(dir, ManifestName))
	if err != nil {
		return Manifest{}, fmt.Errorf("%w: %s: %w", ErrBadImage, dir, err)
	}
	m, err := DecodeManifest(b)
	if err != nil {
		return Manifest{}, fmt.Errorf("%w: %s: %w", ErrBadImage, dir, err)
	}
	if err := checkFiles(dir, m, false); err != nil {
		return Manifest{}, err
	}
	return m, nil
}

// VerifyImage checks dir against m like OpenImage and also recomputes every file's
// CRC-32C. It ignores files m does not list. Failures wrap ErrBadImage (or
// ErrBadManifest for an invalid m).
func VerifyImage(dir string, m Manifest) error {
	if err := m.Validate(); err != nil {
		return err
	}
	return checkFiles(dir, m, true)
}

func readManifestFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxManifestFileBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxManifestFileBytes {
		return nil, fmt.Errorf("manifest over %d bytes", maxManifestFileBytes)
	}
	return b, nil
}

// checkFiles checks that each of m's files is a regular file in dir of its size,
// and with withCRC of its checksum. m must be valid.
func checkFiles(dir string, m Manifest, withCRC bool) error {
	for _, f := range m.Files {
		path := filepath.Join(dir, f.Name)
		st, err := os.Lstat(path)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrBadImage, err)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("%w: %s is not a regular file (%v)", ErrBadImage, path, st.Mode().Type())
		}
		if st.Size() != f.Size {
			return fmt.Errorf("%w: %s has %d bytes, the manifest says %d", ErrBadImage, path, st.Size(), f.Size)
		}
		if !withCRC {
			continue
		}
		size, crc, err := checksumFile(path, false)
		if err != nil {
			return err
		}
		if size != f.Size || crc != f.CRC {
			return fmt.Errorf("%w: %s has %d bytes with CRC 0x%08x, the manifest says %d with 0x%08x",
				ErrBadImage, path, size, crc, f.Size, f.CRC)
		}
	}
	return nil
}

// regularFiles lists the names of the regular files directly in dir, sorted. Any
// other kind of entry is an error wrapping ErrBadImage, and so is a name that is
// no valid image file name. With skipManifest the manifest's own files are left
// out (Seal replaces them); without, they are an error too.
func regularFiles(dir string, skipManifest bool) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadImage, err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		name := e.Name()
		if skipManifest && (name == ManifestName || name == manifestTempName) {
			continue
		}
		if !e.Type().IsRegular() {
			return nil, fmt.Errorf("%w: %s is not a regular file (%v)", ErrBadImage, filepath.Join(dir, name), e.Type())
		}
		if err := validName(name); err != nil {
			return nil, fmt.Errorf("%w: in %s: %v", ErrBadImage, dir, err)
		}
		names = append(names, name)
	}
	if len(names) > MaxFiles {
		return nil, fmt.Errorf("%w: %s holds %d files, limit %d", ErrBadImage, dir, len(names), MaxFiles)
	}
	return names, nil
}

// checksumFile returns the size and CRC-32C of the file at path, fsyncing it first
// if sync is set. A file over MaxFileBytes is an error wrapping ErrBadImage.
func checksumFile(path string, sync bool) (int64, uint32, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: %w", ErrBadImage, err)
	}
	defer f.Close()
	if sync {
		if err := f.Sync(); err != nil {
			return 0, 0, fmt.Errorf("fsync %s: %w", path, err)
		}
	}
	h := crc32.New(castagnoli)
	n, err := io.CopyBuffer(h, io.LimitReader(f, MaxFileBytes+1), make([]byte, copyBufferBytes))
	if err != nil {
		return 0, 0, fmt.Errorf("read %s: %w", path, err)
	}
	if n > MaxFileBytes {
		return 0, 0, fmt.Errorf("%w: %s is over %d bytes", ErrBadImage, path, MaxFileBytes)
	}
	return n, h.Sum32(), nil
}

// writeManifest writes m into dir as ManifestName atomically: a temporary file,
// fsynced, renamed into place, and the directory fsynced. A crash leaves either
// no manifest (or the old one) or the new one, never a torn one.
func writeManifest(dir string, m Manifest) error {
	tmp := filepath.Join(dir, manifestTempName)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	_, err = f.Write(EncodeManifest(m))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, ManifestName))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write manifest: %w", err)
	}
	return SyncDir(dir)
}

// SyncDir fsyncs the directory dir, making the creations, renames and removals of
// its entries durable.
func SyncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync dir: %w", err)
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
}

// CopyFiles puts the named files of directory src into directory dst, which must
// exist and hold none of them, then fsyncs every file and dst. Each file is
// hard-linked if the file system allows it and copied byte by byte otherwise.
//
// A hard link shares the file with src: use CopyFiles only when neither side
// will change the file in place afterwards (files that are only ever created
// whole, written once and renamed, as an LSM tree's tables are). Names must be
// valid image file names (see Manifest.Validate) and name regular files.
func CopyFiles(src, dst string, names []string) error {
	return copyFiles(src, dst, names, true)
}

// copyFiles is CopyFiles; without link every file is copied byte by byte.
func copyFiles(src, dst string, names []string, link bool) error {
	for _, name := range names {
		if err := validName(name); err != nil {
			return fmt.Errorf("%w: copy from %s: %v", ErrBadImage, src, err)
		}
	}
	for _, name := range names {
		from, to := filepath.Join(src, name), filepath.Join(dst, name)
		st, err := os.Lstat(from)
		if err != nil {
			return fmt.Errorf("copy: %w", err)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("%w: %s is not a regular file (%v)", ErrBadImage, from, st.Mode().Type())
		}
		linked := false
		if link {
			err := os.Link(from, to)
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("copy: %w", err)
			}
			linked = err == nil // otherwise (another device, no links) copy the bytes
		}
		if linked {
			err = syncFile(to)
		} else {
			err = copyFile(from, to, st.Mode().Perm())
		}
		if err != nil {
			return err
		}
	}
	return SyncDir(dst)
}

// copyFile copies the file from into the new file to and fsyncs it.
func copyFile(from, to string, perm fs.FileMode) error {
	in, err := os.Open(from)
	if err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	_, err = io.CopyBuffer(out, in, make([]byte, copyBufferBytes))
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("copy %s to %s: %w", from, to, err)
	}
	return nil
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("fsync: %w", err)
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return nil
}
