package instance

import (
	"bytes"
	"errors"
	"fmt"
	"slices"

	"github.com/multipaxos/engine/ids"
)

// ErrProposalInFlight is returned by Propose while an earlier proposal of this core
// has not yet ended (serial instances: one in flight per group).
var ErrProposalInFlight = errors.New("instance: a proposal is already in flight")

// ErrNotMember is returned by Propose on a core whose Self is not a voting member.
var ErrNotMember = errors.New("instance: not a voting member of the group")

// ErrNotVoter is returned by Step for a protocol message from a node that is not a
// voter in this member's configuration (or to a member that is not one itself). It
// is normal around membership changes, while members learn the change at different
// times: the message is dropped and the sender retries or learns.
var ErrNotVoter = errors.New("instance: message from or to a non-voter")

// Recovered is the durable state a Core starts from (see logstore).
type Recovered struct {
	HardState HardState
	// Accepted is the record at HardState.Next, if the acceptor had accepted a
	// value there before it stopped (zero Ballot: none).
	Accepted Entry
}

// Stats counts protocol events of one core since it was created.
type Stats struct {
	PreparesStarted uint64 // phase 1 rounds begun by this proposer
	FastAccepts     uint64 // phase 2 rounds begun without a phase 1 (fast path)
	ProposerWins    uint64 // instances this proposer got chosen under its ballot
	Rejections      uint64 // rejections received by this proposer
	Learned         uint64 // instances learned from MsgLearnValues
}

// Core is the protocol state of one member of one group. It is not safe for
// concurrent use; the driver serializes every call.
//
// Invariants (checked by tests, and by assertions where cheap):
//   - hs.Promised never decreases;
//   - accepted is zero or accepted <= hs.Promised;
//   - the proposer's instance equals hs.Next while a proposal is in flight.
type Core struct {
	cfg    Config
	quorum int
	rng    uint64

	// Acceptor. hs is the in-memory hard state; hsDirty says it changed since the
	// last Ready. accepted/acceptedValue belong to instance hs.Next only.
	hs            HardState
	hsDirty       bool
	accepted      ids.Ballot
	acceptedValue []byte
	// futureAccept is an Accept for Next+1 that arrived before this member knew
	// Next chosen; it is stepped once Next moves there.
	futureAccept *Message

	p proposer

	// Learner: the highest Next seen from any member and from each, the member
	// asked to teach (preferred: teacherHint, the master), how often in a row it
	// was asked without an answer, and ticks left before an unanswered learn
	// request goes to the next member ahead (0: none outstanding).
	highestSeen ids.InstanceID
	peerNext    map[ids.NodeID]ids.InstanceID
	teacher     ids.NodeID
	teacherHint ids.NodeID
	learnTries  int
	learnWait   int
	statusWait  int

	// abstain: this member votes in nothing and proposes nothing, as if it
	// were a follower, while its store may have forgotten promises it gave (a
	// wiped disk under an old node ID; the node decides, see SetAbstain).
	abstain bool

	rd    Ready
	stats Stats
}

type phase uint8

const (
	phaseIdle phase = iota
	phasePreparing
	phaseAccepting
)

// proposer is the proposer's state. own is the caller's value; value is the one in
// phase 2 (own, or adopted from the highest accepted ballot phase 1 reported).
type proposer struct {
	phase    phase
	ballot   ids.Ballot
	prepared bool // phase 1 for ballot stands and nobody rejected it since: fast path
	won      bool // its own quorum chose the current instance under ballot (QRULE)
	instance ids.InstanceID
	own      []byte
	value    []byte
	votes    []ids.NodeID
	best     Entry // highest accepted (ballot, value) among the promises
	highest  ids.Ballot
	timer    int // ticks left before a retry with phase 1; 0 = no timer
}

// New returns a Core that resumes from rec. cfg is defaulted and validated.
func New(cfg Config, rec Recovered) (*Core, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Core{cfg: cfg, hs: rec.HardState, rng: cfg.Seed ^ uint64(cfg.Self)*0x9e3779b97f4a7c15 | 1,
		peerNext: map[ids.NodeID]ids.InstanceID{}}
	c.setMembers(cfg.Members, cfg.Followers)
	if cfg.Knobs.ForgetPromiseOnRestart {
		c.hs.Promised = ids.Ballot{}
	}
	if rec.Accepted.Instance == rec.HardState.Next && !rec.Accepted.Ballot.IsZero() {
		c.accepted, c.acceptedValue = rec.Accepted.Ballot, rec.Accepted.Value
		if c.hs.Promised.Less(c.accepted) && !cfg.Knobs.ForgetPromiseOnRestart {
			return nil, fmt.Errorf("instance: recovered accepted ballot %v above promise %v at instance %d",
				c.accepted, c.hs.Promised, c.hs.Next)
		}
	}
	// After a restart the proposer starts above every ballot its acceptor promised,
	// so it never reuses a ballot with another value.
	c.p.ballot = ids.Ballot{Number: c.hs.Promised.Number, Node: cfg.Self}
	c.highestSeen = c.hs.Next
	c.statusWait = c.statusPeriod()
	return c, nil
}

// Self is this member's node ID.
func (c *Core) Self() ids.NodeID { return c.cfg.Self }

// Next is the first instance this member does not know chosen.
func (c *Core) Next() ids.InstanceID { return c.hs.Next }

// Promised is the acceptor's promised ballot (in memory; durable once the Ready that
// carried it was persisted).
func (c *Core) Promised() ids.Ballot { return c.hs.Promised }

// HighestSeen is the highest Next any member reported.
func (c *Core) HighestSeen() ids.InstanceID { return c.highestSeen }

// ProposerIdle reports whether Propose may be called.
func (c *Core) ProposerIdle() bool { return c.p.phase == phaseIdle }

// FastPath reports whether the next Propose skips phase 1.
func (c *Core) FastPath() bool { return c.p.prepared }

// Ballot is the proposer's current ballot.
func (c *Core) Ballot() ids.Ballot { return c.p.ballot }

// Stats returns the counters of this core.
func (c *Core) Stats() Stats { return c.stats }

// IsMember reports whether n is a voting member. An abstaining member does not
// count itself as one.
func (c *Core) IsMember(n ids.NodeID) bool {
	return hasVote(c.cfg.Members, n) && !(c.abstain && n == c.cfg.Self)
}

// SetAbstain makes this member act as a follower of every configuration (on) or
// take its vote back up (off). A member whose store was created empty under a node
// ID that may have voted before abstains until it is known not to have: its
// promises and accepted values are gone, and a vote from it could break a quorum
// intersection. It still learns, and keeps what it is sent like a follower does;
// what it keeps was proposed by a legitimate proposer, so it may report it once it
// votes. The fast path is dropped either way.
func (c *Core) SetAbstain(on bool) {
	if c.abstain == on {
		return
	}
	c.abstain = on
	c.p.prepared = false
	if on {
		c.CancelProposal()
	}
}

// Abstaining reports whether SetAbstain(true) is in force.
func (c *Core) Abstaining() bool { return c.abstain }

// IsFollower reports whether n follows the group without voting.
func (c *Core) IsFollower(n ids.NodeID) bool { return hasVote(c.cfg.Followers, n) }

// Members returns the voting members (the caller must not modify the slice).
func (c *Core) Members() []ids.NodeID { return c.cfg.Members }

// SetMembers changes the group's voters and followers from instance Next on. The
// driver calls it when it learns that a membership change was chosen at Next-1, so
// each instance is decided under one configuration (serial instances make this safe
// without joint consensus). The fast path is dropped: the promise that allowed it
// was given by a quorum of the old configuration, so phase 1 runs again under the
// new one.
func (c *Core) SetMembers(voters, followers []ids.NodeID) error {
	cfg := c.cfg
	cfg.Members, cfg.Followers = voters, followers
	if err := cfg.Validate(); err != nil {
		return err
	}
	c.setMembers(voters, followers)
	c.p.prepared = false
	if !c.IsMember(c.cfg.Self) {
		c.CancelProposal()
	}
	return nil
}

func (c *Core) setMembers(voters, followers []ids.NodeID) {
	c.cfg.Members = append([]ids.NodeID(nil), voters...)
	c.cfg.Followers = append([]ids.NodeID(nil), followers...)
	c.quorum = len(voters)/2 + 1
}

// others calls fn for every voter and follower but Self: who learns each value.
func (c *Core) others(fn func(ids.NodeID)) {
	for _, m := range c.cfg.Members {
		if m != c.cfg.Self {
			fn(m)
		}
	}
	for _, m := range c.cfg.Followers {
		if m != c.cfg.Self {
			fn(m)
		}
	}
}

// HasReady reports whether Ready would return a non-empty Ready.
func (c *Core) HasReady() bool { return c.hsDirty || !c.rd.Empty() }

// Ready returns everything produced since the last call and resets it. The driver
// must handle it in the order documented on Ready before it asks for the next one.
func (c *Core) Ready() Ready {
	rd := c.rd
	c.rd = Ready{}
	if c.hsDirty {
		hs := c.hs
		rd.HardState = &hs
		c.hsDirty = false
	}
	return rd
}

// TakeUnpersisted returns the parts of the pending output that do not wait for
// persistence - SendNow, Committed and Teach - and leaves the rest for Ready. A
// driver whose previous persist is still in flight uses it to keep messages that
// depend on nothing durable (a proposer's Accepts, Chosen) and state machine work
// moving, instead of holding them behind an fsync.
func (c *Core) TakeUnpersisted() Ready {
	rd := Ready{SendNow: c.rd.SendNow, Committed: c.rd.Committed, Teach: c.rd.Teach}
	c.rd.SendNow, c.rd.Committed, c.rd.Teach = nil, nil, nil
	return rd
}

// Propose starts value at instance Next. The outcome shows in Ready.Committed: the
// instance is chosen with this value or with another one (then the caller proposes
// again). value must not be modified afterwards.
func (c *Core) Propose(value []byte) error {
	if c.p.phase != phaseIdle {
		return ErrProposalInFlight
	}
	if !c.IsMember(c.cfg.Self) {
		return ErrNotMember
	}
	c.p.own = value
	c.p.instance = c.hs.Next
	c.p.won = false
	if c.p.prepared {
		c.stats.FastAccepts++
		c.startAccept(value)
	} else {
		c.startPrepare()
	}
	return nil
}

// CancelProposal stops the proposal in flight, if any: no more retries or Accepts
// from this proposer for it. Values it already got accepted stay where they are and
// may still be chosen (another proposer's phase 1 adopts them), so the caller learns
// the instance's outcome as usual, from Committed. The fast path is dropped, so the
// next proposal runs phase 1 again.
func (c *Core) CancelProposal() {
	p := &c.p
	if p.phase == phaseIdle {
		return
	}
	p.phase, p.own, p.value, p.timer, p.prepared = phaseIdle, nil, nil, 0, false
	p.votes = p.votes[:0]
}

// Busy reports whether the core has a timer running: a proposal in flight or an
// unanswered learn request. An idle core needs no ticks (the driver may stop
// ticking it, which is what keeps thousands of idle groups cheap).
func (c *Core) Busy() bool { return c.p.phase != phaseIdle || c.learnWait > 0 }

// AcceptedAtNext reports whether the acceptor holds an accepted value at Next: a
// read barrier counts such an instance as possibly chosen already.
func (c *Core) AcceptedAtNext() bool { return !c.accepted.IsZero() }

// Tick advances the logical clock by one tick.
func (c *Core) Tick() {
	if c.p.phase != phaseIdle && c.p.timer > 0 {
		c.p.timer--
		if c.p.timer == 0 {
			c.startPrepare()
		}
	}
	if c.learnWait > 0 {
		c.learnWait--
		if c.learnWait == 0 && c.highestSeen > c.hs.Next {
			c.learnTries++
			c.askTeacher(0)
		}
	}
	if c.cfg.StatusIntervalTicks > 0 {
		c.statusWait--
		if c.statusWait <= 0 {
			c.statusWait = c.statusPeriod()
			c.others(func(m ids.NodeID) { c.sendNow(Message{Type: MsgStatus, To: m}) })
		}
	}
}

// Step feeds one message from a peer (or from this member itself, for replies the
// driver loops back) into the core.
func (c *Core) Step(m Message) error {
	if !m.Type.Valid() {
		return fmt.Errorf("instance: unknown message type %d from node %d", m.Type, m.From)
	}
	switch m.Type {
	case MsgStatus, MsgLearnReq, MsgLearnValues:
		// Learning is open to any node of the cluster (the transport admits only
		// those): a member being added, or a removed one, learns from anyone.
	case MsgAccept, MsgChosen:
		if !c.IsMember(m.From) {
			return fmt.Errorf("%w: %v from node %d", ErrNotVoter, m.Type, m.From)
		}
	default:
		if !c.IsMember(m.From) || !c.IsMember(c.cfg.Self) {
			return fmt.Errorf("%w: %v from node %d", ErrNotVoter, m.Type, m.From)
		}
	}
	c.observeNext(m)
	switch m.Type {
	case MsgPrepare:
		c.onPrepare(m)
	case MsgPromise:
		c.onPromise(m)
	case MsgAccept:
		c.onAccept(m)
	case MsgAccepted:
		c.onAccepted(m)
	case MsgChosen:
		c.onChosen(m)
	case MsgStatus:
		if m.Next < c.hs.Next {
			c.sendNow(Message{Type: MsgStatus, To: m.From})
		}
	case MsgLearnReq:
		// A request is also the learner's ack; one at or past our Next ends the
		// teacher's session with it.
		c.rd.Teach = append(c.rd.Teach, LearnRequest{To: m.From, From: m.Instance})
	case MsgLearnValues:
		c.onLearnValues(m)
	}
	return nil
}

// ---- acceptor ----

func (c *Core) onPrepare(m Message) {
	if c.cfg.Knobs.InferChosenFromNext {
		c.inferChosen(m)
	}
	if m.Instance != c.hs.Next {
		// Older: decided here, the reply's Next tells the proposer. Newer: we must
		// learn first (observeNext asked); an acceptor acts only on its own instance.
		if m.Instance < c.hs.Next {
			c.reply(Message{Type: MsgPromise, To: m.From, Instance: m.Instance, Ballot: m.Ballot, Reject: true, Promised: c.hs.Promised})
		}
		return
	}
	c.noteBallot(m.Ballot)
	if !c.hs.Promised.Less(m.Ballot) {
		c.reply(Message{Type: MsgPromise, To: m.From, Instance: m.Instance, Ballot: m.Ballot, Reject: true, Promised: c.hs.Promised})
		return
	}
	c.hs.Promised = m.Ballot
	c.hsDirty = true
	c.reply(Message{Type: MsgPromise, To: m.From, Instance: m.Instance, Ballot: m.Ballot,
		AcceptedBallot: c.accepted, Value: c.acceptedValue})
}

func (c *Core) onAccept(m Message) {
	if c.cfg.Knobs.InferChosenFromNext {
		c.inferChosen(m)
	}
	if m.Instance != c.hs.Next {
		if m.Instance < c.hs.Next {
			c.reply(Message{Type: MsgAccepted, To: m.From, Instance: m.Instance, Ballot: m.Ballot, Reject: true, Promised: c.hs.Promised})
		} else if m.Instance == c.hs.Next+1 {
			// The master pipelines Chosen(i) and Accept(i+1); if they arrive the
			// other way round, hold the Accept until i is known chosen here
			// instead of making the proposer wait for its timeout. Acting on it
			// later is the same as receiving it later.
			fa := m
			c.futureAccept = &fa
		}
		return
	}
	c.noteBallot(m.Ballot)
	if m.Ballot.Less(c.hs.Promised) {
		c.reply(Message{Type: MsgAccepted, To: m.From, Instance: m.Instance, Ballot: m.Ballot, Reject: true, Promised: c.hs.Promised})
		return
	}
	c.acceptLocal(m.Ballot, m.Value)
	if !c.IsMember(c.cfg.Self) {
		return // a follower keeps the value for the Chosen to come; its vote does not count
	}
	c.reply(Message{Type: MsgAccepted, To: m.From, Instance: m.Instance, Ballot: m.Ballot})
}

// acceptLocal takes (b, v) at hs.Next; the caller checked b >= promised.
func (c *Core) acceptLocal(b ids.Ballot, v []byte) {
	if c.hs.Promised != b {
		c.hs.Promised = b
		c.hsDirty = true
	}
	if c.accepted == b {
		return // a duplicate: the record is already written (or in the pending persist)
	}
	c.accepted, c.acceptedValue = b, v
	c.rd.Entries = append(c.rd.Entries, Entry{Instance: c.hs.Next, Ballot: b, Value: v})
}

func (c *Core) onChosen(m Message) {
	if m.Instance == c.hs.Next && c.accepted == m.Ballot && !c.accepted.IsZero() &&
		Checksum(c.acceptedValue) == m.Checksum {
		c.commit(Entry{Instance: m.Instance, Ballot: m.Ballot, Value: c.acceptedValue})
		return
	}
	if m.Instance >= c.hs.Next {
		// It holds the value as chosen and we do not: learn it from there.
		if m.Instance+1 > c.highestSeen {
			c.highestSeen = m.Instance + 1
		}
		c.notePeerNext(m.From, m.Instance+1)
		if c.learnWait == 0 || c.teacher != m.From {
			c.askTeacher(m.From)
		}
	}
}

// inferChosen is the planted PhxPaxos bug (Knobs.InferChosenFromNext).
func (c *Core) inferChosen(m Message) {
	if m.Instance == c.hs.Next+1 && c.accepted == m.Ballot && !c.accepted.IsZero() {
		c.commit(Entry{Instance: c.hs.Next, Ballot: c.accepted, Value: c.acceptedValue})
	}
}

// commit marks e.Instance (== hs.Next) chosen with e's value and moves on. The
// promise is carried over untouched: learning never lowers it.
func (c *Core) commit(e Entry) {
	if e.Instance != c.hs.Next {
		panic(fmt.Sprintf("instance: commit of instance %d at next %d", e.Instance, c.hs.Next))
	}
	if c.accepted != e.Ballot || !bytes.Equal(c.acceptedValue, e.Value) {
		c.rd.Entries = append(c.rd.Entries, e)
	}
	c.hs.Next++
	c.hsDirty = true
	c.accepted, c.acceptedValue = ids.Ballot{}, nil
	c.rd.Committed = append(c.rd.Committed, e)
	if c.hs.Next > c.highestSeen {
		c.highestSeen = c.hs.Next
	}
	c.proposerAdvanced()
	c.stepFutureAccept()
}

// stepFutureAccept acts on a held Accept whose instance has become Next.
func (c *Core) stepFutureAccept() {
	fa := c.futureAccept
	if fa == nil || fa.Instance > c.hs.Next {
		return
	}
	c.futureAccept = nil
	if fa.Instance == c.hs.Next && c.IsMember(fa.From) {
		c.onAccept(*fa)
	}
}

// ---- learner ----

// SetTeacherHint names the member to learn from first when this one falls behind
// (the master, whose log is the most complete); 0 for none.
func (c *Core) SetTeacherHint(n ids.NodeID) { c.teacherHint = n }

// Learning reports whether this member knows it is behind and is being taught.
func (c *Core) Learning() bool { return c.learnWait > 0 }

func (c *Core) notePeerNext(n ids.NodeID, next ids.InstanceID) {
	if n != c.cfg.Self && next > c.peerNext[n] {
		c.peerNext[n] = next
	}
}

func (c *Core) observeNext(m Message) {
	c.notePeerNext(m.From, m.Next)
	if m.Next <= c.hs.Next {
		return
	}
	if m.Next > c.highestSeen {
		c.highestSeen = m.Next
	}
	if c.learnWait == 0 {
		c.askTeacher(m.From)
	}
}

// askTeacher sends a learn request to one member that is ahead: the hint (the
// master) if it is ahead and this is not a retry after it stayed silent, else the
// members known to be ahead in turn, else fallback (the member whose message
// showed we are behind).
func (c *Core) askTeacher(fallback ids.NodeID) {
	to := fallback
	if h := c.teacherHint; h != 0 && h != c.cfg.Self && c.peerNext[h] > c.hs.Next && c.learnTries%2 == 0 {
		to = h
	} else {
		var ahead []ids.NodeID
		for n, next := range c.peerNext {
			if next > c.hs.Next {
				ahead = append(ahead, n)
			}
		}
		if len(ahead) > 0 {
			slices.Sort(ahead) // map order must not leak into the choice: determinism
			to = ahead[c.learnTries%len(ahead)]
		}
	}
	if to == 0 || to == c.cfg.Self {
		return
	}
	c.teacher = to
	c.sendNow(Message{Type: MsgLearnReq, To: to, Instance: c.hs.Next})
	c.learnWait = c.cfg.LearnTimeoutTicks
}

// InstallCheckpoint moves Next up to next after the driver installed a
// checkpoint image holding every instance below it (and made that durable: the
// log's trim point says so). The acceptor gives up whatever it had accepted at the
// old Next, which was chosen long ago; its promise carries over as always. It then
// asks to learn on from next if a member is known to be further ahead.
func (c *Core) InstallCheckpoint(next ids.InstanceID) {
	if next <= c.hs.Next {
		return
	}
	c.hs.Next = next
	c.hsDirty = true
	c.accepted, c.acceptedValue = ids.Ballot{}, nil
	if next > c.highestSeen {
		c.highestSeen = next
	}
	c.proposerAdvanced()
	c.stepFutureAccept()
	c.learnTries = 0
	if c.highestSeen > c.hs.Next {
		c.askTeacher(c.teacher)
	} else {
		c.learnWait = 0
	}
}

func (c *Core) onLearnValues(m Message) {
	progressed := false
	for _, e := range m.Entries {
		if e.Instance < c.hs.Next {
			continue
		}
		if e.Instance > c.hs.Next {
			break // a gap: values are applied strictly in order
		}
		c.stats.Learned++
		c.commit(e)
		progressed = true
	}
	if !progressed {
		return // a duplicate or a value past a gap: the teacher's timeout resends
	}
	// The ack is a reply: it leaves once the batch that records these values is
	// durable, so it never claims what a crash could take back.
	c.reply(Message{Type: MsgLearnReq, To: m.From, Instance: c.hs.Next})
	c.learnTries = 0
	if c.highestSeen > c.hs.Next {
		c.teacher = m.From
		c.learnWait = c.cfg.LearnTimeoutTicks
	} else {
		c.learnWait = 0
	}
}

// ---- proposer ----

func (c *Core) startPrepare() {
	p := &c.p
	n := p.ballot.Number
	if c.hs.Promised.Number > n {
		n = c.hs.Promised.Number
	}
	if p.highest.Number > n {
		n = p.highest.Number
	}
	p.ballot = ids.Ballot{Number: n + 1, Node: c.cfg.Self}
	p.phase, p.prepared, p.value = phasePreparing, false, nil
	p.votes = append(p.votes[:0], c.cfg.Self)
	p.best = Entry{Ballot: c.accepted, Value: c.acceptedValue}
	p.timer = c.cfg.PrepareTimeoutTicks
	c.stats.PreparesStarted++
	// The own acceptor promises first; the Prepares are Messages, so they leave only
	// once that promise is durable.
	c.hs.Promised = p.ballot
	c.hsDirty = true
	for _, m := range c.cfg.Members {
		if m != c.cfg.Self {
			c.reply(Message{Type: MsgPrepare, To: m, Instance: p.instance, Ballot: p.ballot})
		}
	}
	if len(p.votes) >= c.quorum {
		c.prepared()
	}
}

func (c *Core) onPromise(m Message) {
	p := &c.p
	if m.Reject {
		c.onReject(m)
		return
	}
	if p.phase != phasePreparing || m.Instance != p.instance || m.Ballot != p.ballot || hasVote(p.votes, m.From) {
		return
	}
	if !c.IsMember(m.From) {
		return // a follower's (or a removed or abstaining member's) promise makes no quorum
	}
	p.votes = append(p.votes, m.From)
	if p.best.Ballot.Less(m.AcceptedBallot) {
		p.best = Entry{Ballot: m.AcceptedBallot, Value: m.Value}
	}
	if len(p.votes) >= c.quorum {
		c.prepared()
	}
}

func (c *Core) prepared() {
	p := &c.p
	p.prepared = true
	v := p.own
	if !p.best.Ballot.IsZero() {
		v = p.best.Value // phase 1 found an accepted value: it must be the one proposed
	}
	c.startAccept(v)
}

func (c *Core) startAccept(v []byte) {
	p := &c.p
	p.phase, p.value = phaseAccepting, v
	p.votes = p.votes[:0]
	p.timer = c.cfg.AcceptTimeoutTicks
	switch {
	case !p.ballot.Less(c.hs.Promised):
		c.acceptLocal(p.ballot, v)
		c.reply(Message{Type: MsgAccepted, To: c.cfg.Self, Instance: p.instance, Ballot: p.ballot})
	case c.cfg.Knobs.InferChosenFromNext:
		// The PhxPaxos proposer treats its own acceptor as any other: it sends the
		// Accepts anyway and only a peer's rejection ends its fast path.
	default:
		// The own acceptor promised someone higher: the fast path is gone.
		p.prepared = false
		c.retryAfterJitter()
		return
	}
	c.others(func(m ids.NodeID) {
		c.sendNow(Message{Type: MsgAccept, To: m, Instance: p.instance, Ballot: p.ballot, Value: v})
	})
}

func (c *Core) onAccepted(m Message) {
	p := &c.p
	if m.Reject {
		c.onReject(m)
		return
	}
	if p.phase != phaseAccepting || m.Instance != p.instance || m.Ballot != p.ballot || hasVote(p.votes, m.From) {
		return
	}
	if !c.IsMember(m.From) {
		return // a follower's (or a removed or abstaining member's) vote makes no quorum
	}
	p.votes = append(p.votes, m.From)
	if len(p.votes) < c.quorum {
		return
	}
	p.won = true
	c.stats.ProposerWins++
	sum := Checksum(p.value)
	c.others(func(n ids.NodeID) {
		c.sendNow(Message{Type: MsgChosen, To: n, Instance: p.instance, Ballot: p.ballot, Checksum: sum})
	})
	c.commit(Entry{Instance: p.instance, Ballot: p.ballot, Value: p.value})
}

// onReject handles a negative Promise or Accepted, current or late.
func (c *Core) onReject(m Message) {
	p := &c.p
	c.noteBallot(m.Promised)
	if p.phase == phaseIdle || m.Instance != p.instance || m.Ballot != p.ballot {
		return
	}
	if m.Next > p.instance {
		return // decided elsewhere: the learner catches up and ends the proposal
	}
	if p.ballot.Less(m.Promised) {
		c.stats.Rejections++
		c.retryAfterJitter()
	}
}

// noteBallot records a ballot seen from another proposer; one above ours ends the
// fast path, because a quorum may have promised it.
func (c *Core) noteBallot(b ids.Ballot) {
	if c.p.highest.Less(b) {
		c.p.highest = b
	}
	if c.p.ballot.Less(b) && !c.cfg.Knobs.InferChosenFromNext {
		c.p.prepared = false
	}
}

func (c *Core) retryAfterJitter() {
	c.p.timer = 1 + int(c.rand()%uint64(c.cfg.RetryJitterTicks))
}

// proposerAdvanced ends the proposal once its instance is decided.
func (c *Core) proposerAdvanced() {
	p := &c.p
	if !p.won && !c.cfg.Knobs.InferChosenFromNext {
		p.prepared = false // QRULE: advanced without our own quorum
	}
	if p.phase != phaseIdle && p.instance < c.hs.Next {
		p.phase, p.own, p.value, p.timer = phaseIdle, nil, nil, 0
		p.votes = p.votes[:0]
	}
	p.won = false
}

// ---- output helpers ----

// reply queues a message that must wait for this Ready's persist.
func (c *Core) reply(m Message) {
	m.From, m.Next = c.cfg.Self, c.hs.Next
	c.rd.Messages = append(c.rd.Messages, m)
}

func (c *Core) sendNow(m Message) {
	m.From, m.Next = c.cfg.Self, c.hs.Next
	c.rd.SendNow = append(c.rd.SendNow, m)
}

func hasVote(votes []ids.NodeID, n ids.NodeID) bool {
	for _, v := range votes {
		if v == n {
			return true
		}
	}
	return false
}

func (c *Core) statusPeriod() int {
	if c.cfg.StatusIntervalTicks <= 0 {
		return 0
	}
	return c.cfg.StatusIntervalTicks + int(c.rand()%uint64(c.cfg.StatusIntervalTicks/2+1))
}

// rand is xorshift64*: deterministic jitter without math/rand.
func (c *Core) rand() uint64 {
	c.rng ^= c.rng >> 12
	c.rng ^= c.rng << 25
	c.rng ^= c.rng >> 27
	return c.rng * 2685821657736338717
}
