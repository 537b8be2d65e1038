package group

import "slices"

// sortByID orders proposals by request sequence, which is their arrival order on
// this node, so a requeued batch keeps its callers' order.
func sortByID(ps []*Proposal) {
	slices.SortFunc(ps, func(a, b *Proposal) int {
		switch {
		case a.ID.Seq < b.ID.Seq:
			return -1
		case a.ID.Seq > b.ID.Seq:
			return 1
		}
		return 0
	})
}
