package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/multipaxos/engine/ids"
)

// memCluster runs replicas in this process (startReplica), so that a test can
// stop, restart and add them with other peer lists.
type memCluster struct {
	t        *testing.T
	dir      string
	groups   int
	pass     string
	peer     map[ids.NodeID]string // every peer address a replica may be given
	resp     map[ids.NodeID]string
	replicas map[ids.NodeID]*replica
}

const adminTestPass = "admin-test-pass"

func newMemCluster(t *testing.T, groups, nodes int) *memCluster {
	ports := freePorts(t, 2*nodes)
	c := &memCluster{t: t, dir: t.TempDir(), groups: groups, pass: adminTestPass,
		peer: map[ids.NodeID]string{}, resp: map[ids.NodeID]string{}, replicas: map[ids.NodeID]*replica{}}
	for i := 0; i < nodes; i++ {
		id := ids.NodeID(i + 1)
		c.peer[id] = fmt.Sprintf("127.0.0.1:%d", ports[i])
		c.resp[id] = fmt.Sprintf("127.0.0.1:%d", ports[nodes+i])
	}
	t.Cleanup(func() {
		for id := range c.replicas {
			c.stop(id)
		}
	})
	return c
}

// start starts replica id with the peers named (its --peers) and initial voters.
func (c *memCluster) start(id ids.NodeID, peers []ids.NodeID, initialVoters []ids.NodeID) {
	c.t.Helper()
	members := map[ids.NodeID]string{}
	for _, p := range peers {
		members[p] = c.peer[p]
	}
	r, err := startReplica(replicaConfig{
		ID: id, ClusterID: 1, ClusterSecret: []byte(testClusterSecret), Members: members,
		RESP: c.resp[id], DataDir: filepath.Join(c.dir, fmt.Sprint("replica", id)), Groups: c.groups,
		Password: c.pass, Timeout: 5 * time.Second, Logger: zap.NewNop(), StoreMemory: 8 << 20,
		InitialVoters: initialVoters,
	})
	if err != nil {
		c.t.Fatalf("replica %d: %v", id, err)
	}
	c.replicas[id] = r
}

func (c *memCluster) stop(id ids.NodeID) {
	c.t.Helper()
	if err := c.replicas[id].close(); err != nil {
		c.t.Errorf("replica %d: %v", id, err)
	}
	delete(c.replicas, id)
}

// client is a new client of replica id (replicas restart: no pooled connections
// are kept between calls); the caller closes it.
func (c *memCluster) client(id ids.NodeID) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: c.resp[id], Password: c.pass, MaxRetries: -1,
		ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second, PoolSize: 2})
}

// admin runs SHARDKV args... on replica id and returns the reply or error text.
func (c *memCluster) admin(id ids.NodeID, args ...string) (any, string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := []any{"SHARDKV"}
	for _, a := range args {
		cmd = append(cmd, a)
	}
	cl := c.client(id)
	defer cl.Close()
	v, err := cl.Do(ctx, cmd...).Result()
	if err != nil {
		return nil, err.Error()
	}
	return v, ""
}

// mustAdmin is admin that wants the reply want.
func (c *memCluster) mustAdmin(id ids.NodeID, want string, args ...string) {
	c.t.Helper()
	v, errText := c.admin(id, args...)
	if errText != "" || v != want {
		c.t.Fatalf("replica %d: SHARDKV %s = %v %s, want %q", id, strings.Join(args, " "), v, errText, want)
	}
}

// adminErr is admin that wants an error containing want.
func (c *memCluster) adminErr(id ids.NodeID, want string, args ...string) {
	c.t.Helper()
	v, errText := c.admin(id, args...)
	if !strings.Contains(errText, want) {
		c.t.Errorf("replica %d: SHARDKV %s = %v %q, want an error with %q", id, strings.Join(args, " "), v, errText, want)
	}
}

// members returns MEMBERS * on replica id, one line per group.
func (c *memCluster) members(id ids.NodeID) []string {
	c.t.Helper()
	v, errText := c.admin(id, "MEMBERS", "*")
	if errText != "" {
		c.t.Fatalf("replica %d: MEMBERS: %s", id, errText)
	}
	var lines []string
	for _, l := range v.([]any) {
		lines = append(lines, l.(string))
	}
	if len(lines) != c.groups {
		c.t.Fatalf("replica %d: MEMBERS has %d lines for %d groups: %q", id, len(lines), c.groups, lines)
	}
	return lines
}

// wantVoters checks every group's voters and followers in replica id's view.
func (c *memCluster) wantVoters(id ids.NodeID, voters, followers string) {
	c.t.Helper()
	for g, l := range c.members(id) {
		prefix := fmt.Sprintf("group=%d voters=%s followers=%s master=", g, voters, followers)
		if !strings.HasPrefix(l, prefix) {
			c.t.Fatalf("replica %d: %q, want %q...", id, l, prefix)
		}
	}
}

// write sets keys prefix0.. prefix{n-1} through replica id; a write whose
// outcome is unknown (a master changed under it) is simply written again.
func (c *memCluster) write(id ids.NodeID, prefix string, n int) {
	c.t.Helper()
	cl := c.client(id)
	defer cl.Close()
	for i := 0; i < n; i++ {
		k := fmt.Sprint(prefix, i)
		var err error
		for try := 0; try < 5; try++ {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err = cl.Set(ctx, k, "v-"+k, 0).Err()
			cancel()
			if err == nil || !(strings.HasPrefix(err.Error(), "UNKNOWN") || strings.HasPrefix(err.Error(), "TRYAGAIN")) {
				break
			}
		}
		if err != nil {
			c.t.Fatalf("replica %d: SET %s: %v", id, k, err)
		}
	}
}

// readAll reads every key written with these prefixes on replica id in read
// mode mode (follower: after a read barrier on that replica).
func (c *memCluster) readAll(id ids.NodeID, mode string, n int, prefixes ...string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cl := c.client(id)
	defer cl.Close()
	conn := cl.Conn()
	defer conn.Close()
	if err := conn.Do(ctx, "READMODE", mode).Err(); err != nil {
		c.t.Fatal(err)
	}
	for _, p := range prefixes {
		for i := 0; i < n; i++ {
			k := fmt.Sprint(p, i)
			v, err := conn.Get(ctx, k).Result()
			for err != nil && strings.HasPrefix(err.Error(), "TRYAGAIN") && ctx.Err() == nil {
				time.Sleep(50 * time.Millisecond) // still catching up
				v, err = conn.Get(ctx, k).Result()
			}
			if err != nil || v != "v-"+k {
				c.t.Fatalf("replica %d (%s): GET %s = %q, %v", id, mode, k, v, err)
			}
		}
	}
}

var masterField = regexp.MustCompile(`master=(\d+)`)

// TestAdminMembershipCommands drives SHARDKV on a 3-replica cluster: a member
// removed and re-added under writes catches up, and every error case replies
// with an error that says what is wrong.
func TestAdminMembershipCommands(t *testing.T) {
	const groups, keys = 4, 12
	c := newMemCluster(t, groups, 3)
	all := []ids.NodeID{1, 2, 3}
	for _, id := range all {
		c.start(id, all, nil)
	}

	// The same AUTH as every other command.
	anon := redis.NewClient(&redis.Options{Addr: c.resp[1], MaxRetries: -1})
	defer anon.Close()
	if err := anon.Do(context.Background(), "SHARDKV", "MEMBERS").Err(); err == nil || !strings.HasPrefix(err.Error(), "NOAUTH") {
		t.Errorf("SHARDKV without AUTH: %v", err)
	}

	c.wantVoters(1, "1,2,3", "")
	c.write(1, "a", keys)
	c.mustAdmin(2, fmt.Sprintf("OK changed=%d unchanged=0", groups), "REMOVEMEMBER", "3", "*")
	c.mustAdmin(1, fmt.Sprintf("OK changed=0 unchanged=%d", groups), "removemember", "3", "*")
	c.wantVoters(1, "1,2", "")
	c.write(1, "b", keys) // node 3 misses these
	c.adminErr(1, "ERR group 0: node 7 is not a voter", "CHANGEMEMBER", "7", "3", "0")
	c.write(2, "c", keys)
	c.mustAdmin(1, fmt.Sprintf("OK changed=%d unchanged=0", groups), "ADDMEMBER", "3", "*")
	c.wantVoters(1, "1,2,3", "") // applied on the replica that ran it
	c.write(3, "d", keys)        // through the re-added member
	c.readAll(3, "follower", keys, "a", "b", "c", "d")
	c.wantVoters(3, "1,2,3", "")
	c.mustAdmin(3, "OK changed=0 unchanged=1", "ADDMEMBER", "3", "0")

	// One group: a follower, promoted; CHANGEMEMBER asking for what holds.
	c.mustAdmin(2, "OK changed=1 unchanged=0", "REMOVEMEMBER", "3", "1")
	c.mustAdmin(2, "OK changed=1 unchanged=0", "ADDFOLLOWER", "3", "1")
	if l := c.members(2)[1]; !strings.HasPrefix(l, "group=1 voters=1,2 followers=3 ") {
		t.Fatalf("after ADDFOLLOWER: %q", l)
	}
	c.write(1, "e", keys)
	c.mustAdmin(1, "OK changed=1 unchanged=0", "ADDMEMBER", "3", "1")
	c.readAll(3, "follower", keys, "e")

	// Mistakes.
	c.adminErr(1, "ERR 4 of 4 groups failed (changed=0 unchanged=0): groups 0-3: node: not a node of the cluster: 9", "ADDMEMBER", "9", "*")
	c.adminErr(1, "ERR group 0: node 3 is a voter; REMOVEMEMBER it first", "ADDFOLLOWER", "3", "0")
	c.adminErr(1, "ERR group 2: node 2 is already a voter; REMOVEMEMBER 1 instead", "CHANGEMEMBER", "1", "2", "2")
	c.adminErr(1, "ERR group 2: node: not a node of the cluster: 8", "CHANGEMEMBER", "1", "8", "2")
	c.adminErr(1, "ERR CHANGEMEMBER wants two different nodes", "CHANGEMEMBER", "2", "2", "*")
	c.adminErr(1, "ERR invalid group '4': want 0 .. 3 or *", "MEMBERS", "4")
	c.adminErr(1, "ERR invalid group 'x': want 0 .. 3 or *", "REMOVEMEMBER", "2", "x")
	c.adminErr(1, "ERR invalid node ID '0'", "ADDMEMBER", "0", "*")
	c.adminErr(1, "ERR wrong number of arguments for 'shardkv|addmember' command", "ADDMEMBER", "2")
	c.adminErr(1, "ERR unknown subcommand 'SLOTS'. Try SHARDKV HELP.", "SLOTS")
	c.adminErr(1, "ERR MASTERCANDIDATE wants yes or no", "MASTERCANDIDATE", "maybe", "*")
	c.mustAdmin(1, "OK", "MASTERCANDIDATE", "no", "*")
	c.mustAdmin(1, "OK", "MASTERCANDIDATE", "yes", "0")
	if v, errText := c.admin(1, "HELP"); errText != "" || !strings.Contains(fmt.Sprint(v), "TRANSFERMASTER <node> <group>|*") {
		t.Errorf("HELP: %v %s", v, errText)
	}

	// TRANSFERMASTER runs on the master: find a group with one, hand it over.
	var g, from int
	for try := 0; from == 0; try++ {
		if try == 50 {
			t.Fatal("no group has a master after writes")
		}
		c.write(1, "f", 4)
		for i, l := range c.members(1) {
			if m := masterField.FindStringSubmatch(l); m != nil && m[1] != "0" {
				g, from = i, atoi(m[1])
				break
			}
		}
	}
	to := from%3 + 1
	other := 6 - from - to
	v, errText := c.admin(ids.NodeID(from), "TRANSFERMASTER", fmt.Sprint(to), fmt.Sprint(g))
	if errText != "" && !strings.Contains(errText, "not the master") { // its lease may have lapsed meanwhile
		t.Errorf("TRANSFERMASTER %d %d on node %d: %v %s", to, g, from, v, errText)
	} else if errText == "" && v != "OK transferred=1 unchanged=0 skipped=0" {
		t.Errorf("TRANSFERMASTER %d %d on node %d: %v", to, g, from, v)
	}
	c.adminErr(ids.NodeID(other), "master", "TRANSFERMASTER", fmt.Sprint(other), fmt.Sprint(g))
	// With *: the groups this replica masters; the others are skipped.
	if v, errText := c.admin(ids.NodeID(from), "TRANSFERMASTER", fmt.Sprint(to), "*"); errText != "" || !strings.HasPrefix(fmt.Sprint(v), "OK transferred=") {
		t.Errorf("TRANSFERMASTER %d * on node %d: %v %s", to, from, v, errText)
	}
	c.write(2, "g", keys)
	c.readAll(1, "linearizable", keys, "a", "b", "c", "d", "e", "g")
}

// TestAddReplicaByRollingRestart follows docs/operations.md: the three replicas
// are restarted one at a time with node 4 in their peers and the original voters
// as --initial-voters, node 4 starts empty, follows every group, and replaces
// node 3, which can then stop without the cluster noticing.
func TestAddReplicaByRollingRestart(t *testing.T) {
	const groups, keys = 4, 12
	c := newMemCluster(t, groups, 4)
	old, grown := []ids.NodeID{1, 2, 3}, []ids.NodeID{1, 2, 3, 4}
	for _, id := range old {
		c.start(id, old, nil)
	}
	c.write(1, "a", keys)
	for _, id := range old {
		c.stop(id)
		c.write(id%3+1, fmt.Sprint("r", id, "-"), 2) // the other two serve meanwhile
		c.start(id, grown, old)
	}
	c.start(4, grown, old)
	c.wantVoters(1, "1,2,3", "")
	c.mustAdmin(1, fmt.Sprintf("OK changed=%d unchanged=0", groups), "ADDFOLLOWER", "4", "*")
	c.write(2, "b", keys)
	c.readAll(4, "follower", keys, "a", "b") // caught up
	c.readAll(4, "follower", 2, "r1-", "r2-", "r3-")
	c.mustAdmin(2, fmt.Sprintf("OK changed=%d unchanged=0", groups), "CHANGEMEMBER", "3", "4", "*")
	c.wantVoters(2, "1,2,4", "")
	c.stop(3)
	c.write(4, "c", keys)
	c.readAll(1, "linearizable", keys, "a", "b", "c")
	c.readAll(4, "follower", keys, "a", "b", "c")
}

// TestForgetPeerReadmitsWipedReplica follows docs/operations.md 3.2: replica 3
// restarts on a wiped disk under its old ID and replicas 1 and 2 refuse it; it
// is removed from every group, FORGETPEER on 1 and 2 lets its new store in, and
// added back it learns what was written before and after the wipe.
func TestForgetPeerReadmitsWipedReplica(t *testing.T) {
	const groups, keys = 4, 12
	c := newMemCluster(t, groups, 3)
	all := []ids.NodeID{1, 2, 3}
	for _, id := range all {
		c.start(id, all, nil)
	}
	for _, id := range all {
		c.write(id, fmt.Sprint("a", id, "-"), keys) // every replica meets every other
	}
	c.readAll(3, "follower", keys, "a1-", "a2-", "a3-")
	waitUntil(t, "every store verified", func() bool {
		return c.replicas[1].node.Stats().Verified && c.replicas[2].node.Stats().Verified && c.replicas[3].node.Stats().Verified
	})

	c.stop(3)
	if err := os.RemoveAll(filepath.Join(c.dir, "replica3")); err != nil {
		t.Fatal(err)
	}
	c.start(3, all, nil)
	waitUntil(t, "replicas 1 and 2 refuse the new store", func() bool {
		return c.replicas[1].node.Stats().PeersRefused > 0 && c.replicas[2].node.Stats().PeersRefused > 0
	})
	if info := c.info(1, "paxos"); !regexp.MustCompile(`peers_refused:[1-9]`).MatchString(info) || !strings.Contains(info, "store_verified:1") {
		t.Errorf("INFO paxos on replica 1: %q", info)
	}
	if info := c.info(3, "paxos"); !strings.Contains(info, "store_verified:0") {
		t.Errorf("INFO paxos on the wiped replica: %q", info)
	}
	c.write(2, "b", keys) // 1 and 2 serve without it
	c.adminErr(1, "ERR node 3 still votes in groups 0-3 as this replica knows it", "FORGETPEER", "3")
	c.adminErr(1, "ERR node 1 is this replica", "FORGETPEER", "1")

	c.mustAdmin(1, fmt.Sprintf("OK changed=%d unchanged=0", groups), "REMOVEMEMBER", "3", "*")
	c.mustAdmin(1, "OK", "FORGETPEER", "3")
	waitUntil(t, "FORGETPEER 3 on replica 2", func() bool { // once it applied the removals
		v, _ := c.admin(2, "FORGETPEER", "3")
		return v == "OK"
	})
	waitUntil(t, "the new store verified", func() bool { return c.replicas[3].node.Stats().Verified })
	c.mustAdmin(2, fmt.Sprintf("OK changed=%d unchanged=0", groups), "ADDMEMBER", "3", "*")
	c.readAll(3, "follower", keys, "a1-", "a2-", "a3-", "b")
	c.write(3, "c", keys)
	c.readAll(1, "linearizable", keys, "a3-", "b", "c")
	c.wantVoters(3, "1,2,3", "")
}

// info returns INFO section on replica id.
func (c *memCluster) info(id ids.NodeID, section string) string {
	c.t.Helper()
	cl := c.client(id)
	defer cl.Close()
	s, err := cl.Info(context.Background(), section).Result()
	if err != nil {
		c.t.Fatalf("replica %d: INFO %s: %v", id, section, err)
	}
	return s
}

// waitUntil polls cond for up to 60 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(60 * time.Second); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting: %s", what)
		}
	}
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}
