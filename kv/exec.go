package kv

import (
	"errors"
	"fmt"
	"math"
	"strconv"

	"github.com/cockroachdb/pebble/v2"

	"github.com/multipaxos/engine/ids"
)

// sweepMax bounds the expired keys one instance removes, so that a mass expiry
// spreads over instances instead of making one instance slow.
const sweepMax = 64

// reader is what reads need: an indexed batch (inside Execute) or a snapshot
// (ReadLocal).
type reader interface {
	getter
	NewIter(o *pebble.IterOptions) (*pebble.Iterator, error)
}

// load returns the stored record of key, expired or not.
func load(r reader, g ids.GroupID, key []byte) (record, bool, error) {
	v, closer, err := r.Get(dataKey(g, key))
	if errors.Is(err, pebble.ErrNotFound) {
		return record{}, false, nil
	}
	if err != nil {
		return record{}, false, fmt.Errorf("%w: get: %v", ErrStorage, err)
	}
	defer closer.Close()
	rec, err := decodeRecord(v)
	return rec, err == nil, err
}

// get returns the live record of key: an expired one is absent.
func get(r reader, g ids.GroupID, now int64, key []byte) (record, bool, error) {
	rec, ok, err := load(r, g, key)
	if err != nil || !ok || !rec.live(now) {
		return record{}, false, err
	}
	return rec, true, nil
}

// execRead evaluates a read command. It is shared by Execute (reads in the log)
// and ReadLocal (reads outside it), so both paths answer alike.
func execRead(r reader, g ids.GroupID, now int64, c *Command) (Reply, error) {
	switch c.Op {
	case OpGet:
		rec, ok, err := get(r, g, now, c.Keys[0])
		return bulkOrNil(rec.value, ok), err
	case OpExists:
		var n int64
		for _, k := range c.Keys {
			_, ok, err := get(r, g, now, k)
			if err != nil {
				return Reply{}, err
			}
			if ok {
				n++
			}
		}
		return replyInt(n), nil
	case OpMGet:
		out := make([]Reply, len(c.Keys))
		for i, k := range c.Keys {
			rec, ok, err := get(r, g, now, k)
			if err != nil {
				return Reply{}, err
			}
			out[i] = bulkOrNil(rec.value, ok)
		}
		return replyArr(out), nil
	case OpTTL:
		rec, ok, err := get(r, g, now, c.Keys[0])
		switch {
		case err != nil:
			return Reply{}, err
		case !ok:
			return replyInt(-2), nil
		case rec.deadline == 0:
			return replyInt(-1), nil
		}
		return replyInt(rec.deadline - now), nil
	case OpDBSize:
		return dbSize(r, g, now)
	}
	return Reply{}, fmt.Errorf("%w: %s", ErrNotRead, c.Op)
}

// dbSize counts the live keys of group g by scanning its data span: the count
// depends on the clock, so keeping a counter would need the sweep to be complete.
func dbSize(r reader, g ids.GroupID, now int64) (Reply, error) {
	lo, hi := dataSpan(g)
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return Reply{}, fmt.Errorf("%w: iterate: %v", ErrStorage, err)
	}
	var n int64
	for it.First(); it.Valid(); it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			_ = it.Close()
			return Reply{}, fmt.Errorf("%w: iterate: %v", ErrStorage, err)
		}
		d, err := recordDeadline(v)
		if err != nil {
			_ = it.Close()
			return Reply{}, err
		}
		if d == 0 || d > now {
			n++
		}
	}
	if err := it.Close(); err != nil {
		return Reply{}, fmt.Errorf("%w: iterate: %v", ErrStorage, err)
	}
	return replyInt(n), nil
}

// txn is one instance's execution: its writes go to an indexed batch, so a later
// command of the same instance reads an earlier one's writes.
type txn struct {
	b   *pebble.Batch
	g   ids.GroupID
	now int64 // the group's clock: max of every command's Now so far
}

// put stores key = value with deadline, replacing old (as loaded, expired or not)
// and keeping the expiry index in step.
func (t *txn) put(key []byte, old record, hadOld bool, value []byte, deadline int64) error {
	if hadOld && old.deadline != 0 && old.deadline != deadline {
		if err := t.b.Delete(expiryKey(t.g, old.deadline, key), nil); err != nil {
			return fmt.Errorf("%w: %v", ErrStorage, err)
		}
	}
	if deadline != 0 {
		if err := t.b.Set(expiryKey(t.g, deadline, key), nil, nil); err != nil {
			return fmt.Errorf("%w: %v", ErrStorage, err)
		}
	}
	if err := t.b.Set(dataKey(t.g, key), encodeRecord(record{deadline: deadline, value: value}), nil); err != nil {
		return fmt.Errorf("%w: %v", ErrStorage, err)
	}
	return nil
}

func (t *txn) del(key []byte, old record) error {
	if old.deadline != 0 {
		if err := t.b.Delete(expiryKey(t.g, old.deadline, key), nil); err != nil {
			return fmt.Errorf("%w: %v", ErrStorage, err)
		}
	}
	if err := t.b.Delete(dataKey(t.g, key), nil); err != nil {
		return fmt.Errorf("%w: %v", ErrStorage, err)
	}
	return nil
}

// exec executes one decoded command at the clock t.now. Only storage failures are
// errors.
func (t *txn) exec(c *Command) (Reply, error) {
	if c.Op.IsRead() {
		return execRead(t.b, t.g, t.now, c)
	}
	switch c.Op {
	case OpSet:
		return t.set(c)
	case OpDel:
		var n int64
		for _, k := range c.Keys {
			old, had, err := load(t.b, t.g, k)
			if err != nil {
				return Reply{}, err
			}
			if !had {
				continue
			}
			if old.live(t.now) {
				n++
			}
			if err := t.del(k, old); err != nil {
				return Reply{}, err
			}
		}
		return replyInt(n), nil
	case OpIncrBy:
		return t.incrBy(c.Keys[0], c.Int)
	case OpMSet:
		for i, k := range c.Keys {
			old, had, err := load(t.b, t.g, k)
			if err != nil {
				return Reply{}, err
			}
			if err := t.put(k, old, had, c.Values[i], 0); err != nil {
				return Reply{}, err
			}
		}
		return replyOK, nil
	case OpExpire:
		return t.expire(c)
	}
	return replyErr(ErrCodeBadCommand), nil
}

func (t *txn) set(c *Command) (Reply, error) {
	key := c.Keys[0]
	old, had, err := load(t.b, t.g, key)
	if err != nil {
		return Reply{}, err
	}
	live := had && old.live(t.now)
	var prev Reply
	if c.Flags&SetGet != 0 {
		prev = bulkOrNil(old.value, live)
	} else {
		prev = replyOK
	}
	if (c.Flags&SetNX != 0 && live) || (c.Flags&SetXX != 0 && !live) {
		if c.Flags&SetGet != 0 {
			return prev, nil
		}
		return replyNil, nil
	}
	deadline := c.Int
	if c.Flags&SetKeepTTL != 0 {
		deadline = 0
		if live {
			deadline = old.deadline
		}
	}
	if deadline != 0 && deadline <= t.now {
		// A deadline already passed: the key is set and expires at once (Redis
		// answers OK and the key is gone), so just remove what was there.
		if had {
			if err := t.del(key, old); err != nil {
				return Reply{}, err
			}
		}
		return prev, nil
	}
	if err := t.put(key, old, had, c.Values[0], deadline); err != nil {
		return Reply{}, err
	}
	return prev, nil
}

func (t *txn) incrBy(key []byte, delta int64) (Reply, error) {
	old, had, err := load(t.b, t.g, key)
	if err != nil {
		return Reply{}, err
	}
	var n int64
	var deadline int64
	if had && old.live(t.now) {
		v, ok := ParseInt(old.value)
		if !ok {
			return replyErr(ErrCodeNotInteger), nil
		}
		n, deadline = v, old.deadline // INCR keeps the key's deadline, as in Redis
	}
	if (delta > 0 && n > math.MaxInt64-delta) || (delta < 0 && n < math.MinInt64-delta) {
		return replyErr(ErrCodeOverflow), nil
	}
	n += delta
	if err := t.put(key, old, had, strconv.AppendInt(nil, n, 10), deadline); err != nil {
		return Reply{}, err
	}
	return replyInt(n), nil
}

func (t *txn) expire(c *Command) (Reply, error) {
	key := c.Keys[0]
	old, had, err := load(t.b, t.g, key)
	if err != nil {
		return Reply{}, err
	}
	if !had || !old.live(t.now) {
		return replyInt(0), nil
	}
	deadline := c.Int
	cur := old.deadline
	switch {
	case c.Flags&ExpireNX != 0 && cur != 0,
		c.Flags&ExpireXX != 0 && cur == 0,
		c.Flags&ExpireGT != 0 && (cur == 0 || deadline <= cur),
		c.Flags&ExpireLT != 0 && cur != 0 && deadline >= cur:
		return replyInt(0), nil
	}
	if deadline <= t.now {
		return replyInt(1), t.del(key, old)
	}
	return replyInt(1), t.put(key, old, had, old.value, deadline)
}

// sweep removes up to sweepMax keys whose deadline passed, oldest first. It
// depends only on the log (the clock is the commands' own), so every member
// removes the same keys at the same instance.
func (t *txn) sweep() error {
	lo, hi := expiryDue(t.g, t.now)
	it, err := t.b.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return fmt.Errorf("%w: iterate expiry index: %v", ErrStorage, err)
	}
	var due [][]byte
	for it.First(); it.Valid() && len(due) < sweepMax; it.Next() {
		due = append(due, append([]byte{}, it.Key()...))
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("%w: iterate expiry index: %v", ErrStorage, err)
	}
	for _, ek := range due {
		deadline, key, err := parseExpiryKey(ek)
		if err != nil {
			return err
		}
		rec, ok, err := load(t.b, t.g, key)
		if err != nil {
			return err
		}
		// The index entry may be stale only if put/del missed it; check anyway,
		// so that a stale entry can never delete a live key.
		if ok && rec.deadline == deadline {
			if err := t.b.Delete(dataKey(t.g, key), nil); err != nil {
				return fmt.Errorf("%w: %v", ErrStorage, err)
			}
		}
		if err := t.b.Delete(ek, nil); err != nil {
			return fmt.Errorf("%w: %v", ErrStorage, err)
		}
	}
	return nil
}

// ParseInt parses a value as Redis does for INCR: a canonical decimal int64 (no
// sign but '-', no leading zeros or spaces).
func ParseInt(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	n, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return 0, false
	}
	var buf [20]byte
	return n, string(strconv.AppendInt(buf[:0], n, 10)) == string(b)
}
