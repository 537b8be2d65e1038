package node

import "github.com/cockroachdb/pebble/v2/vfs"

// testHooks are Options that only this package's tests can set: Options embeds
// the struct, and its fields are unexported.
type testHooks struct {
	// logFS, if set, is the file system of the log store (logstore.Options.FS)
	// instead of the real one: the disk-fault test wraps the real one to fail a
	// WAL fsync or write on demand (diskfault_test.go).
	logFS vfs.FS
}
