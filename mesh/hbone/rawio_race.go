//go:build race

package hbone

import (
	"runtime"
	"unsafe"
)

// ioSync gives rawRead and rawWrite the race-detector edges that Go's own socket I/O has
// (internal/poll): bytes written to a socket happen before the read that receives them, so
// that memory a goroutine wrote before sending is not reported as raced by the goroutine
// that read the message. Only in race builds.
var ioSync int64

func raceReleaseMerge() { runtime.RaceReleaseMerge(unsafe.Pointer(&ioSync)) }
func raceAcquire()      { runtime.RaceAcquire(unsafe.Pointer(&ioSync)) }
