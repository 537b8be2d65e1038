package kv

import "github.com/multipaxos/engine/ids"

// HashName names the key-to-group hash in the store's format record.
const HashName = "fnv1a64"

// GroupOf returns the group that owns key among groups groups. It is part of the
// on-disk format (see the package doc): never change it for an existing store.
func GroupOf(key []byte, groups int) ids.GroupID {
	// FNV-1a 64, inlined so that the hot path allocates nothing.
	const (
		offset = 14695981039346656037
		prime  = 1099511628211
	)
	h := uint64(offset)
	for _, c := range key {
		h ^= uint64(c)
		h *= prime
	}
	return ids.GroupID(h % uint64(groups))
}
