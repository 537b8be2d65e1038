package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/redis/go-redis/v9"
)

// The history model: every key is an integer register that can be absent.

type opKind uint8

const (
	opGet opKind = iota
	opSet
	opIncr
	opDel
)

type regInput struct {
	key   string
	kind  opKind
	value int64 // opSet
}

type regOutput struct {
	exists  bool
	value   int64 // opGet: the value read; opIncr: the new value; opDel: keys deleted
	unknown bool  // the write's outcome is unknown: any output, applied or not
}

type regState struct {
	exists bool
	value  int64
}

var registerModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(regInput).key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		var out [][]porcupine.Operation
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() interface{} { return regState{} },
	Step: func(state, input, output interface{}) (bool, interface{}) {
		st, in, out := state.(regState), input.(regInput), output.(regOutput)
		switch in.kind {
		case opGet:
			return out.exists == st.exists && (!st.exists || out.value == st.value), st
		case opSet:
			return true, regState{exists: true, value: in.value}
		case opIncr:
			next := regState{exists: true, value: st.value + 1}
			if !st.exists {
				next.value = 1
			}
			return out.unknown || out.value == next.value, next
		case opDel:
			want := int64(0)
			if st.exists {
				want = 1
			}
			return out.unknown || out.value == want, regState{}
		}
		return false, st
	},
	DescribeOperation: func(input, output interface{}) string {
		in, out := input.(regInput), output.(regOutput)
		res := fmt.Sprint(out.value)
		if out.unknown {
			res = "?"
		} else if in.kind == opGet && !out.exists {
			res = "nil"
		}
		return fmt.Sprintf("%s %v %d -> %s", in.key, []string{"get", "set", "incr", "del"}[in.kind], in.value, res)
	},
}

// history collects operations from many goroutines.
type history struct {
	mu    sync.Mutex
	start time.Time
	ops   []porcupine.Operation
}

func (h *history) now() int64 { return int64(time.Since(h.start)) }

func (h *history) add(client int, in regInput, call int64, out regOutput, ret int64) {
	h.mu.Lock()
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
	h.mu.Unlock()
}

// write records a write: its inputs, each optionally followed by its output. A
// write that certainly did not run (refused connection, TRYAGAIN) is left out; one
// that may have run is indeterminate: Return = MaxInt64 and any output.
func (h *history) write(client int, call int64, err error, st *loadStats, parts ...any) {
	if err != nil && notExecuted(err) {
		st.notExecuted.Add(1)
		return
	}
	ret := h.now()
	if err != nil {
		ret = math.MaxInt64
	}
	for i := 0; i < len(parts); i++ {
		in := parts[i].(regInput)
		out := regOutput{}
		if i+1 < len(parts) {
			if o, ok := parts[i+1].(regOutput); ok {
				out = o
				i++
			}
		}
		out.unknown = err != nil
		h.add(client, in, call, out, ret)
	}
}

// notExecuted says whether a failed command certainly did not run: the
// connection was never made, or the server said TRYAGAIN (see package kv/server).
func notExecuted(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	return strings.HasPrefix(err.Error(), "TRYAGAIN ")
}

// loadStats counts what the load did.
type loadStats struct {
	ok, failedReads, notExecuted, acked atomic.Int64
}

// worker runs random operations until ctx ends. Reads that fail are dropped;
// writes that fail are indeterminate (Return = MaxInt64, any outcome).
//
// The keys change every epochLen (keys of epoch e are "e<e>-k<i>"): an
// indeterminate write can be linearized anywhere after its call, which makes the
// check's search grow with everything that follows it on its key; fresh keys
// bound that to one epoch.
func worker(ctx context.Context, id int, seed uint64, clients []*redis.Client, nkeys int, h *history, st *loadStats, acked *sync.Map) {
	rng := rand.New(rand.NewPCG(seed, uint64(id)))
	clientID := id * 1000
	seq := 0
	for ctx.Err() == nil {
		seq++
		cl := clients[rng.IntN(len(clients))]
		call := h.now()
		keys := epochKeys(epochOf(call), nkeys)
		k := keys[rng.IntN(len(keys))]
		k2 := keys[rng.IntN(len(keys))]
		opCtx, cancel := context.WithTimeout(context.Background(), 6*time.Second)
		unique := int64(id)*1_000_000_000 + int64(seq)
		var err error
		switch p := rng.IntN(100); {
		case p < 35:
			var v string
			v, err = cl.Get(opCtx, k).Result()
			switch {
			case errors.Is(err, redis.Nil):
				h.add(clientID, regInput{key: k, kind: opGet}, call, regOutput{}, h.now())
				err = nil
			case err == nil:
				n, perr := strconv.ParseInt(v, 10, 64)
				if perr != nil {
					panic(fmt.Sprintf("GET %s returned %q", k, v))
				}
				h.add(clientID, regInput{key: k, kind: opGet}, call, regOutput{exists: true, value: n}, h.now())
			default:
				st.failedReads.Add(1)
			}
		case p < 45:
			var vs []interface{}
			vs, err = cl.MGet(opCtx, k, k2).Result()
			if err == nil {
				ret := h.now()
				for i, key := range []string{k, k2} {
					out := regOutput{}
					if s, ok := vs[i].(string); ok {
						out.exists = true
						out.value, _ = strconv.ParseInt(s, 10, 64)
					}
					h.add(clientID, regInput{key: key, kind: opGet}, call, out, ret)
				}
			} else {
				st.failedReads.Add(1)
			}
		case p < 65:
			err = cl.Set(opCtx, k, unique, 0).Err()
			h.write(clientID, call, err, st, regInput{key: k, kind: opSet, value: unique})
		case p < 75:
			// Two keys, maybe in two groups: each key's part is a write
			// somewhere inside the call.
			if k2 == k {
				k2 = keys[(rng.IntN(len(keys)-1)+1+indexOf(keys, k))%len(keys)]
			}
			err = cl.MSet(opCtx, k, unique, k2, unique+500_000_000).Err()
			h.write(clientID, call, err, st, regInput{key: k, kind: opSet, value: unique},
				regInput{key: k2, kind: opSet, value: unique + 500_000_000})
		case p < 88:
			var n int64
			n, err = cl.Incr(opCtx, k).Result()
			h.write(clientID, call, err, st, regInput{key: k, kind: opIncr}, regOutput{value: n})
		case p < 93:
			var n int64
			n, err = cl.Del(opCtx, k).Result()
			h.write(clientID, call, err, st, regInput{key: k, kind: opDel}, regOutput{value: n})
		default:
			// A write that must survive everything once acknowledged.
			ak := fmt.Sprintf("ack-%d-%d", id, seq)
			if err = cl.Set(opCtx, ak, unique, 0).Err(); err == nil {
				acked.Store(ak, strconv.FormatInt(unique, 10))
				st.acked.Add(1)
			}
		}
		cancel()
		if err != nil {
			// The worker goes on as a new client: an indeterminate operation
			// may still be pending.
			clientID++
			if rng.IntN(2) == 0 {
				time.Sleep(20 * time.Millisecond)
			}
			continue
		}
		st.ok.Add(1)
	}
}

const epochLen = 3 * time.Second

func epochOf(t int64) int { return int(t / int64(epochLen)) }

func epochKeys(epoch, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("e%d-k%d", epoch, i)
	}
	return keys
}

func indexOf(s []string, k string) int {
	for i, x := range s {
		if x == k {
			return i
		}
	}
	return 0
}

// nemesis injects one fault at a time until ctx ends and returns the count.
type nemesis func(ctx context.Context, c *cluster, rng *rand.Rand) int

// killOnce is the CI nemesis: SIGKILL one replica a second in, restart it a
// second later.
func killOnce(ctx context.Context, c *cluster, rng *rand.Rand) int {
	i := rng.IntN(3)
	select {
	case <-ctx.Done():
		return 0
	case <-time.After(time.Second):
	}
	c.t.Logf("nemesis: SIGKILL replica %d", c.procs[i].id)
	c.kill(i)
	time.Sleep(time.Second)
	c.t.Logf("nemesis: restart replica %d", c.procs[i].id)
	c.start(i)
	return 1
}

// chaos is the long nemesis: random SIGKILL+restart or SIGSTOP+SIGCONT of one
// random replica at a time, with quiet gaps.
func chaos(ctx context.Context, c *cluster, rng *rand.Rand) int {
	faults := 0
	for {
		select {
		case <-ctx.Done():
			return faults
		case <-time.After(time.Duration(500+rng.IntN(2500)) * time.Millisecond):
		}
		i := rng.IntN(3)
		hold := time.Duration(300+rng.IntN(2700)) * time.Millisecond
		if rng.IntN(2) == 0 {
			c.t.Logf("nemesis: SIGKILL replica %d for %v", c.procs[i].id, hold)
			c.kill(i)
			time.Sleep(hold)
			c.start(i)
		} else {
			c.t.Logf("nemesis: SIGSTOP replica %d for %v", c.procs[i].id, hold)
			c.pause(i)
			time.Sleep(hold)
			c.resume(i)
		}
		faults++
	}
}

// TestLinearizableUnderFaults drives a 3-process cluster with go-redis from many
// goroutines while a nemesis kills (and, in the long run, pauses) replicas, then
// checks the history with porcupine (per-key registers) and that every
// acknowledged write is on every replica. SHARDKV_LONG=1 runs the long version
// (SHARDKV_LONG_DURATION, default 60s) with SIGKILL and SIGSTOP faults.
func TestLinearizableUnderFaults(t *testing.T) {
	duration, workers, nem, checkTime := 4*time.Second, 12, nemesis(killOnce), time.Minute
	if os.Getenv("SHARDKV_LONG") == "1" {
		duration, workers, nem, checkTime = 60*time.Second, 24, chaos, 10*time.Minute
		if d, err := time.ParseDuration(os.Getenv("SHARDKV_LONG_DURATION")); err == nil {
			duration = d
		}
	} else if testing.Short() {
		duration = 2 * time.Second
	}
	c := startCluster(t, 16)
	clients := []*redis.Client{c.client(0), c.client(1), c.client(2)}
	nkeys := 8
	if os.Getenv("SHARDKV_LONG") == "1" {
		nkeys = 16 // more load: keep each key's history (the check's unit) short
	}

	// One seed picks every operation, key and fault; timing still varies from run
	// to run, so a seed reproduces the choices, not the interleaving.
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("SHARDKV_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("SHARDKV_SEED=%q: %v", v, err)
		}
	}
	t.Logf("seed %d (SHARDKV_SEED=%d repeats its choices)", seed, seed)

	h := &history{start: time.Now()}
	var st loadStats
	var acked sync.Map
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) { defer wg.Done(); worker(ctx, w, seed, clients, nkeys, h, &st, &acked) }(w)
	}
	faults := nem(ctx, c, rand.New(rand.NewPCG(seed, 1<<32)))
	wg.Wait()

	// Heal: everything running, every replica answering.
	for i, p := range c.procs {
		select {
		case <-p.done:
			c.start(i)
		default:
		}
		if p.paused {
			c.resume(i)
		}
	}
	for i := range c.procs {
		c.waitReady(i, 30*time.Second)
	}

	// Final reads of every key through every replica, after everything: the
	// restarted replica must give the same answers.
	lastEpoch := epochOf(h.now())
	for i, cl := range clients {
		for e := 0; e <= lastEpoch; e++ {
			keys := epochKeys(e, nkeys)
			read := func() error {
				rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer rcancel()
				call := h.now()
				vs, err := cl.MGet(rctx, keys...).Result()
				if err != nil {
					return err
				}
				ret := h.now()
				for j, v := range vs {
					out := regOutput{}
					if s, ok := v.(string); ok {
						out.exists = true
						out.value, _ = strconv.ParseInt(s, 10, 64)
					}
					h.add(9000+i, regInput{key: keys[j], kind: opGet}, call, out, ret)
				}
				return nil
			}
			var err error
			for try := 0; try < 10; try++ {
				if err = read(); err == nil {
					break
				}
				time.Sleep(300 * time.Millisecond)
			}
			if err != nil {
				t.Fatalf("final read of epoch %d on replica %d: %v", e, i+1, err)
			}
		}
	}

	// No acknowledged write lost, on any replica.
	var ackKeys, ackVals []string
	acked.Range(func(k, v any) bool {
		ackKeys = append(ackKeys, k.(string))
		ackVals = append(ackVals, v.(string))
		return true
	})
	lost := 0
	for i, cl := range clients {
		for start := 0; start < len(ackKeys); start += 100 {
			end := min(start+100, len(ackKeys))
			var vs []interface{}
			var err error
			for try := 0; try < 10; try++ {
				rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
				vs, err = cl.MGet(rctx, ackKeys[start:end]...).Result()
				rcancel()
				if err == nil {
					break
				}
				time.Sleep(300 * time.Millisecond)
			}
			if err != nil {
				t.Fatalf("reading acknowledged keys on replica %d: %v", i+1, err)
			}
			for j, v := range vs {
				if s, _ := v.(string); s != ackVals[start+j] {
					lost++
					if lost < 10 {
						t.Errorf("replica %d: acknowledged %s=%s reads %v", i+1, ackKeys[start+j], ackVals[start+j], v)
					}
				}
			}
		}
	}

	res, info := porcupine.CheckOperationsVerbose(registerModel, h.ops, checkTime)
	t.Logf("seed %d: %v of load (%d keys per %v epoch): %d operations ok, %d failed reads dropped, %d failed writes that did not run, %d indeterminate writes, %d acknowledged unique writes checked on 3 replicas (%d lost), %d faults; history of %d register operations: %v",
		seed, duration, nkeys, epochLen, st.ok.Load(), st.failedReads.Load(), st.notExecuted.Load(), countUnknown(h.ops), len(ackKeys), lost, faults, len(h.ops), res)
	switch res {
	case porcupine.Illegal:
		dumpIllegal(t, h.ops)
		path := fmt.Sprintf("%s/history.html", c.dir)
		if f, err := os.Create(path); err == nil {
			_ = porcupine.Visualize(registerModel, info, f)
			f.Close()
			t.Errorf("not linearizable; visualization in %s", path)
		} else {
			t.Error("not linearizable")
		}
	case porcupine.Unknown:
		t.Error("linearizability check timed out")
	}
	if lost > 0 {
		t.Errorf("%d acknowledged writes lost", lost)
	}
	// Not a throughput bound (CI machines vary), only that the check above had
	// something to check.
	if st.ok.Load() == 0 || st.acked.Load() == 0 {
		t.Errorf("no progress: %d operations succeeded, %d unique writes acknowledged", st.ok.Load(), st.acked.Load())
	}
	for i := range c.procs {
		if err := c.stop(i); err != nil {
			t.Error(err)
		}
	}
}

func countUnknown(ops []porcupine.Operation) int {
	n := 0
	for _, op := range ops {
		if op.Output.(regOutput).unknown {
			n++
		}
	}
	return n
}

// TestRegisterModelBites checks that the model rejects what it must: a stale
// read, a lost increment, a read of a value never written; and accepts
// indeterminate writes that did or did not happen.
func TestRegisterModelBites(t *testing.T) {
	op := func(in regInput, call int64, out regOutput, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: in, Call: call, Output: out, Return: ret}
	}
	set := func(v int64, c, r int64) porcupine.Operation {
		return op(regInput{key: "k", kind: opSet, value: v}, c, regOutput{}, r)
	}
	get := func(v int64, c, r int64) porcupine.Operation {
		return op(regInput{key: "k", kind: opGet}, c, regOutput{exists: true, value: v}, r)
	}
	for name, tc := range map[string]struct {
		ops  []porcupine.Operation
		want bool
	}{
		"read your write":    {[]porcupine.Operation{set(1, 0, 1), get(1, 2, 3)}, true},
		"stale read":         {[]porcupine.Operation{set(1, 0, 1), set(2, 2, 3), get(1, 4, 5)}, false},
		"read never written": {[]porcupine.Operation{set(1, 0, 1), get(7, 2, 3)}, false},
		"read goes back": {[]porcupine.Operation{set(1, 0, 10), get(1, 1, 2),
			op(regInput{key: "k", kind: opGet}, 3, regOutput{}, 4)}, false},
		"unknown set applied":  {[]porcupine.Operation{op(regInput{key: "k", kind: opSet, value: 5}, 0, regOutput{unknown: true}, math.MaxInt64), get(5, 2, 3)}, true},
		"unknown set not seen": {[]porcupine.Operation{set(1, 0, 1), op(regInput{key: "k", kind: opSet, value: 5}, 2, regOutput{unknown: true}, math.MaxInt64), get(1, 3, 4)}, true},
		"lost increment": {[]porcupine.Operation{set(1, 0, 1), op(regInput{key: "k", kind: opIncr}, 2, regOutput{value: 2}, 3),
			get(1, 4, 5)}, false},
		"absent after del": {[]porcupine.Operation{set(1, 0, 1), op(regInput{key: "k", kind: opDel}, 2, regOutput{value: 1}, 3),
			op(regInput{key: "k", kind: opGet}, 4, regOutput{}, 5)}, true},
	} {
		if got := porcupine.CheckOperations(registerModel, tc.ops); got != tc.want {
			t.Errorf("%s: linearizable=%v, want %v", name, got, tc.want)
		}
	}
}

// dumpIllegal writes the history of every key that fails the check, one
// operation a line in call order, to a directory that outlives the test.
func dumpIllegal(t *testing.T, ops []porcupine.Operation) {
	dir, err := os.MkdirTemp("", "shardkv-illegal-")
	if err != nil {
		t.Log(err)
		return
	}
	for _, part := range registerModel.Partition(ops) {
		if porcupine.CheckOperations(registerModel, part) {
			continue
		}
		sort.Slice(part, func(i, j int) bool { return part[i].Call < part[j].Call })
		key := part[0].Input.(regInput).key
		var b strings.Builder
		for _, op := range part {
			ret := "inf"
			if op.Return != math.MaxInt64 {
				ret = fmt.Sprintf("%.3fms", float64(op.Return)/1e6)
			}
			fmt.Fprintf(&b, "%.3fms .. %s client %d: %s\n", float64(op.Call)/1e6, ret, op.ClientId, registerModel.DescribeOperation(op.Input, op.Output))
		}
		path := fmt.Sprintf("%s/%s.txt", dir, key)
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err == nil {
			t.Logf("key %s is not linearizable; its history: %s", key, path)
		}
	}
}
