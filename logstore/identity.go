package logstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"

	"github.com/cockroachdb/pebble/v2"

	"github.com/multipaxos/engine/ids"
)

// Identity is a node's record of who its store is and which stores its peers
// were when it first met them. A Paxos acceptor must remember its promises; a
// node that comes back on an empty disk under its old ID has forgotten them, and
// this record is how the cluster tells it apart from the node that voted (the
// node package's handshake checks, see node/identity.go).
type Identity struct {
	// Incarnation is drawn at random when the store is created and never
	// changes; it is never 0.
	Incarnation uint64
	// Verified: every other member has admitted this incarnation at least once,
	// so no earlier store under this node ID ever voted (a peer that counted such
	// a vote would have refused this one). Once set it stays set.
	Verified bool
	// Peers maps each peer met to the incarnation it had then.
	Peers map[ids.NodeID]uint64
}

const (
	formatIdentityV1 byte = 0x41
	// identity record: format, incarnation, flags, peer count (u16), then per
	// peer (node u64, incarnation u64), then the CRC.
	identityHeaderLen = 1 + 8 + 1 + 2
	identityPeerLen   = 16
	identityPeersMax  = 1 << 16 // the count is a u16 (and Members is far smaller)
	identityVerified  = 0x01
)

// identityKey sits outside every group's key range: a group's keys start with
// its u32 index, and no group has the index 2^32-1.
var identityKey = []byte{0xff, 0xff, 0xff, 0xff, 0x01}

func encodeIdentity(id Identity) ([]byte, error) {
	if id.Incarnation == 0 {
		return nil, errors.New("logstore: identity without an incarnation")
	}
	if len(id.Peers) >= identityPeersMax {
		return nil, fmt.Errorf("logstore: identity with %d peers", len(id.Peers))
	}
	peers := make([]ids.NodeID, 0, len(id.Peers))
	for p := range id.Peers {
		peers = append(peers, p)
	}
	slices.Sort(peers) // one encoding per identity
	rec := make([]byte, identityHeaderLen+identityPeerLen*len(peers)+crcLen)
	rec[0] = formatIdentityV1
	binary.BigEndian.PutUint64(rec[1:], id.Incarnation)
	if id.Verified {
		rec[9] = identityVerified
	}
	binary.BigEndian.PutUint16(rec[10:], uint16(len(peers)))
	at := identityHeaderLen
	for _, p := range peers {
		binary.BigEndian.PutUint64(rec[at:], uint64(p))
		binary.BigEndian.PutUint64(rec[at+8:], id.Peers[p])
		at += identityPeerLen
	}
	binary.BigEndian.PutUint32(rec[at:], crc32.Checksum(rec[:at], castagnoli))
	return rec, nil
}

func decodeIdentity(rec []byte) (Identity, error) {
	if err := checkRecord(rec, "identity", formatIdentityV1, identityHeaderLen+crcLen, true); err != nil {
		return Identity{}, err
	}
	n := int(binary.BigEndian.Uint16(rec[10:]))
	if len(rec) != identityHeaderLen+identityPeerLen*n+crcLen {
		return Identity{}, fmt.Errorf("%w: identity record of %d bytes for %d peers", ErrCorrupt, len(rec), n)
	}
	id := Identity{Incarnation: binary.BigEndian.Uint64(rec[1:]), Verified: rec[9]&identityVerified != 0,
		Peers: make(map[ids.NodeID]uint64, n)}
	if id.Incarnation == 0 || rec[9]&^identityVerified != 0 {
		return Identity{}, fmt.Errorf("%w: identity record with incarnation %d, flags %#x", ErrCorrupt, id.Incarnation, rec[9])
	}
	for at := identityHeaderLen; n > 0; n, at = n-1, at+identityPeerLen {
		p, inc := ids.NodeID(binary.BigEndian.Uint64(rec[at:])), binary.BigEndian.Uint64(rec[at+8:])
		if _, dup := id.Peers[p]; dup || p == 0 || inc == 0 {
			return Identity{}, fmt.Errorf("%w: identity record with peer %d at incarnation %d", ErrCorrupt, p, inc)
		}
		id.Peers[p] = inc
	}
	return id, nil
}

// Created reports whether Open found no database in its directory and made a new
// one: the store remembers nothing, neither promises nor log.
func (s *PebbleStore) Created() bool { return s.created }

// LoadIdentity returns the node's identity record: ErrNotFound if none was ever
// saved, an error wrapping ErrCorrupt if it does not decode.
func (s *PebbleStore) LoadIdentity() (Identity, error) {
	defer s.rw.RUnlock()
	if err := s.readLock(); err != nil {
		return Identity{}, err
	}
	var id Identity
	found, err := s.get(identityKey, func(v []byte) (err error) {
		id, err = decodeIdentity(v)
		return err
	})
	if err != nil {
		return Identity{}, fmt.Errorf("logstore: identity: %w", err)
	}
	if !found {
		return Identity{}, ErrNotFound
	}
	return id, nil
}

// SaveIdentity replaces the identity record, durably (the WAL is synced) before
// it returns. It is for rare events: a store's creation, the first sight of a
// peer. A failed write stops the store like a failed Commit (ErrFatal).
func (s *PebbleStore) SaveIdentity(id Identity) error {
	rec, err := encodeIdentity(id)
	if err != nil {
		return err
	}
	defer s.rw.RUnlock()
	if err := s.readLock(); err != nil {
		return err
	}
	if err := s.db.Set(identityKey, rec, pebble.Sync); err != nil {
		return s.fail(fmt.Errorf("save identity: %w", err))
	}
	return nil
}

// HasGroupData reports whether any group has a record: whether the store ever
// held a promise, a log entry or a trim point.
func (s *PebbleStore) HasGroupData() (bool, error) {
	defer s.rw.RUnlock()
	if err := s.readLock(); err != nil {
		return false, err
	}
	it, err := s.db.NewIter(&pebble.IterOptions{UpperBound: identityKey[:4]})
	if err != nil {
		return false, err
	}
	found := it.First()
	return found, errors.Join(it.Error(), it.Close())
}
