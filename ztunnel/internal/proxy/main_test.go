package proxy

import (
	"testing"

	"go.uber.org/goleak"
)

// Every pod proxy a test starts is closed or drained by its end: no goroutine outlives it.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
