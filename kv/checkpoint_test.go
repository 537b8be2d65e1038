package kv

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/multipaxos/engine/ids"
)

// imageOf checkpoints group g of s into a new directory and returns it with the
// image's instance.
func imageOf(t *testing.T, s *Store, g ids.GroupID) (string, ids.InstanceID) {
	t.Helper()
	dir := t.TempDir()
	inst, err := s.Group(g).Checkpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	return dir, inst
}

func TestCheckpointInstall(t *testing.T) {
	src := openStore(t, t.TempDir(), 4)
	defer src.Close()
	for i := 0; i < 5; i++ {
		run(t, src.Group(2), Command{Op: OpSet, Now: t0 + int64(i), Keys: ks(fmt.Sprint("k", i)), Values: ks(fmt.Sprint(i)), Int: t0 + 100000})
	}
	run(t, src.Group(1), Command{Op: OpSet, Now: t0, Keys: ks("other"), Values: ks("src")})
	dir, applied := imageOf(t, src, 2)
	if applied != 5 {
		t.Fatalf("checkpoint applied %d, want 5", applied)
	}
	// The engine ships only regular files directly in dir.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != ImageFile || !entries[0].Type().IsRegular() {
		t.Fatalf("checkpoint dir holds %v, want the one regular file %s", entries, ImageFile)
	}
	wantDump := groupDump(t, src, 2)
	// Writes after the checkpoint are not in the image.
	run(t, src.Group(2), Command{Op: OpSet, Now: t0 + 5, Keys: ks("after"), Values: ks("x")})

	dstDir := t.TempDir()
	dst := openStore(t, dstDir, 4)
	// The destination has stale state in group 2 (a key the source does not
	// have) and state of its own in group 1; install must replace the first and
	// leave the second alone.
	run(t, dst.Group(2), Command{Op: OpSet, Now: t0, Keys: ks("stale"), Values: ks("x"), Int: t0 + 5})
	run(t, dst.Group(1), Command{Op: OpSet, Now: t0, Keys: ks("other"), Values: ks("dst")})
	got, err := dst.Group(2).Install(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got != 5 || dst.Group(2).Applied() != 5 || dst.Group(2).Clock() != t0+4 {
		t.Fatalf("after install: returned %d, applied %d, clock %d", got, dst.Group(2).Applied(), dst.Group(2).Clock())
	}
	if d := groupDump(t, dst, 2); d != wantDump {
		t.Fatalf("group 2 after install:\n%s\n--- want the source's at the checkpoint:\n%s", d, wantDump)
	}
	wantReply(t, "other group untouched", run1(t, dst.Group(1), Command{Op: OpGet, Now: t0, Keys: ks("other")}), replyBulk([]byte("dst")))

	// Installed state is durable and the group goes on from the installed point.
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	dst = openStore(t, dstDir, 4)
	defer dst.Close()
	if dst.Group(2).Applied() != 5 || groupDump(t, dst, 2) != wantDump {
		t.Fatalf("after reopen: applied %d, group 2:\n%s", dst.Group(2).Applied(), groupDump(t, dst, 2))
	}
	wantReply(t, "read after install", run1(t, dst.Group(2), Command{Op: OpMGet, Now: t0 + 10, Keys: ks("k4", "stale", "after")}),
		replyArr([]Reply{replyBulk([]byte("4")), replyNil, replyNil}))
	if dst.Group(2).Applied() != 6 {
		t.Fatalf("applied %d after one more instance, want 6", dst.Group(2).Applied())
	}

	// The image is group 2's: not for group 3, nor for a store of another shape.
	before3 := groupDump(t, dst, 3)
	if _, err := dst.Group(3).Install(dir); !errors.Is(err, ErrBadImage) {
		t.Fatalf("install of group 2's image into group 3: %v", err)
	}
	if groupDump(t, dst, 3) != before3 || dst.Group(3).Applied() != 0 {
		t.Fatal("a refused install changed group 3")
	}
	other := openStore(t, t.TempDir(), 8)
	defer other.Close()
	if _, err := other.Group(2).Install(dir); !errors.Is(err, ErrFormatMismatch) {
		t.Fatalf("install into another group count: %v", err)
	}
	if _, err := dst.Group(2).Install(t.TempDir()); !errors.Is(err, ErrBadImage) {
		t.Fatalf("install from an empty dir: %v", err)
	}
}

func TestCheckpointOfEmptyGroup(t *testing.T) {
	src := openStore(t, t.TempDir(), 2)
	defer src.Close()
	dir, applied := imageOf(t, src, 1)
	if applied != 0 {
		t.Fatalf("empty group's checkpoint at %d, want 0", applied)
	}
	dst := openStore(t, t.TempDir(), 2)
	defer dst.Close()
	run(t, dst.Group(1), Command{Op: OpSet, Now: t0, Keys: ks("k"), Values: ks("v"), Int: t0 + 100})
	run(t, dst.Group(0), Command{Op: OpSet, Now: t0, Keys: ks("k0"), Values: ks("v")})
	got, err := dst.Group(1).Install(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got != 0 || dst.Group(1).Applied() != 0 || dst.Group(1).Clock() != 0 {
		t.Fatalf("after installing an empty image: returned %d, applied %d, clock %d", got, dst.Group(1).Applied(), dst.Group(1).Clock())
	}
	if d := groupDump(t, dst, 1); d != "" {
		t.Fatalf("group 1 not empty after installing an empty image:\n%s", d)
	}
	if dst.Group(0).Applied() != 1 {
		t.Fatal("group 0 changed")
	}
}

// TestInstallRefusesCorruptImage truncates the image at every length and flips
// every bit of every byte: each must be refused, with the old state intact.
func TestInstallRefusesCorruptImage(t *testing.T) {
	src := openStore(t, t.TempDir(), 2)
	defer src.Close()
	run(t, src.Group(1),
		Command{Op: OpSet, Now: t0, Keys: ks("a"), Values: ks("1")},
		Command{Op: OpSet, Now: t0, Keys: ks("b"), Values: ks("2"), Int: t0 + 1000})
	dir, _ := imageOf(t, src, 1)
	good, err := os.ReadFile(filepath.Join(dir, ImageFile))
	if err != nil {
		t.Fatal(err)
	}

	dst := openStore(t, t.TempDir(), 2)
	defer dst.Close()
	for i := 0; i < 3; i++ {
		run(t, dst.Group(1), Command{Op: OpIncrBy, Now: t0 + 7, Keys: ks("n"), Int: 1})
	}
	wantDump, wantApplied, wantClock := groupDump(t, dst, 1), dst.Group(1).Applied(), dst.Group(1).Clock()

	bad := t.TempDir()
	try := func(what string, img []byte) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(bad, ImageFile), img, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := dst.Group(1).Install(bad)
		if !errors.Is(err, ErrBadImage) && !errors.Is(err, ErrFormatMismatch) {
			t.Fatalf("%s: install: %v, want ErrBadImage or ErrFormatMismatch", what, err)
		}
	}
	for n := 0; n < len(good); n++ {
		try(fmt.Sprintf("truncated to %d of %d bytes", n, len(good)), good[:n])
	}
	try("a byte appended", append(append([]byte{}, good...), 0))
	for i := range good {
		for bit := 0; bit < 8; bit++ {
			img := append([]byte{}, good...)
			img[i] ^= 1 << bit
			try(fmt.Sprintf("byte %d bit %d flipped", i, bit), img)
		}
	}
	if groupDump(t, dst, 1) != wantDump || dst.Group(1).Applied() != wantApplied || dst.Group(1).Clock() != wantClock {
		t.Fatalf("a refused install changed the group:\n%s", groupDump(t, dst, 1))
	}
	// The intact image still installs: the refusals were the corruption's doing.
	try2 := filepath.Join(bad, ImageFile)
	if err := os.WriteFile(try2, good, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := dst.Group(1).Install(bad); err != nil || got != 1 {
		t.Fatalf("intact image: %d %v", got, err)
	}
	if groupDump(t, dst, 1) != groupDump(t, src, 1) {
		t.Fatal("intact image installed something else")
	}
}

// TestCheckpointConcurrentWithExecute takes checkpoints while another goroutine
// executes instances, as the engine does, and checks each image is exact: the
// effects of every instance below its instance and of none above.
func TestCheckpointConcurrentWithExecute(t *testing.T) {
	const instances = 200
	src := openStore(t, t.TempDir(), 1)
	defer src.Close()
	done := make(chan error, 1)
	go func() {
		for i := 0; i < instances; i++ {
			v := []byte(strconv.Itoa(i))
			set, _ := EncodeCommand(&Command{Op: OpMSet, Now: t0, Keys: ks("a", "b"), Values: [][]byte{v, v}})
			incr, _ := EncodeCommand(&Command{Op: OpIncrBy, Now: t0, Keys: ks("n"), Int: 1})
			if _, err := src.Group(0).Execute(ids.InstanceID(i), [][]byte{set, incr}); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	dst := openStore(t, t.TempDir(), 1)
	defer dst.Close()
	check := func(dir string, inst ids.InstanceID) {
		t.Helper()
		got, err := dst.Group(0).Install(dir)
		if err != nil || got != inst {
			t.Fatalf("install of the image at %d: %d %v", inst, got, err)
		}
		r, err := dst.ReadLocal(0, Command{Op: OpMGet, Now: t0, Keys: ks("a", "b", "n")})
		if err != nil {
			t.Fatal(err)
		}
		if inst == 0 {
			wantReply(t, "image at 0", r, replyArr([]Reply{replyNil, replyNil, replyNil}))
			return
		}
		last := []byte(strconv.Itoa(int(inst) - 1))
		wantReply(t, fmt.Sprint("image at ", inst), r, replyArr([]Reply{replyBulk(last), replyBulk(last), replyBulk([]byte(strconv.Itoa(int(inst))))}))
	}
	var images int
	for running := true; running; images++ {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			running = false
		default:
		}
		dir, inst := imageOf(t, src, 0)
		check(dir, inst)
		if !running && inst != instances {
			t.Fatalf("last image at %d, want %d", inst, instances)
		}
	}
	t.Logf("%d images checked", images)
}

// TestCheckpointMakesStoreDurable crashes a store (a crashable in-memory
// filesystem keeps only what was synced) after a checkpoint: the store still
// holds every instance below the image's (where the engine trims its log; the
// contract lets the engine install the image instead, but Checkpoint promises
// this), and the image survived too. Without the checkpoint the same
// crash loses the unsynced instances, which shows the test can fail.
func TestCheckpointMakesStoreDurable(t *testing.T) {
	fs := vfs.NewCrashableMem()
	s, err := Open("db", Options{Groups: 2, CacheSize: 1 << 20, MemTableSize: 1 << 20, FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	incr := Command{Op: OpIncrBy, Now: t0, Keys: ks("n"), Int: 1}
	for i := 0; i < 10; i++ {
		run(t, s.Group(1), incr)
	}
	lost := reopenCrashed(t, fs.CrashClone(vfs.CrashCloneCfg{}))
	if got := lost.Group(1).Applied(); got >= 10 {
		t.Fatalf("control: a crash kept %d unsynced instances; the test below could not fail", got)
	}
	lost.Close()

	// The engine creates the image's directory and makes its name durable.
	if err := fs.MkdirAll("cp", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syncDir(fs, ""); err != nil {
		t.Fatal(err)
	}
	inst, err := s.Group(1).Checkpoint("cp")
	if err != nil || inst != 10 {
		t.Fatalf("checkpoint: %d %v", inst, err)
	}
	for i := 0; i < 5; i++ {
		run(t, s.Group(1), incr) // not synced: may be lost
	}
	crashed := reopenCrashed(t, fs.CrashClone(vfs.CrashCloneCfg{}))
	defer crashed.Close()
	if got := crashed.Group(1).Applied(); got < inst {
		t.Fatalf("after a crash the store is at %d, below the checkpoint's %d", got, inst)
	}
	wantReply(t, "value at the checkpoint", run1(t, crashed.Group(1), Command{Op: OpGet, Now: t0, Keys: ks("n")}), replyBulk([]byte("10")))
	if got, err := crashed.Group(0).Install("cp"); !errors.Is(err, ErrBadImage) || got != 0 {
		t.Fatalf("group 1's image into group 0: %d %v", got, err) // the image is there and checked
	}
	if got, err := crashed.Group(1).Install("cp"); err != nil || got != inst {
		t.Fatalf("the image after the crash: %d %v", got, err)
	}
}

func reopenCrashed(t *testing.T, fs *vfs.MemFS) *Store {
	t.Helper()
	s, err := Open("db", Options{Groups: 2, CacheSize: 1 << 20, MemTableSize: 1 << 20, FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	return s
}
