package statemachine_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/multipaxos/engine/checkpoint"
	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/logstore"
	"github.com/multipaxos/engine/statemachine"
)

// kvState is a tiny key-value map shared by the examples. A command "k=v" sets k
// and returns "ok"; a command "k" returns k's value.
type kvState struct {
	mu      sync.Mutex // Checkpoint reads the map while Execute runs
	data    map[string]string
	applied ids.InstanceID // first instance not executed
}

func newKVState() *kvState { return &kvState{data: map[string]string{}} }

func (s *kvState) Execute(inst ids.InstanceID, cmds [][]byte) ([][]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	results := make([][]byte, len(cmds))
	for i, c := range cmds {
		if k, v, set := strings.Cut(string(c), "="); set {
			s.data[k] = v
			results[i] = []byte("ok")
		} else {
			results[i] = []byte(s.data[k])
		}
	}
	s.applied = inst + 1
	return results, nil
}

func (s *kvState) Applied() ids.InstanceID {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.applied
}

// kvFile is the one file of an image: the map and the instance it stands for.
const kvFile = "kv.json"

type kvImage struct {
	Applied ids.InstanceID
	Data    map[string]string
}

// save writes the state into dir/kv.json through a temporary file and a rename,
// so the file is always whole, and fsyncs it.
func (s *kvState) save(dir string) (ids.InstanceID, error) {
	s.mu.Lock()
	img := kvImage{Applied: s.applied, Data: maps.Clone(s.data)} // a consistent view
	s.mu.Unlock()
	b, err := json.Marshal(img)
	if err != nil {
		return 0, err
	}
	tmp := filepath.Join(dir, kvFile+".tmp")
	f, err := os.Create(tmp)
	if err != nil {
		return 0, err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return 0, err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return 0, err
	}
	if err := f.Close(); err != nil {
		return 0, err
	}
	return img.Applied, os.Rename(tmp, filepath.Join(dir, kvFile))
}

// Install replaces the whole state with the image in dir. The new map is built
// first and swapped in at once: a failure leaves the old state intact.
func (s *kvState) Install(dir string) (ids.InstanceID, error) {
	b, err := os.ReadFile(filepath.Join(dir, kvFile))
	if err != nil {
		return 0, err
	}
	var img kvImage
	if err := json.Unmarshal(b, &img); err != nil {
		return 0, err
	}
	if img.Data == nil {
		img.Data = map[string]string{}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.data, s.applied = img.Data, img.Applied
	return img.Applied, nil
}

func (s *kvState) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(s.data)) {
		parts = append(parts, k+"="+s.data[k])
	}
	return fmt.Sprintf("applied %d: %s", s.applied, strings.Join(parts, " "))
}

// snapshotKV makes its own images: the first way. It is in memory, so it returns
// Applied() 0 at start; after a crash the engine installs the group's local image
// before replaying the log's rest.
type snapshotKV struct{ *kvState }

// Checkpoint writes the map as it is now: the engine calls it concurrently with
// Execute, which kvState's lock makes safe.
func (s snapshotKV) Checkpoint(dir string) (ids.InstanceID, error) { return s.save(dir) }

var _ statemachine.Checkpointer = snapshotKV{}

func cmds(s ...string) [][]byte {
	out := make([][]byte, len(s))
	for i, c := range s {
		out[i] = []byte(c)
	}
	return out
}

// A state machine that can snapshot itself implements Checkpointer: the engine
// asks it for images now and then, trims its log below them, and sends them to
// members too far behind for the log; those Install them.
func ExampleCheckpointer() {
	dir, _ := os.MkdirTemp("", "example-checkpointer")
	defer os.RemoveAll(dir)

	member := snapshotKV{newKVState()}
	member.Execute(0, cmds("a=1"))
	member.Execute(1, cmds("b=2", "a=3"))
	member.Execute(2, cmds("c=4"))

	// The engine: an image into an empty directory, in the background.
	image := filepath.Join(dir, "image")
	os.Mkdir(image, 0o755)
	inst, err := member.Checkpoint(image)
	fmt.Println("image of instance", inst, err)

	// A new member far behind installs the image, then executes from its instance.
	newcomer := snapshotKV{newKVState()}
	inst, err = newcomer.Install(image)
	fmt.Println("installed", inst, err)
	res, _ := newcomer.Execute(inst, cmds("a"))
	fmt.Printf("a is %s; %v\n", res[0], newcomer)
	// Output:
	// image of instance 3 <nil>
	// installed 3 <nil>
	// a is 3; applied 4: a=3 b=2 c=4
}

// liveKV cannot make images while it runs (say its map is too big to copy under
// the lock): it implements only Installer, and the application gives the engine a
// CopyFactory instead (the second way).
type liveKV struct{ *kvState }

var _ statemachine.Installer = liveKV{}

// kvCopy is the checkpoint copy: the same map, saved to its directory by Flush.
type kvCopy struct {
	*kvState
	dir string
}

func (c kvCopy) Flush() error { _, err := c.save(c.dir); return err }
func (c kvCopy) Close() error { return nil }

// openKVCopy is the CopyFactory: it loads the copy's directory, or starts empty.
func openKVCopy(g ids.GroupID, dir string) (statemachine.Copy, error) {
	c := kvCopy{kvState: newKVState(), dir: dir}
	if _, err := os.Stat(filepath.Join(dir, kvFile)); err == nil {
		if _, err := c.Install(dir); err != nil {
			return nil, err
		}
	}
	return c, nil
}

var _ statemachine.CopyFactory = openKVCopy

// With a CopyFactory, the engine's checkpoint.Replayer keeps a copy of the state
// in a directory of its own, feeds it the chosen instances from the log in the
// background, and makes images from its files: the live state machine never stops.
// This example plays the engine's part by hand.
func ExampleCopy() {
	dir, _ := os.MkdirTemp("", "example-copy")
	defer os.RemoveAll(dir)

	// Three chosen instances of group 0 in the log; here a value holds one
	// command (the engine's format holds several, and its own records).
	log := logstore.NewMemStore()
	var entries []logstore.Entry
	for i, c := range []string{"a=1", "b=2", "a=3"} {
		entries = append(entries, logstore.Entry{Instance: ids.InstanceID(i), Value: []byte(c)})
	}
	log.Commit(logstore.Batch{Writes: []logstore.GroupWrite{{Group: 0, Entries: entries}}, Sync: true}, nil)
	log.Sync()

	replayer, err := checkpoint.NewReplayer(checkpoint.ReplayerConfig{
		Group:   0,
		Dir:     filepath.Join(dir, "copy"),
		Factory: openKVCopy,
		Log:     log,
		Decode:  func(value []byte) ([][]byte, error) { return [][]byte{value}, nil },
		Chosen:  func() ids.InstanceID { return 3 },
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer replayer.Close()
	replayer.Start()
	for deadline := time.Now().Add(10 * time.Second); replayer.Applied() < 3 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}

	// An image: the copy flushed, its files copied while the feeding pauses; the
	// engine then seals it with a manifest.
	image := filepath.Join(dir, "image")
	os.Mkdir(image, 0o755)
	inst, err := replayer.Checkpoint(image)
	fmt.Println("image of instance", inst, err)
	m, err := checkpoint.Seal(image, 0, inst, nil)
	fmt.Println("sealed", len(m.Files), "file", err)

	// Another member's live state machine installs it.
	live := liveKV{newKVState()}
	inst, err = live.Install(image)
	fmt.Println("installed", inst, err)
	fmt.Println(live)
	// Output:
	// image of instance 3 <nil>
	// sealed 1 file <nil>
	// installed 3 <nil>
	// applied 3: a=3 b=2
}
