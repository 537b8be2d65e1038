// Package checkpoint holds the building blocks of the engine's library-controlled
// checkpoints (DESIGN.md 5.7): checkpoint images on disk, their transfer in
// chunks to far-behind members, and the Replayer that keeps a checkpoint copy of a
// state machine fed in the background. It does the file work and the bookkeeping;
// the wire messages, the protocol that drives a transfer and the choice of when to
// make an image or trim the log belong to package group.
//
// # Images
//
// An image is a directory of regular files plus a manifest file (ManifestName)
// naming the group, the image's instance I (the files hold the effects of every
// instance below I and of none at or above it), the engine's own state at I (the
// System bytes, opaque here) and every file with its size and CRC-32C. Seal
// writes the manifest over a directory a state machine filled; OpenImage checks
// that the listed files are there with their sizes; VerifyImage also recomputes
// their checksums. The manifest is written last and atomically (temporary file,
// fsync, rename, fsync of the directory), so a directory with a manifest that
// decodes is an image whose files were durable before the manifest existed.
//
// Everything a manifest says is checked before it is used, whoever wrote it: the
// manifest comes over the network from another member, and its file names become
// paths on this one. A name is a single path element, so an image can never
// reach outside its directory.
//
// # Transfer
//
// A learner pulls an image from a teacher: it gets the manifest, then asks for
// chunks (file index, offset) of at most ChunkBytes, a few at a time. The teacher
// answers each with ReadChunk; each chunk carries a CRC-32C over its position and
// its data. The learner's Receiver checks every chunk against the manifest's
// geometry, writes it at its offset in a temporary directory (memory stays bounded
// by one chunk, whatever the image's size), and knows which chunks are still
// missing, which are asked for, and which must be asked for again after a loss or
// a corruption. Finish checks every whole file against the manifest, fsyncs, and
// writes the manifest, so the result is an image like any other.
//
// The obvious design is to stream every file in order over a connection and trust
// TCP. It was not taken because a transfer can be very long, the teacher serves
// many groups and learners through one event loop, and a message can be lost or
// damaged on any hop: the pull keeps the teacher stateless (each request is
// answered from the files alone) and lets the learner retry exactly what it lacks.
//
// # The Replayer
//
// A state machine that cannot snapshot itself while it runs gives the engine a
// statemachine.CopyFactory: the Replayer opens a second copy of the state in a
// directory of its own and feeds it the chosen values from the log in the
// background (PhxPaxos's ExecuteForCheckpoint). An image is that directory's files,
// taken while the feeding pauses; the live state machine never stops. See
// replayer.go for its invariants and its crash-safe Reset.
package checkpoint

import (
	"errors"
	"hash/crc32"
)

// Limits on what a manifest may describe. A manifest comes from another member,
// so each limit bounds what a bad or hostile peer can make this one allocate or
// write.
const (
	// ManifestName is the manifest's file name inside an image directory. No
	// image file may have it (or manifestTempName).
	ManifestName = "MANIFEST.checkpoint"
	// MaxFiles is the most files an image may have.
	MaxFiles = 100000
	// MaxFileBytes is the largest size of one image file, in bytes (1 TiB).
	MaxFileBytes = int64(1) << 40
	// MaxNameBytes is the longest file name, in bytes (the common file system
	// limit for one path element).
	MaxNameBytes = 255
	// MaxSystemBytes bounds Manifest.System, in bytes (1 MiB).
	MaxSystemBytes = 1 << 20
	// MaxChunkBytes bounds the data of one chunk, in bytes (64 MiB).
	MaxChunkBytes = 64 << 20
)

// manifestTempName is where Seal and Finish write the manifest before renaming it
// into place; a crash may leave it behind, so it is no valid file name either.
const manifestTempName = ManifestName + ".tmp"

var (
	// ErrBadManifest is wrapped by every failure to decode or validate a manifest.
	ErrBadManifest = errors.New("checkpoint: bad manifest")
	// ErrBadImage is wrapped when an image directory does not match its manifest
	// (a file missing, of the wrong size or checksum, or not a regular file) or
	// cannot be sealed as one.
	ErrBadImage = errors.New("checkpoint: bad image")
	// ErrBadChunk is wrapped when a chunk does not decode, fails its checksum, or
	// is not one the receiver asked for; and when a chunk request names no chunk
	// of the image.
	ErrBadChunk = errors.New("checkpoint: bad chunk")
	// ErrBadConfig is wrapped by NewReplayer and NewReceiver for a configuration
	// they cannot use.
	ErrBadConfig = errors.New("checkpoint: bad configuration")
	// ErrClosed is returned by a Replayer after Close.
	ErrClosed = errors.New("checkpoint: replayer closed")
)

// castagnoli is the CRC-32C table every checksum of this package uses.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)
