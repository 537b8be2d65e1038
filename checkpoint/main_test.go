package checkpoint

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any test leaves a goroutine behind: a Replayer
// whose feeder outlives Close.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
