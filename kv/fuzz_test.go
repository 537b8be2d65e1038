package kv

import (
	"testing"
)

// FuzzExecute feeds arbitrary bytes to Execute as a command: every member must
// answer the same without an error or a panic (a panic would stop every replica
// at the same instance), whatever a buggy or hostile proposer put in the log.
func FuzzExecute(f *testing.F) {
	for _, c := range []Command{
		{Op: OpSet, Now: t0, Keys: ks("k"), Values: ks("v"), Int: t0 + 10, Flags: SetGet | SetKeepTTL},
		{Op: OpIncrBy, Now: t0, Keys: ks("k"), Int: -5},
		{Op: OpMSet, Now: t0, Keys: ks("a", "b"), Values: ks("1", "2")},
		{Op: OpExpire, Now: t0, Keys: ks("a"), Int: -1, Flags: ExpireGT | ExpireLT},
		{Op: OpMGet, Now: -1, Keys: ks("a", "")},
		{Op: OpDBSize},
	} {
		b, err := EncodeCommand(&c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{CommandVersion, 0x90})
	s, err := Open(f.TempDir(), Options{Groups: 1, CacheSize: 1 << 20, MemTableSize: 1 << 20})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	f.Fuzz(func(t *testing.T, cmd []byte) {
		sm := s.Group(0)
		res, err := sm.Execute(sm.Applied(), [][]byte{cmd})
		if err != nil {
			t.Fatalf("Execute: %v", err)
		}
		if _, err := DecodeReply(res[0]); err != nil {
			t.Fatalf("reply: %v", err)
		}
	})
}
