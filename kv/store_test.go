package kv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/node"
)

func openStore(t *testing.T, dir string, groups int) *Store {
	t.Helper()
	s, err := Open(dir, Options{Groups: groups, CacheSize: 1 << 20, MemTableSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func enc(t *testing.T, c Command) []byte {
	t.Helper()
	b, err := EncodeCommand(&c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// run executes cmds as the group's next instance and decodes the replies.
func run(t *testing.T, sm *GroupSM, cmds ...Command) []Reply {
	t.Helper()
	raw := make([][]byte, len(cmds))
	for i, c := range cmds {
		raw[i] = enc(t, c)
	}
	res, err := sm.Execute(sm.Applied(), raw)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]Reply, len(res))
	for i, b := range res {
		if out[i], err = DecodeReply(b); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func run1(t *testing.T, sm *GroupSM, c Command) Reply { t.Helper(); return run(t, sm, c)[0] }

func ks(keys ...string) [][]byte {
	out := make([][]byte, len(keys))
	for i, k := range keys {
		out[i] = []byte(k)
	}
	return out
}

func wantReply(t *testing.T, what string, got Reply, want Reply) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("%s: got %+v, want %+v", what, got, want)
	}
}

const t0 = int64(1_700_000_000_000) // a fixed clock: execution never reads a real one

func TestCommandCodec(t *testing.T) {
	c := Command{Op: OpSet, Now: t0, Keys: ks("k"), Values: ks("v"), Int: t0 + 5, Flags: SetNX | SetGet}
	b := enc(t, c)
	if b[0] != CommandVersion {
		t.Fatalf("version byte %d", b[0])
	}
	got, err := DecodeCommand(b)
	if err != nil || fmt.Sprint(got) != fmt.Sprint(c) {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	bad := [][]byte{nil, {9}, append([]byte{CommandVersion}, 0xc1), enc(t, Command{Op: OpGet}),
		enc(t, Command{Op: OpMSet, Keys: ks("a", "b"), Values: ks("1")}), enc(t, Command{Op: 99}),
		enc(t, Command{Op: OpSet, Keys: ks("a"), Values: ks("1"), Flags: SetNX | SetXX})}
	for i, b := range bad {
		if _, err := DecodeCommand(b); !errors.Is(err, ErrBadCommand) {
			t.Errorf("bad command %d: err %v", i, err)
		}
	}
	r := replyArr([]Reply{replyBulk([]byte("x")), replyNil, replyBulk([]byte{})})
	rb, err := EncodeReply(r)
	if err != nil {
		t.Fatal(err)
	}
	got2, err := DecodeReply(rb)
	if err != nil || got2.Array[1].Kind != KindNil || got2.Array[2].Kind != KindBulk || len(got2.Array[2].Bulk) != 0 {
		t.Fatalf("reply round trip: %+v %v", got2, err)
	}
}

func TestGroupOfIsFNV1a(t *testing.T) {
	for _, k := range []string{"", "a", "foo", "key:000000001234", "\xff\x00"} {
		h := fnv.New64a()
		h.Write([]byte(k))
		if got, want := GroupOf([]byte(k), 64), ids.GroupID(h.Sum64()%64); got != want {
			t.Errorf("GroupOf(%q) = %d, want %d", k, got, want)
		}
	}
	// Pinned values: this mapping is part of the on-disk format.
	if g := GroupOf([]byte("foo"), 64); g != 55 {
		t.Errorf("GroupOf(foo, 64) = %d; the on-disk mapping changed", g)
	}
}

func TestStringCommands(t *testing.T) {
	s := openStore(t, t.TempDir(), 4)
	defer s.Close()
	sm := s.Group(1)
	get := func(k string) Command { return Command{Op: OpGet, Now: t0, Keys: ks(k)} }
	set := func(k, v string, f Flags) Command {
		return Command{Op: OpSet, Now: t0, Keys: ks(k), Values: ks(v), Flags: f}
	}

	wantReply(t, "get absent", run1(t, sm, get("a")), replyNil)
	wantReply(t, "set", run1(t, sm, set("a", "1", 0)), replyOK)
	wantReply(t, "get", run1(t, sm, get("a")), replyBulk([]byte("1")))
	wantReply(t, "set nx on existing", run1(t, sm, set("a", "2", SetNX)), replyNil)
	wantReply(t, "set xx on absent", run1(t, sm, set("b", "2", SetXX)), replyNil)
	wantReply(t, "b stays absent", run1(t, sm, get("b")), replyNil)
	wantReply(t, "set xx on existing", run1(t, sm, set("a", "3", SetXX)), replyOK)
	wantReply(t, "set get", run1(t, sm, set("a", "4", SetGet)), replyBulk([]byte("3")))
	wantReply(t, "set get absent", run1(t, sm, set("c", "x", SetGet)), replyNil)
	wantReply(t, "set nx get on existing: old value, no change", run1(t, sm, set("a", "5", SetNX|SetGet)), replyBulk([]byte("4")))
	wantReply(t, "a unchanged", run1(t, sm, get("a")), replyBulk([]byte("4")))
	wantReply(t, "empty value", run1(t, sm, set("e", "", 0)), replyOK)
	wantReply(t, "get empty", run1(t, sm, get("e")), replyBulk([]byte{}))

	// Commands of one instance see each other's writes, in order.
	rs := run(t, sm, set("x", "1", 0), Command{Op: OpIncrBy, Now: t0, Keys: ks("x"), Int: 5}, get("x"))
	wantReply(t, "same instance", rs[2], replyBulk([]byte("6")))

	wantReply(t, "exists counts repeats", run1(t, sm, Command{Op: OpExists, Now: t0, Keys: ks("a", "a", "zz", "x")}), replyInt(3))
	wantReply(t, "del", run1(t, sm, Command{Op: OpDel, Now: t0, Keys: ks("a", "zz", "x", "a")}), replyInt(2))
	wantReply(t, "gone", run1(t, sm, get("a")), replyNil)

	wantReply(t, "mset", run1(t, sm, Command{Op: OpMSet, Now: t0, Keys: ks("m1", "m2", "m1"), Values: ks("1", "2", "3")}), replyOK)
	wantReply(t, "mget", run1(t, sm, Command{Op: OpMGet, Now: t0, Keys: ks("m1", "nope", "m2")}),
		replyArr([]Reply{replyBulk([]byte("3")), replyNil, replyBulk([]byte("2"))}))
	wantReply(t, "dbsize", run1(t, sm, Command{Op: OpDBSize, Now: t0}), replyInt(4)) // c, e, m1, m2
	if s.Group(0).Applied() != 0 {
		t.Fatal("another group moved")
	}
}

func TestIncrBy(t *testing.T) {
	s := openStore(t, t.TempDir(), 1)
	defer s.Close()
	sm := s.Group(0)
	incr := func(k string, d int64) Command { return Command{Op: OpIncrBy, Now: t0, Keys: ks(k), Int: d} }
	wantReply(t, "absent is 0", run1(t, sm, incr("n", 1)), replyInt(1))
	wantReply(t, "decr", run1(t, sm, incr("n", -11)), replyInt(-10))
	for _, v := range []string{"abc", "1.5", " 1", "+1", "01", "-0", "", "99999999999999999999"} {
		run1(t, sm, Command{Op: OpSet, Now: t0, Keys: ks("s"), Values: ks(v)})
		wantReply(t, "not an integer "+v, run1(t, sm, incr("s", 1)), replyErr(ErrCodeNotInteger))
	}
	run1(t, sm, Command{Op: OpSet, Now: t0, Keys: ks("big"), Values: ks("9223372036854775807")})
	wantReply(t, "overflow", run1(t, sm, incr("big", 1)), replyErr(ErrCodeOverflow))
	wantReply(t, "unchanged after overflow", run1(t, sm, Command{Op: OpGet, Now: t0, Keys: ks("big")}), replyBulk([]byte("9223372036854775807")))
	run1(t, sm, Command{Op: OpSet, Now: t0, Keys: ks("small"), Values: ks("-9223372036854775808")})
	wantReply(t, "underflow", run1(t, sm, incr("small", -1)), replyErr(ErrCodeOverflow))
	if !errors.Is(replyErr(ErrCodeOverflow).AsError(), ErrOverflow) || replyOK.AsError() != nil {
		t.Fatal("AsError")
	}
}

func TestExpiry(t *testing.T) {
	s := openStore(t, t.TempDir(), 1)
	defer s.Close()
	sm := s.Group(0)
	at := func(now int64, c Command) Command { c.Now = now; return c }
	get := func(k string) Command { return Command{Op: OpGet, Keys: ks(k)} }
	ttl := func(k string) Command { return Command{Op: OpTTL, Keys: ks(k)} }

	wantReply(t, "set with deadline", run1(t, sm, at(t0, Command{Op: OpSet, Keys: ks("k"), Values: ks("v"), Int: t0 + 1000})), replyOK)
	wantReply(t, "ttl", run1(t, sm, at(t0+250, ttl("k"))), replyInt(750))
	wantReply(t, "alive before deadline", run1(t, sm, at(t0+999, get("k"))), replyBulk([]byte("v")))
	wantReply(t, "dead at deadline", run1(t, sm, at(t0+1000, get("k"))), replyNil)
	// The group clock never goes back: a proposer with a slow clock cannot
	// resurrect the key.
	wantReply(t, "still dead for an older clock", run1(t, sm, at(t0+10, get("k"))), replyNil)
	wantReply(t, "ttl of expired", run1(t, sm, at(t0, ttl("k"))), replyInt(-2))
	if _, ok, _ := load(s.db, 0, []byte("k")); ok {
		t.Fatal("the sweep did not remove the expired record")
	}
	now := t0 + 1000

	wantReply(t, "set no deadline", run1(t, sm, at(now, Command{Op: OpSet, Keys: ks("p"), Values: ks("1")})), replyOK)
	wantReply(t, "ttl -1", run1(t, sm, at(now, ttl("p"))), replyInt(-1))
	wantReply(t, "expire xx on no deadline", run1(t, sm, at(now, Command{Op: OpExpire, Keys: ks("p"), Int: now + 100, Flags: ExpireXX})), replyInt(0))
	wantReply(t, "expire gt on no deadline", run1(t, sm, at(now, Command{Op: OpExpire, Keys: ks("p"), Int: now + 100, Flags: ExpireGT})), replyInt(0))
	wantReply(t, "expire nx", run1(t, sm, at(now, Command{Op: OpExpire, Keys: ks("p"), Int: now + 100, Flags: ExpireNX})), replyInt(1))
	wantReply(t, "expire nx again", run1(t, sm, at(now, Command{Op: OpExpire, Keys: ks("p"), Int: now + 500, Flags: ExpireNX})), replyInt(0))
	wantReply(t, "expire lt later", run1(t, sm, at(now, Command{Op: OpExpire, Keys: ks("p"), Int: now + 500, Flags: ExpireLT})), replyInt(0))
	wantReply(t, "expire gt later", run1(t, sm, at(now, Command{Op: OpExpire, Keys: ks("p"), Int: now + 500, Flags: ExpireGT})), replyInt(1))
	wantReply(t, "ttl after gt", run1(t, sm, at(now, ttl("p"))), replyInt(500))
	wantReply(t, "incr keeps the deadline", run1(t, sm, at(now, Command{Op: OpIncrBy, Keys: ks("p"), Int: 1})), replyInt(2))
	wantReply(t, "ttl after incr", run1(t, sm, at(now, ttl("p"))), replyInt(500))
	wantReply(t, "set keepttl", run1(t, sm, at(now, Command{Op: OpSet, Keys: ks("p"), Values: ks("3"), Flags: SetKeepTTL})), replyOK)
	wantReply(t, "ttl after keepttl", run1(t, sm, at(now, ttl("p"))), replyInt(500))
	wantReply(t, "plain set clears the deadline", run1(t, sm, at(now, Command{Op: OpSet, Keys: ks("p"), Values: ks("4")})), replyOK)
	wantReply(t, "ttl after set", run1(t, sm, at(now, ttl("p"))), replyInt(-1))
	wantReply(t, "expire in the past deletes", run1(t, sm, at(now, Command{Op: OpExpire, Keys: ks("p"), Int: now - 1})), replyInt(1))
	wantReply(t, "deleted", run1(t, sm, at(now, get("p"))), replyNil)
	wantReply(t, "expire absent", run1(t, sm, at(now, Command{Op: OpExpire, Keys: ks("p"), Int: now + 1})), replyInt(0))
	wantReply(t, "set with a past deadline", run1(t, sm, at(now, Command{Op: OpSet, Keys: ks("q"), Values: ks("v"), Int: now})), replyOK)
	wantReply(t, "is absent", run1(t, sm, at(now, Command{Op: OpExists, Keys: ks("q")})), replyInt(0))

	// An expired key is absent for writes too: NX sets it, INCR starts at 0, DEL
	// does not count it, DBSIZE does not count it.
	run1(t, sm, at(now, Command{Op: OpMSet, Keys: ks("e1", "e2", "e3", "live"), Values: ks("5", "5", "5", "x")}))
	for _, k := range []string{"e1", "e2", "e3"} {
		run1(t, sm, at(now, Command{Op: OpExpire, Keys: ks(k), Int: now + 10}))
	}
	// One instance, so the sweep (which runs after an instance's commands) has
	// not removed them when the commands look.
	later := now + 10
	rs := run(t, sm,
		at(later, Command{Op: OpDBSize}),
		at(later, Command{Op: OpSet, Keys: ks("e1"), Values: ks("n"), Flags: SetNX}),
		at(later, Command{Op: OpIncrBy, Keys: ks("e2"), Int: 1}),
		at(later, Command{Op: OpDel, Keys: ks("e3")}),
	)
	wantReply(t, "dbsize skips expired", rs[0], replyInt(1))
	wantReply(t, "nx sets an expired key", rs[1], replyOK)
	wantReply(t, "incr of an expired key", rs[2], replyInt(1))
	wantReply(t, "del of an expired key", rs[3], replyInt(0))
	wantReply(t, "new e1 has no deadline", run1(t, sm, at(later+1000, ttl("e1"))), replyInt(-1))
}

// TestExpiryDeterminism runs the same log on two stores, one of them reopened in
// the middle, and compares their whole contents: same data, same expiry index,
// same meta. Many keys expire at once, so the bounded sweep spans instances.
func TestExpiryDeterminism(t *testing.T) {
	var log [][][]byte
	now := t0
	for i := 0; i < 40; i++ {
		var inst [][]byte
		for j := 0; j < 10; j++ {
			k := []byte(fmt.Sprintf("k%03d", (i*7+j)%150))
			switch (i + j) % 4 {
			case 0:
				inst = append(inst, enc(t, Command{Op: OpSet, Now: now, Keys: [][]byte{k}, Values: ks("v"), Int: now + int64((i*j)%50+1)}))
			case 1:
				inst = append(inst, enc(t, Command{Op: OpIncrBy, Now: now - 30, Keys: [][]byte{k}, Int: 1})) // a slow proposer clock
			case 2:
				inst = append(inst, enc(t, Command{Op: OpExpire, Now: now, Keys: [][]byte{k}, Int: now + int64(j)}))
			case 3:
				inst = append(inst, enc(t, Command{Op: OpGet, Now: now, Keys: [][]byte{k}}))
			}
		}
		log = append(log, inst)
		now += 7
	}
	dirA, dirB := t.TempDir(), t.TempDir()
	a, b := openStore(t, dirA, 1), openStore(t, dirB, 1)
	var resA, resB [][][]byte
	for i, inst := range log {
		r, err := a.Group(0).Execute(ids.InstanceID(i), inst)
		if err != nil {
			t.Fatal(err)
		}
		resA = append(resA, r)
		if i == len(log)/2 {
			_ = b.Close()
			b = openStore(t, dirB, 1)
		}
		r, err = b.Group(0).Execute(ids.InstanceID(i), inst)
		if err != nil {
			t.Fatal(err)
		}
		resB = append(resB, r)
	}
	if fmt.Sprint(resA) != fmt.Sprint(resB) {
		t.Fatal("results differ")
	}
	if da, db := dump(t, a), dump(t, b); da != db {
		t.Fatalf("contents differ:\n%s\n---\n%s", da, db)
	}
	a.Close()
	b.Close()
}

func dump(t *testing.T, s *Store) string {
	t.Helper()
	it, err := s.db.NewIter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	var buf bytes.Buffer
	for it.First(); it.Valid(); it.Next() {
		fmt.Fprintf(&buf, "%x=%x\n", it.Key(), it.Value())
	}
	return buf.String()
}

func TestExactlyOnceAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, 2)
	incr := Command{Op: OpIncrBy, Now: t0, Keys: ks("n"), Int: 1}
	for i := 0; i < 10; i++ {
		run(t, s.Group(1), incr, incr)
	}
	if got := s.Group(1).Applied(); got != 10 {
		t.Fatalf("applied %d, want 10", got)
	}
	// An instance below the applied point is never executed again.
	if _, err := s.Group(1).Execute(3, [][]byte{enc(t, incr)}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openStore(t, dir, 2)
	defer s.Close()
	if got := s.Group(1).Applied(); got != 10 {
		t.Fatalf("after reopen applied %d, want 10", got)
	}
	if got := s.Group(0).Applied(); got != 0 {
		t.Fatalf("group 0 applied %d, want 0", got)
	}
	if got := s.Group(1).Clock(); got != t0 {
		t.Fatalf("clock %d, want %d", got, t0)
	}
	wantReply(t, "value after reopen", run1(t, s.Group(1), Command{Op: OpGet, Now: t0, Keys: ks("n")}), replyBulk([]byte("20")))
	if got := s.Group(1).Applied(); got != 11 {
		t.Fatalf("applied %d, want 11", got)
	}
}

func TestOpenRefusesOtherGroupCount(t *testing.T) {
	dir := t.TempDir()
	openStore(t, dir, 8).Close()
	if _, err := Open(dir, Options{Groups: 16}); !errors.Is(err, ErrFormatMismatch) {
		t.Fatalf("err %v, want ErrFormatMismatch", err)
	}
	if _, err := Open(dir, Options{Groups: 0}); !errors.Is(err, ErrInvalidOptions) {
		t.Fatalf("err %v, want ErrInvalidOptions", err)
	}
}

func TestUndecodableCommandIsAReply(t *testing.T) {
	s := openStore(t, t.TempDir(), 1)
	defer s.Close()
	res, err := s.Group(0).Execute(0, [][]byte{{0x77, 1, 2}, enc(t, Command{Op: OpGet, Now: t0, Keys: ks("a")})})
	if err != nil {
		t.Fatal(err)
	}
	r, _ := DecodeReply(res[0])
	wantReply(t, "bad command", r, replyErr(ErrCodeBadCommand))
	if s.Group(0).Applied() != 1 {
		t.Fatal("instance not applied")
	}
}

func groupDump(t *testing.T, s *Store, g ids.GroupID) string {
	t.Helper()
	lo, hi := groupSpan(g)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	var buf bytes.Buffer
	for it.First(); it.Valid(); it.Next() {
		fmt.Fprintf(&buf, "%x=%x\n", it.Key(), it.Value())
	}
	return buf.String()
}

func TestParseInt(t *testing.T) {
	for s, want := range map[string]bool{"0": true, "-1": true, "123": true, "9223372036854775807": true,
		"-9223372036854775808": true, "9223372036854775808": false, "": false, "+1": false, "01": false,
		"-0": false, "1 ": false, "0x1": false} {
		if _, ok := ParseInt([]byte(s)); ok != want {
			t.Errorf("ParseInt(%q) ok=%v, want %v", s, ok, want)
		}
	}
}

func TestClientOverDirect(t *testing.T) {
	s := openStore(t, t.TempDir(), 8)
	defer s.Close()
	now := time.UnixMilli(t0)
	c, err := NewClient(ClientOptions{Engine: NewDirect(s), Store: s, Clock: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	keys := ks("a", "b", "c", "d", "e", "f", "g", "h", "i", "j")
	groups := map[ids.GroupID]bool{}
	for _, k := range keys {
		groups[GroupOf(k, 8)] = true
	}
	if len(groups) < 3 {
		t.Fatalf("test keys fall in %d groups only", len(groups))
	}
	vals := make([][]byte, len(keys))
	for i := range keys {
		vals[i] = []byte(fmt.Sprint(i))
	}
	r, err := c.Do(ctx, Command{Op: OpMSet, Keys: keys, Values: vals})
	if err != nil || r.Kind != KindOK {
		t.Fatalf("mset: %+v %v", r, err)
	}
	r, err = c.Do(ctx, Command{Op: OpMGet, Keys: append(ks("zz"), keys...)})
	if err != nil || len(r.Array) != len(keys)+1 || r.Array[0].Kind != KindNil {
		t.Fatalf("mget: %+v %v", r, err)
	}
	for i := range keys {
		if string(r.Array[i+1].Bulk) != fmt.Sprint(i) {
			t.Fatalf("mget[%d] = %q", i, r.Array[i+1].Bulk)
		}
	}
	stale, err := c.ReadStale(Command{Op: OpMGet, Keys: keys})
	if err != nil || fmt.Sprint(stale.Array) != fmt.Sprint(r.Array[1:]) {
		t.Fatalf("stale mget: %+v %v", stale, err)
	}
	if r, err := c.Do(ctx, Command{Op: OpDBSize}); err != nil || r.Int != 10 {
		t.Fatalf("dbsize %+v %v", r, err)
	}
	if r, err := c.ReadStale(Command{Op: OpDBSize}); err != nil || r.Int != 10 {
		t.Fatalf("stale dbsize %+v %v", r, err)
	}
	if r, err := c.Do(ctx, Command{Op: OpExists, Keys: ks("a", "b", "nope", "a")}); err != nil || r.Int != 3 {
		t.Fatalf("exists %+v %v", r, err)
	}
	if n, err := c.Del(ctx, ks("a", "b", "c", "nope")...); err != nil || n != 3 {
		t.Fatalf("del %d %v", n, err)
	}
	if err := c.Set(ctx, []byte("t"), []byte("v"), time.Second); err != nil {
		t.Fatal(err)
	}
	if r, err := c.Do(ctx, Command{Op: OpTTL, Keys: ks("t")}); err != nil || r.Int != 1000 {
		t.Fatalf("ttl %+v %v", r, err)
	}
	now = now.Add(time.Second)
	if _, ok, err := c.Get(ctx, []byte("t")); ok || err != nil {
		t.Fatalf("expired key: %v %v", ok, err)
	}
	if n, err := c.IncrBy(ctx, []byte("n"), 41); n != 41 || err != nil {
		t.Fatalf("incrby %d %v", n, err)
	}
	if _, err := c.IncrBy(ctx, []byte("d"), 1); err != nil {
		t.Fatal(err) // "3" is an integer
	}
	if err := c.Set(ctx, []byte("s"), []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.IncrBy(ctx, []byte("s"), 1); !errors.Is(err, ErrNotInteger) {
		t.Fatalf("incr of a string: %v", err)
	}
	if _, err := c.Do(ctx, Command{Op: OpGet}); !errors.Is(err, ErrBadCommand) {
		t.Fatalf("get without key: %v", err)
	}
	if _, err := c.ReadStale(Command{Op: OpSet, Keys: ks("a"), Values: ks("b")}); !errors.Is(err, ErrNotRead) {
		t.Fatalf("stale write: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.Do(cctx, Command{Op: OpMSet, Keys: keys, Values: vals}); err == nil {
		t.Fatal("canceled mset succeeded")
	}
}

// TestReadLocalConcurrentWithExecute: ReadLocal reads a snapshot, so a multi-key
// read never sees half of an instance, even while Execute runs (follower reads
// after a barrier do exactly this).
func TestReadLocalConcurrentWithExecute(t *testing.T) {
	s := openStore(t, t.TempDir(), 1)
	defer s.Close()
	done := make(chan struct{})
	var execErr error
	go func() {
		defer close(done)
		for i := 0; i < 300 && execErr == nil; i++ {
			v := []byte(fmt.Sprint(i))
			b, _ := EncodeCommand(&Command{Op: OpMSet, Now: t0, Keys: ks("a", "b"), Values: [][]byte{v, v}})
			_, execErr = s.Group(0).Execute(ids.InstanceID(i), [][]byte{b})
		}
	}()
	defer func() {
		<-done
		if execErr != nil {
			t.Fatal(execErr)
		}
	}()
	for reads := 0; ; reads++ {
		r, err := s.ReadLocal(0, Command{Op: OpMGet, Now: t0, Keys: ks("a", "b")})
		if err != nil {
			t.Fatal(err)
		}
		if a, b := r.Array[0], r.Array[1]; a.Kind != b.Kind || !bytes.Equal(a.Bulk, b.Bulk) {
			t.Fatalf("read %d saw half an instance: %+v", reads, r)
		}
		select {
		case <-done:
			return
		default:
		}
	}
}

// notMasterEngine is a Direct engine whose lease reads always say another node is
// master, and that counts the paths reads take.
type notMasterEngine struct {
	*Direct
	// Fan-out runs reads of different groups concurrently, hence atomics.
	proposes, leaseReads, barriers atomic.Int64
}

func (e *notMasterEngine) Propose(ctx context.Context, g ids.GroupID, cmd []byte) (node.Result, error) {
	e.proposes.Add(1)
	return e.Direct.Propose(ctx, g, cmd)
}

func (e *notMasterEngine) LeaseRead(context.Context, ids.GroupID, func() error) error {
	e.leaseReads.Add(1)
	return &node.NotMasterError{Master: 2}
}

func (e *notMasterEngine) ReadBarrier(context.Context, ids.GroupID) error {
	e.barriers.Add(1)
	return nil
}

func TestReadPaths(t *testing.T) {
	s := openStore(t, t.TempDir(), 4)
	defer s.Close()
	ctx := context.Background()

	// On the master: a lease read, no proposal.
	c, _ := NewClient(ClientOptions{Engine: NewDirect(s), Store: s})
	if err := c.Set(ctx, []byte("k"), []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	before := s.Group(GroupOf([]byte("k"), 4)).Applied()
	if v, ok, err := c.Get(ctx, []byte("k")); err != nil || !ok || string(v) != "v" {
		t.Fatalf("lease read: %q %v %v", v, ok, err)
	}
	if s.Group(GroupOf([]byte("k"), 4)).Applied() != before {
		t.Fatal("a lease read went through the log")
	}

	// Not the master: the read goes through the log (forwarded by the engine).
	direct := &notMasterEngine{Direct: NewDirect(s)}
	c, _ = NewClient(ClientOptions{Engine: direct, Store: s})
	if v, ok, err := c.Get(ctx, []byte("k")); err != nil || !ok || string(v) != "v" {
		t.Fatalf("forwarded read: %q %v %v", v, ok, err)
	}
	if direct.leaseReads.Load() != 1 || direct.proposes.Load() != 1 {
		t.Fatalf("lease reads %d, proposals %d; want 1 and 1", direct.leaseReads.Load(), direct.proposes.Load())
	}

	// Follower reads: a barrier, then a local read; no proposal.
	r, err := c.DoMode(ctx, Command{Op: OpMGet, Keys: ks("k", "nope")}, ReadFollower)
	if err != nil || string(r.Array[0].Bulk) != "v" || r.Array[1].Kind != KindNil {
		t.Fatalf("follower read: %+v %v", r, err)
	}
	if direct.barriers.Load() < 1 || direct.proposes.Load() != 1 {
		t.Fatalf("barriers %d, proposals %d", direct.barriers.Load(), direct.proposes.Load())
	}

	// Stale reads touch nothing but the store.
	r, err = c.DoMode(ctx, Command{Op: OpGet, Keys: ks("k")}, ReadStale)
	if err != nil || string(r.Bulk) != "v" || direct.proposes.Load() != 1 || direct.leaseReads.Load() != 1 {
		t.Fatalf("stale read: %+v %v", r, err)
	}

	// Without a store every read goes through the log.
	direct.proposes.Store(0)
	c, _ = NewClient(ClientOptions{Engine: direct})
	if _, _, err := c.Get(ctx, []byte("k")); err != nil || direct.proposes.Load() != 1 {
		t.Fatalf("no store: %v, %d proposals", err, direct.proposes.Load())
	}
	if _, err := c.DoMode(ctx, Command{Op: OpGet, Keys: ks("k")}, ReadStale); !errors.Is(err, ErrInvalidOptions) {
		t.Fatalf("stale read without a store: %v", err)
	}
}
