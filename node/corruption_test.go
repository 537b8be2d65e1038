package node

import (
	"context"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/multipaxos/engine/ids"
)

// TestCorruptLogRepairedFromPeers: node 3's log gets flipped bytes in chosen
// records while it is down (a bit flip that Pebble's own block checksums did not
// see, as when it happened before the write). On restart the record checksums
// catch them, node 3 learns those instances again from its peers instead of
// applying garbage, and every member ends with the same state.
func TestCorruptLogRepairedFromPeers(t *testing.T) {
	const groups, perGroup = 4, 40
	tc := newTestCluster(t, 3, groups)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	propose := func(n int) {
		t.Helper()
		for g := range groups {
			for i := range n {
				if _, err := tc.nodes[1].Propose(ctx, ids.GroupID(g), []byte(fmt.Sprint("g", g, "-", i, "-", time.Now().UnixNano()))); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	propose(perGroup)
	tc.waitConverged(30 * time.Second)
	tc.stop(3)

	db, err := pebble.Open(filepath.Join(tc.dirs[3], "log"), &pebble.Options{Logger: quietPebble{}})
	if err != nil {
		t.Fatal(err)
	}
	flipped := 0
	for g := range groups {
		for _, inst := range []uint64{2, 11, 23} { // all chosen: perGroup instances and more
			key := make([]byte, 13)
			binary.BigEndian.PutUint32(key, uint32(g))
			key[4] = 0x03 // a log record (logstore/keys.go)
			binary.BigEndian.PutUint64(key[5:], inst)
			v, closer, err := db.Get(key)
			if err != nil {
				t.Fatalf("group %d instance %d: %v", g, inst, err)
			}
			bad := append([]byte(nil), v...)
			closer.Close()
			bad[len(bad)/2] ^= 0x40
			if err := db.Set(key, bad, pebble.Sync); err != nil {
				t.Fatal(err)
			}
			flipped++
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	tc.start(3)
	var repairs uint64
	for g := range groups {
		s, err := tc.nodes[3].GroupStats(ctx, ids.GroupID(g))
		if err != nil {
			t.Fatal(err)
		}
		repairs += s.Repairs
	}
	if repairs != groups {
		t.Fatalf("%d repairs after corrupting records in %d groups", repairs, groups)
	}
	propose(10)
	tc.waitConverged(60 * time.Second)
	t.Logf("%d records corrupted in %d groups, %d repairs, all members converged", flipped, groups, repairs)
}

type quietPebble struct{}

func (quietPebble) Infof(string, ...any)  {}
func (quietPebble) Errorf(string, ...any) {}
func (quietPebble) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf(format, args...))
}
