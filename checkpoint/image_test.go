package checkpoint

import (
	"bytes"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// writeFiles creates the named files in dir with the given contents.
func writeFiles(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func randomBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// sealedImage makes an image of three files (one empty) in a new directory.
func sealedImage(t *testing.T) (string, Manifest, map[string][]byte) {
	t.Helper()
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(1, 2))
	files := map[string][]byte{"empty": {}, "small.log": []byte("hello image"), "big.sst": randomBytes(rng, 100_003)}
	writeFiles(t, dir, files)
	m, err := Seal(dir, 3, 1234, []byte("sys"))
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	return dir, m, files
}

func TestSealOpenVerify(t *testing.T) {
	dir, m, files := sealedImage(t)
	if m.Group != 3 || m.Instance != 1234 || string(m.System) != "sys" || len(m.Files) != len(files) {
		t.Fatalf("manifest %+v", m)
	}
	for i, f := range m.Files {
		if i > 0 && m.Files[i-1].Name >= f.Name {
			t.Fatalf("files not sorted: %+v", m.Files)
		}
		if int64(len(files[f.Name])) != f.Size {
			t.Fatalf("%s: size %d, want %d", f.Name, f.Size, len(files[f.Name]))
		}
	}
	opened, err := OpenImage(dir)
	if err != nil {
		t.Fatalf("OpenImage: %v", err)
	}
	if opened.Instance != m.Instance || len(opened.Files) != len(m.Files) {
		t.Fatalf("OpenImage: %+v, sealed %+v", opened, m)
	}
	if err := VerifyImage(dir, opened); err != nil {
		t.Fatalf("VerifyImage: %v", err)
	}
	// Sealing again replaces the manifest and does not list it as a file.
	again, err := Seal(dir, 3, 1235, nil)
	if err != nil || len(again.Files) != len(files) || again.Instance != 1235 {
		t.Fatalf("second Seal: %v %+v", err, again)
	}
}

func TestVerifyImageDetectsDamage(t *testing.T) {
	dir, m, files := sealedImage(t)
	big := filepath.Join(dir, "big.sst")

	flipped := bytes.Clone(files["big.sst"])
	flipped[50_000] ^= 0x10
	writeFiles(t, dir, map[string][]byte{"big.sst": flipped})
	if _, err := OpenImage(dir); err != nil {
		t.Fatalf("OpenImage reads no data, so a flipped byte passes it: %v", err)
	}
	if err := VerifyImage(dir, m); !errors.Is(err, ErrBadImage) {
		t.Fatalf("flipped byte not detected: %v", err)
	}

	if err := os.Truncate(big, int64(len(flipped)-1)); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenImage(dir); !errors.Is(err, ErrBadImage) {
		t.Fatalf("OpenImage: truncated file not detected: %v", err)
	}
	if err := VerifyImage(dir, m); !errors.Is(err, ErrBadImage) {
		t.Fatalf("VerifyImage: truncated file not detected: %v", err)
	}

	if err := os.Remove(big); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenImage(dir); !errors.Is(err, ErrBadImage) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	if err := os.Mkdir(big, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenImage(dir); !errors.Is(err, ErrBadImage) {
		t.Fatalf("a directory in place of a file: %v", err)
	}

	if err := os.WriteFile(filepath.Join(dir, ManifestName), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenImage(dir); !errors.Is(err, ErrBadImage) || !errors.Is(err, ErrBadManifest) {
		t.Fatalf("garbage manifest: %v", err)
	}
	if _, err := OpenImage(t.TempDir()); !errors.Is(err, ErrBadImage) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("no manifest: %v", err)
	}
}

func TestSealRefusesNonRegularFiles(t *testing.T) {
	sub := t.TempDir()
	writeFiles(t, sub, map[string][]byte{"f": []byte("x")})
	if err := os.Mkdir(filepath.Join(sub, "nested"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Seal(sub, 0, 1, nil); !errors.Is(err, ErrBadImage) {
		t.Fatalf("subdirectory: %v", err)
	}
	link := t.TempDir()
	if err := os.Symlink("/etc/passwd", filepath.Join(link, "l")); err != nil {
		t.Skip("no symbolic links here")
	}
	if _, err := Seal(link, 0, 1, nil); !errors.Is(err, ErrBadImage) {
		t.Fatalf("symbolic link: %v", err)
	}
	if _, err := Seal(t.TempDir(), 0, 1, make([]byte, MaxSystemBytes+1)); !errors.Is(err, ErrBadManifest) {
		t.Fatalf("oversized system state: %v", err)
	}
	if _, err := os.Stat(filepath.Join(sub, ManifestName)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a failed Seal wrote a manifest: %v", err)
	}
}

func TestReadChunk(t *testing.T) {
	dir, m, files := sealedImage(t)
	index := map[string]uint32{}
	for i, f := range m.Files {
		index[f.Name] = uint32(i)
	}
	big := index["big.sst"]
	c, err := ReadChunk(dir, m, big, 65536, 65536)
	if err != nil || c.Offset != 65536 || !bytes.Equal(c.Data, files["big.sst"][65536:]) || c.CRC != c.Checksum() {
		t.Fatalf("last chunk: %v, %d bytes at %d", err, len(c.Data), c.Offset)
	}
	c, err = ReadChunk(dir, m, index["empty"], 0, 100)
	if err != nil || len(c.Data) != 0 || c.CRC != c.Checksum() {
		t.Fatalf("empty file: %v %+v", err, c)
	}
	bad := []struct {
		file uint32
		off  int64
		max  int
	}{
		{uint32(len(m.Files)), 0, 10}, {big, -1, 10}, {big, 100_003, 10}, {big, 0, 0}, {big, 0, MaxChunkBytes + 1},
		{index["empty"], 1, 10},
	}
	for _, b := range bad {
		if _, err := ReadChunk(dir, m, b.file, b.off, b.max); !errors.Is(err, ErrBadChunk) {
			t.Errorf("ReadChunk(%d, %d, %d) = %v", b.file, b.off, b.max, err)
		}
	}
	evil := m
	evil.Files = append([]FileInfo(nil), m.Files...)
	evil.Files[0].Name = "../../etc/passwd"
	if _, err := ReadChunk(dir, evil, 0, 0, 10); !errors.Is(err, ErrBadManifest) {
		t.Errorf("a name outside the image was read: %v", err)
	}
	if err := os.Truncate(filepath.Join(dir, "big.sst"), 1000); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadChunk(dir, m, big, 0, 65536); !errors.Is(err, ErrBadImage) {
		t.Errorf("short file: %v", err)
	}
}

func TestCopyFiles(t *testing.T) {
	src, m, files := sealedImage(t)
	names := make([]string, len(m.Files))
	for i, f := range m.Files {
		names[i] = f.Name
	}
	for _, link := range []bool{true, false} {
		dst := t.TempDir()
		if err := copyFiles(src, dst, names, link); err != nil {
			t.Fatalf("link %v: %v", link, err)
		}
		for name, data := range files {
			got, err := os.ReadFile(filepath.Join(dst, name))
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("link %v: %s: %v", link, name, err)
			}
		}
		if err := copyFiles(src, dst, names[:1], link); !errors.Is(err, fs.ErrExist) {
			t.Fatalf("link %v: copied over an existing file: %v", link, err)
		}
		if err := VerifyImage(dst, m); err != nil {
			t.Fatalf("link %v: the copy is no image: %v", link, err)
		}
	}
	if err := CopyFiles(src, t.TempDir(), []string{"../x"}); !errors.Is(err, ErrBadImage) {
		t.Fatalf("copied a name outside the directory: %v", err)
	}
	if err := CopyFiles(src, t.TempDir(), []string{"absent"}); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("copied a missing file: %v", err)
	}
	if err := SyncDir(filepath.Join(src, "absent")); err == nil {
		t.Fatal("SyncDir of a missing directory succeeded")
	}
}
