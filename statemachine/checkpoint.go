package statemachine

import "github.com/multipaxos/engine/ids"

// # Checkpoints
//
// The engine keeps each group's log only down to a checkpoint: a consistent image
// of the state machine, as files in a directory, that holds the effects of every
// instance below some instance I and of none at or above it. Instances below I may
// be trimmed from the log; a member that needs them (far behind, or new) is sent the
// image instead and installs it, then learns the log from I on. A state machine
// that gives the engine no way to make an image keeps its whole log forever.
//
// There are two ways to give the engine images.
//
// 1. The state machine offers its own snapshot: it implements Checkpointer. This
// suits a state machine kept in a database that can snapshot itself cheaply (a
// Pebble checkpoint hard-links its files; see package kv).
//
// 2. The library replays into a copy (PhxPaxos's ExecuteForCheckpoint): the live
// state machine implements only Installer, and the application gives the engine a
// CopyFactory. The engine keeps a second, independent copy of the state in a
// directory of its own and feeds it the chosen values in the background, behind the
// live one; an image is that directory's files, taken while the feeding pauses. The
// live state machine never stops for a checkpoint. This suits state machines that
// cannot snapshot themselves while they run (an in-memory map that is saved to one
// file, say): the copy only needs to be able to save itself.
//
// In both ways the images of one group must be interchangeable between members:
// the engine sends one member's image to another, whose Installer reads it.

// Installer is implemented by a state machine that can replace its whole state with
// a checkpoint image.
type Installer interface {
	// Install replaces the whole state with the image in dir and returns Applied()
	// afterwards: the image's instance. It must be atomic and durable: if it
	// returns an error, or the process crashes during it, the previous state is
	// intact or the new one is complete, never a mix. The engine calls it from the
	// group's apply context (never concurrently with Execute) and then goes on
	// executing from the returned instance. dir belongs to the engine: Install
	// must not keep references to its files after it returns (copy or hard-link
	// what it needs).
	Install(dir string) (ids.InstanceID, error)
}

// Checkpointer is implemented by a state machine that makes its own checkpoint
// images (the first way above).
type Checkpointer interface {
	Installer
	// Checkpoint writes a consistent image of the state as files into dir (which
	// exists and is empty) and returns its instance: the image holds the effects of
	// every instance below it and of none above. The engine fsyncs the files and
	// keeps the image until it has a newer one; it trims its log below the image,
	// and if after a crash Applied() is below the log's start, it installs this
	// image before replaying the log, so the live state need not be durable. The
	// engine calls Checkpoint from a background goroutine, concurrently with
	// Execute on the group's apply context; only regular files directly in dir
	// are transferred.
	Checkpoint(dir string) (ids.InstanceID, error)
}

// Copy is the checkpoint copy of one group's state machine (the second way above):
// a state machine of its own whose state lives in files in one directory.
type Copy interface {
	StateMachine
	// Flush makes the effects of every instance executed so far durable in the
	// copy's directory, as regular files directly in it, so that they form an image
	// of instance Applied(). The engine calls it with Execute paused and copies the
	// files before Execute runs again.
	Flush() error
	// Close releases the copy; the engine may then replace its directory's files
	// (with an image it installed from another member) and open it again.
	Close() error
}

// CopyFactory opens the checkpoint copy of group g whose state lives in dir,
// creating an empty state if dir holds none. Its Applied() says where the engine
// resumes feeding it.
type CopyFactory func(g ids.GroupID, dir string) (Copy, error)
