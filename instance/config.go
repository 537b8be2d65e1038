package instance

import (
	"errors"
	"fmt"

	"github.com/multipaxos/engine/ids"
)

// Config configures a Core. Durations are counted in ticks: the driver decides how
// long a tick is (the group package uses its TickInterval option).
type Config struct {
	// Self is this member's node ID.
	Self ids.NodeID
	// Members are the voting members of the group. A majority of them is a quorum.
	Members []ids.NodeID
	// Followers learn every chosen value (they take Accepts and Chosen like a
	// voter) but never vote: their promises and accepts are not counted, and they
	// never propose. Disjoint from Members.
	Followers []ids.NodeID
	// PrepareTimeoutTicks is how long a proposer waits for a quorum of promises
	// before it retries with a higher ballot. Default 20.
	PrepareTimeoutTicks int
	// AcceptTimeoutTicks is how long a proposer waits for a quorum of Accepted
	// before it retries with phase 1. Default 20.
	AcceptTimeoutTicks int
	// RetryJitterTicks bounds the random wait (1..RetryJitterTicks ticks) after a
	// rejection before a proposer retries, so that duelling proposers drift apart.
	// Default 4.
	RetryJitterTicks int
	// LearnTimeoutTicks is how long a learner waits for an answer to a learn
	// request before it asks again. Default 10.
	LearnTimeoutTicks int
	// StatusIntervalTicks is the period of the Status probe that lets a member that
	// fell behind in an idle group notice it; a random jitter of up to half the
	// period is added. 0 selects the default, 100; negative disables the probe.
	StatusIntervalTicks int
	// Seed seeds the jitter. Two cores with the same Config and inputs behave
	// identically.
	Seed uint64
	// Knobs plant known bugs for the simulation to find. Never set them in
	// production.
	Knobs Knobs
}

// Knobs are test-only switches that plant protocol bugs the simulation must detect.
// Each names the rule it breaks.
type Knobs struct {
	// InferChosenFromNext marks instance i chosen when a Prepare or Accept for i+1
	// arrives with the ballot the acceptor accepted at i, as PhxPaxos does. It also
	// gives the proposer PhxPaxos's fast-path rule - keep it until a peer rejects
	// it, even after advancing without an own majority (no QRULE) or seeing a
	// higher ballot - because with our rules the inference is sound (the SPIN model
	// agrees: B3 with QRULE finds no violation).
	InferChosenFromNext bool
	// ForgetPromiseOnRestart loads a zero promise on restart (the promise is lost).
	ForgetPromiseOnRestart bool
	// ReplyBeforeDurable is read by the driver: it sends replies before the state
	// they promise is durable.
	ReplyBeforeDurable bool
	// LeaseReadAnywhere is read by the driver: it serves lease reads on any member
	// that has applied what it knows, lease or not (a stale read waiting to happen).
	LeaseReadAnywhere bool
	// ClaimWhileLeaseValid is read by the driver (group/lease.go): a member
	// ignores its view of another master's valid lease in its claim path - it
	// claims mastership while that lease holds (drive) and keeps a queued claim
	// that such a lease made stale (claimStale).
	ClaimWhileLeaseValid bool
}

// ErrInvalidConfig is wrapped by every error Config.Validate returns.
var ErrInvalidConfig = errors.New("instance: invalid config")

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.PrepareTimeoutTicks == 0 {
		c.PrepareTimeoutTicks = 20
	}
	if c.AcceptTimeoutTicks == 0 {
		c.AcceptTimeoutTicks = 20
	}
	if c.RetryJitterTicks == 0 {
		c.RetryJitterTicks = 4
	}
	if c.LearnTimeoutTicks == 0 {
		c.LearnTimeoutTicks = 10
	}
	if c.StatusIntervalTicks == 0 {
		c.StatusIntervalTicks = 100
	}
	return c
}

// Validate lists every violation in c; it does not fill defaults.
func (c Config) Validate() error {
	var errs []error
	if c.Self == 0 {
		errs = append(errs, fmt.Errorf("%w: Self is 0", ErrInvalidConfig))
	}
	seen := map[ids.NodeID]bool{}
	for _, m := range c.Members {
		if m == 0 {
			errs = append(errs, fmt.Errorf("%w: Members holds node 0", ErrInvalidConfig))
		}
		if seen[m] {
			errs = append(errs, fmt.Errorf("%w: Members holds node %d twice", ErrInvalidConfig, m))
		}
		seen[m] = true
	}
	for _, m := range c.Followers {
		if m == 0 || seen[m] {
			errs = append(errs, fmt.Errorf("%w: Followers holds node %d, zero or also listed", ErrInvalidConfig, m))
		}
		seen[m] = true
	}
	if len(c.Members) == 0 {
		errs = append(errs, fmt.Errorf("%w: Members is empty", ErrInvalidConfig))
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"PrepareTimeoutTicks", c.PrepareTimeoutTicks}, {"AcceptTimeoutTicks", c.AcceptTimeoutTicks},
		{"RetryJitterTicks", c.RetryJitterTicks}, {"LearnTimeoutTicks", c.LearnTimeoutTicks}} {
		if f.v < 1 {
			errs = append(errs, fmt.Errorf("%w: %s is %d, want >= 1", ErrInvalidConfig, f.name, f.v))
		}
	}
	return errors.Join(errs...)
}
