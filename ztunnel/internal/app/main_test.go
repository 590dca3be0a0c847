package app

import (
	"testing"

	"go.uber.org/goleak"
)

// Every ztunnel a test runs has stopped, with all its goroutines, by the end.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
