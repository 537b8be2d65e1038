package node

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"

	"github.com/multipaxos/engine/group"
	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/logstore"
	"go.uber.org/zap"
)

// # A node ID on a new disk
//
// A Paxos acceptor must never forget a promise or an accepted value. A node
// that comes back on an empty disk under its old ID has forgotten both, and if
// it voted again a value chosen with its old vote could be overturned. So every
// store gets a random incarnation when it is created, the handshake carries it
// (authenticated by the cluster secret's MAC), and:
//
//   - a node refuses a peer whose incarnation differs from the one it recorded
//     when it first admitted that peer (ErrPeerReincarnated, logged at error
//     level and counted): the peer with the new disk gets no frame from it and
//     none of its votes count here;
//   - a node whose store was created empty abstains - in every group it
//     learns and keeps values like a follower, but neither votes nor proposes
//     nor answers read-index requests - until, in every group where it votes,
//     enough other voters admitted its incarnation that they and it make a
//     quorum (and at least one member did). That is recorded
//     (Identity.Verified), so a restart does not wait again.
//
// Every vote an earlier store under this ID cast went to a proposer over an
// admitted connection, and in a cluster whose members all run, every member
// meets every other: any member that met the old store refuses the new one. So
// a wiped disk goes unnoticed only if the old store never met any of the members
// that admit the new one - if it spent its whole life with members that are all
// down or gone when it comes back. Admitting a majority rather than everyone
// keeps a new cluster available when a minority of its nodes has not started
// yet. A node that was refused must be
// replaced: remove it from every group, then either give it a new node ID, or
// call ForgetPeer on the others, which then admit its new store as a new node
// (ForgetPeer refuses a node that still votes in a group). Restoring a node's data directory from an old backup is not detected
// (same incarnation, older promises) and is just as unsafe: never do it.

// ErrPeerReincarnated: a peer presented a store other than the one this node
// admitted under its ID before - its disk was wiped or replaced - so it has
// forgotten its promises and this node refuses it (see Node.ForgetPeer).
var ErrPeerReincarnated = errors.New("node: peer came back with a different store")

// identity is this node's Identity record and what the handshakes told since
// Start. Its callbacks run on the transport's event loops.
type identity struct {
	n      *Node
	store  *logstore.PebbleStore
	others []ids.NodeID // every other node of Members

	mu         sync.Mutex
	rec        logstore.Identity // as saved
	admittedBy map[ids.NodeID]bool
	verifying  bool
	refused    uint64
}

// openIdentity loads or creates the store's identity record. It decides whether
// the groups start abstaining: they do when the store was created empty now or
// on an earlier start that never got every peer's admission.
func (n *Node) openIdentity() error {
	id := &identity{n: n, store: n.store, admittedBy: map[ids.NodeID]bool{}}
	for _, m := range n.opts.memberIDs() {
		if m != n.opts.NodeID {
			id.others = append(id.others, m)
		}
	}
	rec, err := n.store.LoadIdentity()
	switch {
	case errors.Is(err, logstore.ErrNotFound):
		// A store written before identities existed remembers its promises:
		// only one created now - or created by a start that crashed before it
		// got here, so it holds nothing - may have lost some.
		legacy, err := n.store.HasGroupData()
		if err != nil {
			return fmt.Errorf("node: read the log store: %w", err)
		}
		rec = logstore.Identity{Incarnation: rand.Uint64() | 1, Verified: legacy && !n.store.Created(), Peers: map[ids.NodeID]uint64{}}
		if err := n.store.SaveIdentity(rec); err != nil {
			return fmt.Errorf("node: save the store's identity: %w", err)
		}
	case err != nil:
		return fmt.Errorf("node: the store's identity record: %w", err)
	}
	if len(id.others) == 0 || n.opts.Transport != nil {
		// Nobody else could have counted a vote of ours; or a custom transport,
		// which has no handshake to check incarnations (tests).
		rec.Verified = true
	}
	id.rec = rec
	n.identity = id
	if !rec.Verified {
		n.log.Warn("this node's store is new: it takes no vote in any group until every other member has admitted it once",
			zap.Uint64("incarnation", rec.Incarnation), zap.Any("waiting_for", id.others))
	}
	return nil
}

// abstaining reports whether the groups must start without their vote.
func (id *identity) abstaining() bool {
	id.mu.Lock()
	defer id.mu.Unlock()
	return !id.rec.Verified
}

// ForgetPeer makes this node forget the store it admitted under node id, so
// that a node that lost its disk is admitted again under its old ID, as a new
// node (see ErrPeerReincarnated). It fails if id still votes in any group as this
// node knows the group: remove it from every group first, and add it back with
// AddMember once it runs on its new disk. Call it on every node that refuses it.
func (n *Node) ForgetPeer(id ids.NodeID) error {
	if id == n.opts.NodeID {
		return fmt.Errorf("%w: node %d cannot forget itself", ErrInvalidOptions, id)
	}
	if _, ok := n.opts.Members[id]; !ok {
		// Not a member this node connects to, so it admitted no store under that
		// ID: most likely a typo, which a silent success would hide.
		return fmt.Errorf("%w: node %d is not in this node's Members", ErrUnknownPeer, id)
	}
	for _, r := range n.groups {
		if slices.Contains(r.replica.Membership().Voters, id) {
			return fmt.Errorf("%w: node %d still votes in group %d: remove it from every group first", ErrStillVoter, id, r.g)
		}
	}
	ident := n.identity
	ident.mu.Lock()
	defer ident.mu.Unlock()
	if _, ok := ident.rec.Peers[id]; !ok {
		return nil
	}
	rec := ident.rec
	rec.Peers = maps.Clone(rec.Peers)
	delete(rec.Peers, id)
	if err := ident.store.SaveIdentity(rec); err != nil {
		return fmt.Errorf("node: save the store's identity: %w", err)
	}
	ident.rec = rec
	n.log.Warn("forgot a peer's store: a new store under its ID is admitted as a new node", zap.Uint64("peer", uint64(id)))
	return nil
}

// ErrStillVoter: ForgetPeer was asked to forget a node that still votes.
var ErrStillVoter = errors.New("node: peer still votes in a group")

// ErrUnknownPeer: ForgetPeer was asked to forget a node that is not a member.
var ErrUnknownPeer = errors.New("node: not a member")

// admitPeer is netio's AdmitPeer: it runs once per connection, after the peer
// proved the cluster secret and before any of its frames is delivered.
func (id *identity) admitPeer(peer ids.NodeID, incarnation uint64) error {
	id.mu.Lock()
	defer id.mu.Unlock()
	known, ok := id.rec.Peers[peer]
	switch {
	case incarnation == 0:
		id.refused++
		return fmt.Errorf("%w: node %d sent no incarnation", ErrPeerReincarnated, peer)
	case ok && known == incarnation:
		return nil
	case ok:
		id.refused++
		err := fmt.Errorf("%w: node %d now has store %#x, but this node admitted store %#x under that ID: "+
			"it lost its promises and may not take part again under this ID; remove it from every group and give it a "+
			"new node ID, or call ForgetPeer on every other node (docs/operations.md)", ErrPeerReincarnated, peer, incarnation, known)
		id.n.log.Error("refusing a peer that came back with a different store", zap.Uint64("peer", uint64(peer)),
			zap.Uint64("incarnation", incarnation), zap.Uint64("known", known))
		return err
	}
	// First sight: record it durably before anything of the peer counts here.
	rec := id.rec
	rec.Peers = maps.Clone(rec.Peers)
	rec.Peers[peer] = incarnation
	if err := id.store.SaveIdentity(rec); err != nil {
		return fmt.Errorf("node: record peer %d's store: %w", peer, err)
	}
	id.rec = rec
	id.n.log.Info("recorded a peer's store", zap.Uint64("peer", uint64(peer)), zap.Uint64("incarnation", incarnation))
	return nil
}

// onAdmitted is netio's OnAdmitted: peer admitted this node's store.
func (id *identity) onAdmitted(peer ids.NodeID) {
	id.mu.Lock()
	defer id.mu.Unlock()
	if id.rec.Verified || id.admittedBy[peer] {
		return
	}
	id.admittedBy[peer] = true
	id.checkLocked()
}

// recheck runs the verification check again; the node's status ticker calls it
// while the store is not verified, since membership changes learned meanwhile
// change what it needs.
func (id *identity) recheck() {
	id.mu.Lock()
	defer id.mu.Unlock()
	id.checkLocked()
}

// checkLocked starts the verification once enough members admitted this store:
// in every group where this node votes, enough of the other voters that they
// and this node make a quorum - and at least one member in all. Membership is
// read as this node knows it now (it learns while it abstains).
func (id *identity) checkLocked() {
	if id.rec.Verified || id.verifying || len(id.admittedBy) == 0 {
		return
	}
	self := id.n.opts.NodeID
	for _, r := range id.n.groups {
		voters := r.replica.Membership().Voters
		if !slices.Contains(voters, self) {
			continue
		}
		admitted := 0
		for _, v := range voters {
			if id.admittedBy[v] {
				admitted++
			}
		}
		if admitted < len(voters)/2 { // quorum - 1
			return
		}
	}
	id.verifying = true
	// Off the event loop: a synced write, then a message to every group.
	id.n.background(id.verify)
}

func (id *identity) verify() {
	id.mu.Lock()
	rec := id.rec
	rec.Verified = true
	err := id.store.SaveIdentity(rec)
	if err == nil {
		id.rec = rec
	}
	id.mu.Unlock()
	if err != nil {
		id.n.log.Error("could not record that every member admitted this store; the groups keep abstaining", zap.Error(err))
		return
	}
	id.n.log.Info("every member admitted this node's store: its groups vote from now on")
	for _, r := range id.n.groups {
		r.post(func(rep *group.Replica) { rep.SetAbstain(false) })
	}
}

// incarnation is this store's incarnation.
func (id *identity) incarnation() uint64 {
	id.mu.Lock()
	defer id.mu.Unlock()
	return id.rec.Incarnation
}

// stats returns how many peers were refused.
func (id *identity) stats() (refused uint64, verified bool) {
	id.mu.Lock()
	defer id.mu.Unlock()
	return id.refused, id.rec.Verified
}
