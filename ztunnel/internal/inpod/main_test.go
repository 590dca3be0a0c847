package inpod

import (
	"testing"

	"go.uber.org/goleak"
)

// Every manager, pod proxy and server a test starts is gone by its end.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
