package proxy

import (
	"testing"

	"go.uber.org/goleak"
)

// Every waypoint, fake ztunnel and app a test starts is closed by its end: no goroutine
// outlives it.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
