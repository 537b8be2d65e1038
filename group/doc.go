// Package group runs one member's part in one Paxos group: it drives the pure
// protocol core (package instance) - persisting what the core hands out before the
// replies that depend on it, sending, applying chosen values to the state machine
// in order - and owns everything around it that needs time or I/O: batching
// proposals into instance values, the master lease and forwarding to the master,
// lease reads and read barriers, membership changes, and the proposals' results.
//
// A Replica is single-threaded and starts no goroutine; the node package runs many
// of them on a worker pool, the simulation (package sim) runs whole clusters of
// them in one goroutine from one seed.
//
// # Clock assumption
//
// The master lease is the only thing that reads a clock (Config.Clock). Each
// member's clock must be monotonic and run at a rate within Config.ClockDrift of
// real time (Go's time.Now carries a monotonic reading, so wall-clock steps and NTP
// slews of the wall clock do not matter). Under that assumption a master's lease
// ends, in real time, before any other member's view of it ends, so two members
// never hold the lease at once and lease reads are linearizable. Nothing else is
// assumed about time: delays only make views more conservative. ReadBarrier needs
// no clock at all. See the essay on masterLease (lease.go).
package group
