// Package kv is shardkv's storage and command layer: a key-value state machine for
// every Paxos group of a node, the encoding of the commands that go through the log,
// the stable key-to-group mapping, and a Client that turns operations into
// proposals. The RESP front end (package kv/server) and the binary (cmd/shardkv) sit
// on top of it.
//
// # Storage: one Pebble DB per node
//
// All groups of a node share one Pebble database (DataDir/kv, beside the engine's
// DataDir/log). One DB per node rather than one per group because a node runs tens
// to thousands of groups: per-group DBs would each carry their own WAL, memtables,
// compactions and file handles, and the WAL writes of groups executing in parallel
// would not share the commit pipeline. Every key starts with its group, so a group's
// whole state is one contiguous key span [group, group+1): it can be counted,
// deleted with one range tombstone, checkpointed (WithRestrictToSpans) and installed
// without touching other groups.
//
//	[group u32 BE] 'm'                               meta: applied instance, group clock
//	[group u32 BE] 'd' key                           data record
//	[group u32 BE] 'x' [deadline u64 BE] key         expiry index entry
//	ff ff ff ff 'f'                                  store format (version, groups, hash)
//
// Execute writes an instance's effects and the group's meta record (applied =
// inst+1) in one Pebble batch, so the data and Applied() can never disagree: after
// any crash, Applied() names exactly the first instance whose effects are missing,
// and the engine's replay applies every instance exactly once. The batch is
// committed without fsync: the chosen values are durable in the engine's log, and
// Pebble recovers a prefix of its WAL, so a crash only moves Applied() back and the
// replay fills the gap. Below the log's start (after the engine trimmed it at a
// checkpoint) the engine installs its local image instead; GroupSM.Checkpoint
// syncs the DB anyway, so a restart normally needs no install.
//
// # Commands and results
//
// A command is a version byte (CommandVersion) followed by the msgpack encoding of
// Command; a result is a version byte (ReplyVersion) followed by the msgpack
// encoding of Reply. Logical failures (not an integer, overflow, an undecodable
// command) are Replies with an error code, identical on every member; Execute
// returns an error only when storage fails, which stalls the group until it works
// (see package statemachine).
//
// # Time and expiry
//
// Execution never reads a clock. The proposing node stamps every command with its
// wall clock (Command.Now, unix ms) and turns relative expiries (SET EX, EXPIRE)
// into absolute deadlines before proposing. Each group keeps a clock in its meta
// record: the maximum Now of every command it executed, so time never goes
// backwards in a group's log even when proposers' clocks disagree. A key whose
// deadline is at or before that clock is absent for every command. Expired keys
// are removed deterministically, in the same batch as an instance: a write to an
// expired key replaces or deletes it, and every instance first sweeps up to
// sweepMax entries of the group's expiry index whose deadline has passed. An idle
// group keeps expired records on disk (invisible) until its next instance.
//
// # Key to group
//
// GroupOf maps a key to a group by FNV-1a 64 of the key bytes, modulo the number of
// groups. This mapping is part of the on-disk format: changing the hash or the
// number of groups would send keys to groups that do not hold them, so the store
// records both at creation and Open refuses a different group count
// (ErrFormatMismatch).
//
// # Reads
//
// Reads are linearizable by default (Client.readLinearizable): on the group's
// master, while its lease holds, the read runs locally inside node.LeaseRead with
// Store.ReadLocal, with no network round and no fsync; on any other member the read
// is a command in the log like a write, which the engine forwards to the master,
// and its result is what Execute computed at the read's position. Follower reads
// (ReadFollower) take node.ReadBarrier, a quorum round, and then read locally on
// any member. Stale reads (ReadStale) read the local state with no coordination,
// only when asked for by name. ReadLocal reads a Pebble snapshot, so reads may run
// concurrently with Execute and a multi-key read is atomic within its group.
//
// # Checkpoints
//
// Each GroupSM is a statemachine.Checkpointer, the "state machine offers its own
// snapshot" way of package statemachine: Checkpoint writes one file holding the
// group's key span read from a Pebble snapshot (the records of one group, not a
// copy of the DB) and syncs the WAL so the store is durable up to the image's
// instance; Install replaces the group's span with an image's records in one
// synced batch. checkpoint.go has the invariants, the file layout and why a Pebble
// checkpoint is not the image.
package kv
