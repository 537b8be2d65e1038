package logstore

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any test leaves a goroutine behind: a store that
// does not stop its committer, or a pebble DB left open.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
