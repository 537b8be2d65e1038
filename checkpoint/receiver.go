package checkpoint

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
)

// Receiver assembles an image from chunks in a temporary directory.
//
// Every chunk of the image (each file cut at multiples of the chunk size; an empty
// file is one empty chunk) is in exactly one of four states:
//
//   - not asked yet: at or after next, in file then offset order;
//   - asked: returned by Want and not received since (in asked);
//   - to ask again: asked, then forgotten by Expire or refused by Put (in again);
//   - received: before next and in neither set.
//
// So the receiver's memory is the chunks in flight, not the image's size, and
// Want hands out the chunks to ask again first, then new ones in order. Every
// order it produces is deterministic (no map iteration), which the cluster
// simulation relies on. Chunks are written to their files at their offsets as
// they come; nothing of a file is held in memory.
//
// A Receiver is safe for use from several goroutines, though a transfer is
// normally driven from one.
type Receiver struct {
	dir        string
	m          Manifest
	chunkBytes int64

	mu sync.Mutex
	// The fields below are guarded by mu.
	next       ChunkRef              // first chunk never asked for; File == len(m.Files) once all were
	asked      map[ChunkRef]struct{} // asked for, not received
	again      map[ChunkRef]struct{} // to ask for again
	againOrder []ChunkRef            // again's refs in the order to ask; may hold refs no longer in again
	open       *os.File              // the file last written, kept open for the next chunk
	openIndex  uint32                // open's index in m.Files
	finished   bool                  // Finish succeeded
	aborted    bool
}

// NewReceiver starts receiving the image m into tmpDir, which it creates (its
// parent too, if missing) and which must not exist. chunkBytes is the transfer's
// chunk size, 1 .. MaxChunkBytes: the teacher must be asked for chunks of exactly
// that many bytes. An invalid m wraps ErrBadManifest, a bad chunkBytes
// ErrBadConfig.
func NewReceiver(tmpDir string, m Manifest, chunkBytes int) (*Receiver, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	if chunkBytes <= 0 || chunkBytes > MaxChunkBytes {
		return nil, fmt.Errorf("%w: chunk size %d out of 1..%d", ErrBadConfig, chunkBytes, MaxChunkBytes)
	}
	if err := os.MkdirAll(filepath.Dir(tmpDir), 0o755); err != nil {
		return nil, fmt.Errorf("receive image: %w", err)
	}
	if err := os.Mkdir(tmpDir, 0o755); err != nil {
		return nil, fmt.Errorf("receive image: %w", err)
	}
	return &Receiver{
		dir:        tmpDir,
		m:          m,
		chunkBytes: int64(chunkBytes),
		asked:      make(map[ChunkRef]struct{}),
		again:      make(map[ChunkRef]struct{}),
	}, nil
}

// Dir returns the directory the image is assembled in.
func (r *Receiver) Dir() string { return r.dir }

// Manifest returns the manifest of the image being received.
func (r *Receiver) Manifest() Manifest { return r.m }

// Want returns up to max chunks to ask the teacher for, and counts them as asked:
// first the ones to ask again, then ones never asked, in order. It returns none
// for max <= 0, once everything was asked, or after Finish or Abort.
func (r *Receiver) Want(max int) []ChunkRef {
	r.mu.Lock()
	defer r.mu.Unlock()
	if max <= 0 || r.finished || r.aborted {
		return nil
	}
	var out []ChunkRef
	for len(out) < max && len(r.againOrder) > 0 {
		ref := r.againOrder[0]
		r.againOrder = r.againOrder[1:]
		if _, ok := r.again[ref]; !ok {
			continue // received after it was queued again
		}
		delete(r.again, ref)
		r.asked[ref] = struct{}{}
		out = append(out, ref)
	}
	if len(r.again) == 0 {
		r.againOrder = nil // drop stale refs and the backing array
	}
	for len(out) < max && int(r.next.File) < len(r.m.Files) {
		ref := r.next
		r.advanceNextLocked()
		r.asked[ref] = struct{}{}
		out = append(out, ref)
	}
	return out
}

// advanceNextLocked moves next to the chunk after it.
func (r *Receiver) advanceNextLocked() {
	r.next.Offset += r.chunkBytes
	if r.next.Offset >= r.m.Files[r.next.File].Size {
		r.next = ChunkRef{File: r.next.File + 1}
	}
}

// Expire forgets the chunks asked for and not received, so that Want returns them
// again: the requests or their answers are taken as lost. A chunk that still
// comes before it is asked again is accepted.
func (r *Receiver) Expire() {
	r.mu.Lock()
	defer r.mu.Unlock()
	lost := make([]ChunkRef, 0, len(r.asked))
	for ref := range r.asked {
		lost = append(lost, ref)
	}
	slices.SortFunc(lost, compareRefs)
	for _, ref := range lost {
		delete(r.asked, ref)
		r.askAgainLocked(ref)
	}
}

func compareRefs(a, b ChunkRef) int {
	return cmp.Or(cmp.Compare(a.File, b.File), cmp.Compare(a.Offset, b.Offset))
}

func (r *Receiver) askAgainLocked(ref ChunkRef) {
	if _, ok := r.again[ref]; !ok {
		r.again[ref] = struct{}{}
		r.againOrder = append(r.againOrder, ref)
	}
}

// Put checks chunk c and writes it into its file. A chunk that fails its
// checksum, does not fit the manifest (file out of range, offset not a multiple
// of the chunk size or outside the file, a length other than min(chunk size,
// size - offset)) or was never asked for is refused with an error wrapping
// ErrBadChunk; if it was asked for, it is asked for again. A duplicate of a chunk
// already received is ignored (nil). The receiver stays usable after any error.
func (r *Receiver) Put(c Chunk) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.finished || r.aborted {
		return errors.New("checkpoint: receiver finished or aborted")
	}
	ref := ChunkRef{File: c.File, Offset: c.Offset}
	if err := r.checkChunkLocked(c); err != nil {
		if _, ok := r.asked[ref]; ok {
			delete(r.asked, ref)
			r.askAgainLocked(ref)
		}
		return err
	}
	_, wasAsked := r.asked[ref]
	_, wasAgain := r.again[ref]
	switch {
	case wasAsked:
		delete(r.asked, ref)
	case wasAgain:
		delete(r.again, ref)
	case compareRefs(ref, r.next) < 0:
		return nil // received before: a duplicate
	default:
		return fmt.Errorf("%w: chunk %d@%d was not asked for", ErrBadChunk, c.File, c.Offset)
	}
	if err := r.writeLocked(c); err != nil {
		r.askAgainLocked(ref)
		return err
	}
	return nil
}

// checkChunkLocked checks c's checksum and its fit with the manifest.
func (r *Receiver) checkChunkLocked(c Chunk) error {
	if got := c.Checksum(); got != c.CRC {
		return fmt.Errorf("%w: chunk %d@%d: checksum 0x%08x, computed 0x%08x", ErrBadChunk, c.File, c.Offset, c.CRC, got)
	}
	if uint64(c.File) >= uint64(len(r.m.Files)) {
		return fmt.Errorf("%w: file %d of an image of %d files", ErrBadChunk, c.File, len(r.m.Files))
	}
	size := r.m.Files[c.File].Size
	if c.Offset < 0 || c.Offset%r.chunkBytes != 0 || c.Offset > size || (c.Offset == size && size > 0) {
		return fmt.Errorf("%w: chunk %d@%d: offset not a chunk of a file of %d bytes", ErrBadChunk, c.File, c.Offset, size)
	}
	if want := min(r.chunkBytes, size-c.Offset); int64(len(c.Data)) != want {
		return fmt.Errorf("%w: chunk %d@%d: %d bytes, expected %d", ErrBadChunk, c.File, c.Offset, len(c.Data), want)
	}
	return nil
}

// writeLocked writes c's data at its offset, creating the file on its first chunk
// (an empty file's only chunk creates it).
func (r *Receiver) writeLocked(c Chunk) error {
	if r.open == nil || r.openIndex != c.File {
		if err := r.closeOpenLocked(); err != nil {
			return err
		}
		path := filepath.Join(r.dir, r.m.Files[c.File].Name)
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
		if err != nil {
			return fmt.Errorf("receive image: %w", err)
		}
		r.open, r.openIndex = f, c.File
	}
	if _, err := r.open.WriteAt(c.Data, c.Offset); err != nil {
		return fmt.Errorf("receive image: %w", err)
	}
	return nil
}

func (r *Receiver) closeOpenLocked() error {
	if r.open == nil {
		return nil
	}
	err := r.open.Close()
	r.open = nil
	if err != nil {
		return fmt.Errorf("receive image: %w", err)
	}
	return nil
}

// Done reports whether every chunk was received.
func (r *Receiver) Done() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.doneLocked()
}

func (r *Receiver) doneLocked() bool {
	return int(r.next.File) >= len(r.m.Files) && len(r.asked) == 0 && len(r.again) == 0
}

// Finish completes a transfer that is Done: it checks every file's size and
// whole-file CRC-32C against the manifest, fsyncs every file and the directory,
// and writes the manifest into it, so that OpenImage accepts the directory. A
// file that does not match fails with an error wrapping ErrBadImage: the caller
// then Aborts and starts over. Finish reads every file once, so it belongs off
// any latency-sensitive goroutine.
func (r *Receiver) Finish() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.aborted {
		return errors.New("checkpoint: receiver aborted")
	}
	if r.finished {
		return nil
	}
	if !r.doneLocked() {
		return errors.New("checkpoint: image transfer not complete")
	}
	if err := r.closeOpenLocked(); err != nil {
		return err
	}
	for _, f := range r.m.Files {
		path := filepath.Join(r.dir, f.Name)
		size, crc, err := checksumFile(path, true)
		if err != nil {
			return err
		}
		if size != f.Size || crc != f.CRC {
			return fmt.Errorf("%w: received %s has %d bytes with CRC 0x%08x, the manifest says %d with 0x%08x",
				ErrBadImage, path, size, crc, f.Size, f.CRC)
		}
	}
	if err := SyncDir(r.dir); err != nil {
		return err
	}
	if err := writeManifest(r.dir, r.m); err != nil {
		return err
	}
	r.finished = true
	return nil
}

// Abort stops the transfer: it closes the open file and removes the directory
// with everything received. The Receiver is unusable afterwards.
func (r *Receiver) Abort() {
	r.mu.Lock()
	defer r.mu.Unlock()
	_ = r.closeOpenLocked()
	r.aborted = true
	_ = os.RemoveAll(r.dir)
}
