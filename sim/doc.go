// Package sim is the deterministic simulation of whole clusters: 3 to 5 nodes, many
// groups each, all in one goroutine. One seed drives everything - the workload, the
// in-memory network's loss, duplication, delay (and so reordering) and partitions,
// each node's simulated disk (a write is lost in a crash unless an fsync covered
// it), crashes and restarts, and a virtual clock - so a run is a pure function of
// its seed and a failure replays exactly.
//
// The checker runs on every execution and at the end:
//   - agreement: no two members executed different values for a (group, instance);
//   - validity: every executed command was proposed;
//   - durability of acknowledgements: once faults heal, every acknowledged command
//     is executed on every live member at the instance its proposer reported;
//   - convergence: every member's per-group state digest is the same;
//   - reads: every lease read and read barrier sees every write acknowledged
//     before it began and never goes back in time (linearizability.go), and the
//     whole history of reads and writes is linearizable per group, as
//     github.com/anishathalye/porcupine checks it (porcupine.go, Options.Porcupine);
//   - leases: never two members whose master leases hold at the same real time.
//
// Test-only knobs (instance.Knobs) plant known bugs; the tests assert that the
// checker reports a violation for each within a seed budget, so the checker is
// known to bite.
package sim
