// Package instance is the Paxos protocol of one group as a pure, deterministic state
// machine: the acceptor, the proposer and the learner of the group's serial
// instances. It owns no goroutine, clock, randomness source or I/O. A driver feeds it
// messages (Step), logical clock ticks (Tick) and proposals (Propose), and takes back
// one Ready at a time: what to persist, what to send and what was chosen. The group
// package is that driver; the cluster simulation drives it too, which is why every
// rule below can be checked deterministically from one seed.
//
// # Serial instances
//
// A group's log is a sequence of instances 0, 1, 2, ... and each chooses one value by
// single-decree Paxos. A member works on instance i+1 only once it knows the value
// chosen at i (Core.Next is the first instance it does not know). Only one instance
// per group is in flight: throughput comes from batching inside an instance and from
// many groups, not from pipelining (DESIGN.md 5.1).
//
// # The acceptor and what it persists before it replies
//
// The acceptor keeps one promised ballot for the whole group and an accepted
// (ballot, value) for its current instance only. A Prepare(i, b) is promised iff i is
// the current instance and b is strictly above the promise; an Accept(i, b, v) is
// taken iff b is not below the promise, and taking it raises the promise to b. When
// the acceptor moves to the next instance the accepted pair is dropped but the promise
// is carried over: a promise covers its instance and every later one. That carried
// promise is what lets a proposer that won phase 1 skip it for later instances (the
// Multi-Paxos fast path) - any quorum that could accept something at i+1 below b has
// promised b and will reject it.
//
// Every change of acceptor state is reported in Ready.HardState and Ready.Entries,
// and the replies that depend on it are in Ready.Messages: the driver must make the
// former durable before it sends any of the latter. Learning a chosen value never
// lowers the promise (the SPIN model in ../shared/spec finds a split decision within
// 23 steps if it does).
//
// # The proposer and the fast path
//
// Propose starts a value at the current instance. Without a standing phase 1 the
// proposer picks a ballot above everything it has seen and above its own acceptor's
// promise, has its own acceptor promise it (durably, before the Prepare leaves: after
// a restart the proposer starts above that promise, so it can never reuse a ballot
// with another value), and collects a majority of promises, adopting the value of the
// highest accepted ballot reported. Then it sends Accept. A majority of Accepted for
// (instance, ballot) chooses the value; the proposer broadcasts Chosen(instance,
// ballot, checksum), and a member that accepted that same ballot with a matching
// checksum marks the instance chosen without receiving the value again. A member that
// did not learns the value from a member that holds it as chosen.
//
// After its own majority chose its ballot at instance i, the proposer keeps its phase
// 1 and sends Accept(i+1) directly. If it moves past i any other way (someone else's
// value, a Chosen it did not cause, the learner) it runs phase 1 again before its
// next Accept (QRULE in the model). Any rejection naming a higher ballot, even a late
// one about an older instance, also ends the fast path, or a proposer whose Accepts
// are ignored would be stuck forever.
//
// A member never infers that instance i was chosen from a message about instance i+1
// (PhxPaxos does; its own reading notes call it unsafe, and the model finds a split
// decision in 15 steps without QRULE). Knobs.InferChosenFromNext plants exactly that
// bug for the simulation to find.
//
// # Catch-up
//
// Every message carries the sender's Next. A member that sees a peer ahead asks it to
// teach (MsgLearnReq); the driver, which can read the log, answers with chosen values
// (MsgLearnValues) and the learner applies them strictly in instance order. A periodic
// MsgStatus lets a member that restarted while the group was idle find out it is
// behind. The full windowed learner is in package learner.
package instance
