// Package logstore is the durable log of every Paxos group on a node: each
// group's acceptor header (promised ballot, chosen point, trim point) and the
// record of each instance (accepted or chosen ballot and value), all in one
// Pebble DB per node (DESIGN.md section 6). Records carry a CRC-32C checksum; a
// damaged record reads as ErrCorrupt, never as data. keys.go holds the key
// layout, records.go the record codec.
//
// Two implementations share the Store interface: PebbleStore for real nodes, and
// MemStore, a deterministic in-memory model of a disk that loses unsynced writes,
// for the single-goroutine cluster simulation. MemStore stores the same encoded
// records, so checksums are exercised there too.
//
// # Group commit
//
// The invariant: an acceptor replies to Prepare or Accept only once its new
// state is durable (DESIGN.md 5.2). Commit's done(nil) for a Sync batch is that
// signal, so done runs only after a WAL fsync that covers the batch. Two more
// promises hold: done runs in submission order, and batches are applied in
// submission order, so a later write to a key (a raised promise) always wins
// over an earlier one.
//
// The obvious design is for each group to write its records with
// db.Set(key, value, pebble.Sync): one fsync per write. An fsync costs 0.2 to 2
// ms on the disks we run on, so the whole node, however many groups it hosts,
// would make a few hundred to a few thousand acceptor steps per second. Pebble's
// commit pipeline does merge concurrent Sync commits into one WAL fsync, but only
// as far as there are goroutines blocked in Commit at the same time, one per
// write in flight; the network event loop, which produces most writes, must
// never block at all, and every small commit still pays pebble's per-batch work
// (a sequence number, a WAL record, a memtable insert).
//
// So writes from all groups go through one queue and share fsyncs:
//
//  1. Commit puts the batch and its done in a queue and returns. The queue is
//     bounded in bytes (Options.CommitQueueBytesMax); beyond it Commit waits,
//     which is the back-pressure a too-fast producer needs.
//  2. The committer goroutine waits until fewer than
//     Options.CommitPipelineDepth batches await their fsync (by default: until
//     the previous fsync is done), so that everything that queued up during that
//     fsync is there to share the next one. It yields once, letting the writers
//     just woken by callbacks enqueue, and takes everything queued, up to
//     Options.CommitBatchBytesMax.
//  3. It encodes all of it straight into ONE pebble batch and applies that batch
//     with pebble.Sync if any of its Commits asked for Sync, using
//     DB.ApplyNoSyncWait: the batch is in the WAL buffer and visible to reads, and
//     the fsync runs in pebble's WAL flusher. A Sync batch without writes gets an
//     empty WAL record, so it still waits for an fsync: a barrier.
//  4. The completer goroutine waits for the batch's fsync (Batch.SyncWait), frees
//     its pipeline slot and then calls its done callbacks, in order.
//
// Why one committer and not two or more applying in parallel: pebble assigns
// sequence numbers in the order batches reach its commit pipeline, and two
// goroutines calling Apply race for that order, so a stale promise could be
// applied after a newer one. Splitting the ordered apply (committer) from the
// fsync wait and callbacks (completer) keeps the order and still lets callbacks
// run while the next batch is built. BenchmarkGroupCommit measured, on the
// 2-vCPU dev box with 64 writers waiting for their commits: about 160,000
// commits/s at 55 writes per fsync with depth 1, the same throughput at 30 per
// fsync with depth 2 (an fsync taking about 175 us; one writer alone gets one
// commit per fsync). Taking the queue before waiting for the slot gave about 22
// per fsync; pebble's WALMinSyncInterval pause cost throughput, so it is not used.
// ApplyNoSyncWait is marked experimental in pebble; the version is pinned in
// go.mod and TestPebbleFsyncFailure checks the durability contract through it.
//
// Trim goes through the same queue, as a batch of its own (one DeleteRange and
// the raised trim record, synced), so it is ordered with the commits around it.
//
// # Visible before durable
//
// Reads see a batch as soon as it is applied, before its fsync, as in Pebble.
// Nothing may be sent on the strength of a read: replies wait for done.
//
// # Failures
//
// A failed WAL write or fsync is fatal (fail-stop). After a failed fsync the
// kernel may have dropped the dirty pages and report the next fsync as a
// success, so retrying could report lost data as durable. The store records the
// error; the failing batch and every later one get an error wrapping ErrFatal,
// reads fail with it too, and the process must restart and recover from the WAL,
// which holds exactly what was durable. Pebble reports such errors through
// Logger.Fatalf and expects it not to return; see pebbleLogger for how that is
// turned into ErrFatal on the commit path.
package logstore
