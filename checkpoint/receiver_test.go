package checkpoint

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

var seedFlag = flag.Uint64("checkpoint.seed", 0, "seed of TestTransferUnderFaults (0: a few random seeds)")

// transferSeeds returns the seeds to run: the flag's, or a few new ones.
func transferSeeds() []uint64 {
	if *seedFlag != 0 {
		return []uint64{*seedFlag}
	}
	base := uint64(time.Now().UnixNano())
	seeds := make([]uint64, 8)
	for i := range seeds {
		seeds[i] = base + uint64(i)
	}
	return seeds
}

// TestTransferUnderFaults sends an image made by Seal through a Receiver over a
// network that loses requests and answers, reorders, duplicates and corrupts
// chunks, and injects chunks nobody asked for. The result must be the image, byte
// for byte. Replay a failure with -checkpoint.seed=N.
func TestTransferUnderFaults(t *testing.T) {
	for _, seed := range transferSeeds() {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Logf("seed %d (replay with -checkpoint.seed=%d)", seed, seed)
			transferUnderFaults(t, seed)
		})
	}
}

func transferUnderFaults(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	chunkBytes := []int{3, 7, 64, 512, 4096}[rng.IntN(5)]
	src := t.TempDir()
	files := map[string][]byte{}
	for i := range 1 + rng.IntN(6) {
		var size int
		switch rng.IntN(4) {
		case 0:
			size = 0
		case 1:
			size = chunkBytes * (1 + rng.IntN(3)) // whole chunks only
		default:
			size = rng.IntN(20_000)
		}
		files[fmt.Sprintf("file-%d", i)] = randomBytes(rng, size)
	}
	writeFiles(t, src, files)
	m, err := Seal(src, 5, 77, []byte("sys"))
	if err != nil {
		t.Fatal(err)
	}
	image, err := OpenImage(src) // what the learner gets: the decoded manifest
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "receiving")
	rx, err := NewReceiver(dst, image, chunkBytes)
	if err != nil {
		t.Fatal(err)
	}
	const window = 8
	var (
		network  []Chunk
		corrupt  = map[int]bool{} // indexes in network of damaged chunks
		inFlight int
		stats    struct{ lost, corrupted, duplicated, injected, expired int }
	)
	send := func(c Chunk, bad bool) {
		corrupt[len(network)] = bad
		network = append(network, c)
	}
	for step := 0; !rx.Done(); step++ {
		if step > 1_000_000 {
			t.Fatalf("no end after %d steps", step)
		}
		for _, ref := range rx.Want(window - inFlight) {
			inFlight++
			if rng.IntN(10) == 0 {
				stats.lost++ // the request or its answer is lost
				continue
			}
			c, err := ReadChunk(src, m, ref.File, ref.Offset, chunkBytes)
			if err != nil {
				t.Fatalf("ReadChunk(%+v): %v", ref, err)
			}
			switch rng.IntN(12) {
			case 0:
				stats.corrupted++
				bad := c
				bad.Data = bytes.Clone(c.Data)
				if len(bad.Data) > 0 && rng.IntN(2) == 0 {
					bad.Data[rng.IntN(len(bad.Data))] ^= 1 << rng.IntN(8)
				} else {
					bad.CRC ^= 1 << rng.IntN(32)
				}
				send(bad, true)
			case 1:
				stats.duplicated++
				send(c, false)
				send(c, false)
			default:
				send(c, false)
			}
		}
		if rng.IntN(50) == 0 && len(image.Files) > 0 {
			f := uint32(rng.IntN(len(image.Files)))
			if size := image.Files[f].Size; size > 0 {
				off := int64(rng.IntN(int(size))) / int64(chunkBytes) * int64(chunkBytes)
				c, err := ReadChunk(src, m, f, off, chunkBytes)
				if err != nil {
					t.Fatal(err)
				}
				stats.injected++
				if err := rx.Put(c); err != nil && !errors.Is(err, ErrBadChunk) {
					t.Fatalf("unasked chunk: %v", err)
				}
			}
		}
		if len(network) == 0 {
			stats.expired++
			rx.Expire() // the timeout: whatever was asked is taken as lost
			inFlight = 0
			continue
		}
		// Deliver one chunk picked at random: the network reorders.
		i := rng.IntN(len(network))
		c, bad := network[i], corrupt[i]
		last := len(network) - 1
		network[i], corrupt[i] = network[last], corrupt[last]
		network, corrupt[last] = network[:last], false
		err := rx.Put(c)
		switch {
		case bad && !errors.Is(err, ErrBadChunk):
			t.Fatalf("corrupted chunk %d@%d accepted: %v", c.File, c.Offset, err)
		case !bad && err != nil:
			t.Fatalf("good chunk %d@%d refused: %v", c.File, c.Offset, err)
		case !bad:
			inFlight = max(0, inFlight-1)
		}
	}
	t.Logf("chunk size %d, %d files; faults %+v", chunkBytes, len(files), stats)
	if err := rx.Finish(); err != nil {
		t.Fatalf("Finish: %v", err)
	}
	got, err := OpenImage(dst)
	if err != nil {
		t.Fatalf("the received image does not open: %v", err)
	}
	if err := VerifyImage(dst, got); err != nil || got.Instance != 77 || string(got.System) != "sys" {
		t.Fatalf("received image %+v: %v", got, err)
	}
	for name, data := range files {
		b, err := os.ReadFile(filepath.Join(dst, name))
		if err != nil || !bytes.Equal(b, data) {
			t.Fatalf("%s differs: %v", name, err)
		}
	}
	if len(rx.Want(10)) != 0 {
		t.Fatal("a finished receiver still wants chunks")
	}
}

// receiveAll moves every chunk of the image in src to rx, in order, without faults.
func receiveAll(t *testing.T, rx *Receiver, src string, m Manifest, chunkBytes int) {
	t.Helper()
	for !rx.Done() {
		refs := rx.Want(4)
		if len(refs) == 0 {
			t.Fatal("not done and nothing wanted")
		}
		for _, ref := range refs {
			c, err := ReadChunk(src, m, ref.File, ref.Offset, chunkBytes)
			if err != nil {
				t.Fatal(err)
			}
			if err := rx.Put(c); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestFinishDetectsMismatch: chunks that each pass their checksum but do not
// make the file the manifest describes fail Finish with ErrBadImage; Abort then
// removes everything.
func TestFinishDetectsMismatch(t *testing.T) {
	src, m, _ := sealedImage(t)
	lying := m
	lying.Files = append([]FileInfo(nil), m.Files...)
	lying.Files[1].CRC ^= 1
	dst := filepath.Join(t.TempDir(), "rx")
	rx, err := NewReceiver(dst, lying, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if err := rx.Finish(); err == nil {
		t.Fatal("Finish before Done succeeded")
	}
	receiveAll(t, rx, src, m, 1000)
	if err := rx.Finish(); !errors.Is(err, ErrBadImage) {
		t.Fatalf("Finish: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dst, ManifestName)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a failed Finish wrote the manifest: %v", err)
	}
	rx.Abort()
	if _, err := os.Stat(dst); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Abort left the directory: %v", err)
	}
	if err := rx.Put(Chunk{}); err == nil {
		t.Fatal("Put after Abort succeeded")
	}
}

// TestReceiverRefusesMisfits: chunks that do not fit the manifest are refused
// with ErrBadChunk, asked for again, and the transfer still completes.
func TestReceiverRefusesMisfits(t *testing.T) {
	src, m, _ := sealedImage(t)
	dst := filepath.Join(t.TempDir(), "rx")
	if _, err := NewReceiver(dst, m, 0); !errors.Is(err, ErrBadConfig) {
		t.Fatalf("chunk size 0: %v", err)
	}
	if _, err := NewReceiver(dst, Manifest{Files: []FileInfo{{Name: ".."}}}, 10); !errors.Is(err, ErrBadManifest) {
		t.Fatalf("bad manifest: %v", err)
	}
	rx, err := NewReceiver(dst, m, 1000)
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Abort()
	if _, err := NewReceiver(dst, m, 1000); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("a second receiver in the same directory: %v", err)
	}
	big := uint32(0) // "big.sst" sorts first
	if m.Files[big].Name != "big.sst" {
		t.Fatalf("files %+v", m.Files)
	}
	refs := rx.Want(2)
	if len(refs) != 2 || refs[0] != (ChunkRef{big, 0}) || refs[1] != (ChunkRef{big, 1000}) {
		t.Fatalf("Want: %+v", refs)
	}
	good, err := ReadChunk(src, m, big, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	misfits := map[string]Chunk{
		"short":      {File: big, Offset: 0, Data: good.Data[:999]},
		"unaligned":  {File: big, Offset: 1, Data: good.Data},
		"no file":    {File: 9, Offset: 0, Data: good.Data},
		"past end":   {File: big, Offset: 101_000, Data: good.Data},
		"negative":   {File: big, Offset: -1000, Data: good.Data},
		"not asked":  {File: big, Offset: 5000, Data: good.Data},
		"bad sum":    {File: big, Offset: 0, Data: good.Data, CRC: good.CRC + 1},
		"moved data": {File: big, Offset: 1000, Data: good.Data, CRC: good.CRC},
	}
	for _, name := range slices.Sorted(maps.Keys(misfits)) { // refusals queue chunks: keep their order fixed
		c := misfits[name]
		if name != "bad sum" && name != "moved data" {
			c.CRC = c.Checksum()
		}
		if err := rx.Put(c); !errors.Is(err, ErrBadChunk) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// The two asked chunks got bad answers ("bad sum" for 0, then "moved data" for
	// 1000): they are asked for first again, in that order.
	if refs := rx.Want(3); len(refs) != 3 || refs[0] != (ChunkRef{big, 0}) || refs[1] != (ChunkRef{big, 1000}) || refs[2] != (ChunkRef{big, 2000}) {
		t.Fatalf("Want after refusals: %+v", refs)
	}
	if err := rx.Put(good); err != nil {
		t.Fatal(err)
	}
	if err := rx.Put(good); err != nil {
		t.Fatalf("duplicate: %v", err)
	}
	rx.Expire()
	receiveAll(t, rx, src, m, 1000)
	if err := rx.Finish(); err != nil {
		t.Fatal(err)
	}
	if err := rx.Finish(); err != nil {
		t.Fatalf("second Finish: %v", err)
	}
	if err := VerifyImage(dst, m); err != nil {
		t.Fatal(err)
	}
}

// TestReceiverEmptyImage: an image without files is done at once.
func TestReceiverEmptyImage(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "a", "rx")
	rx, err := NewReceiver(dst, Manifest{Group: 1, Instance: 5}, 10)
	if err != nil {
		t.Fatal(err)
	}
	if !rx.Done() || len(rx.Want(5)) != 0 {
		t.Fatal("an empty image is not done")
	}
	if err := rx.Finish(); err != nil {
		t.Fatal(err)
	}
	if m, err := OpenImage(dst); err != nil || m.Instance != 5 {
		t.Fatalf("OpenImage: %+v %v", m, err)
	}
}
