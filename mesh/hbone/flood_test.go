package hbone

import (
	"runtime"
	"testing"

	"golang.org/x/net/http2"
)

// TestFloodsCloseConnection: a peer that sends PING, SETTINGS or empty DATA frames without
// end (CVE-2019-9512, -9515, -9518) gets GOAWAY(ENHANCE_YOUR_CALM) once it passes
// maxFloodFrames within floodWindow, and the connection and its goroutines are released.
func TestFloodsCloseConnection(t *testing.T) {
	tests := []struct {
		name  string
		frame func(rc *rawClient, i int) error
	}{
		{"PING", func(rc *rawClient, i int) error { return rc.fr.WritePing(false, [8]byte{byte(i), byte(i >> 8)}) }},
		{"SETTINGS", func(rc *rawClient, _ int) error { return rc.fr.WriteSettings() }},
		{"empty DATA", func(rc *rawClient, _ int) error { return rc.fr.WriteData(1, false, nil) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			base := runtime.NumGoroutine()
			rc := dialRaw(t, e)
			rc.connect(1, ":method", "CONNECT", ":authority", e.echo.String())
			rc.expectStatus(1, "200")
			go func() {
				// One more than the limit and no further: frames the server never reads
				// would turn its close into a TCP reset that drops the GOAWAY.
				for i := range maxFloodFrames + 1 {
					rc.wmu.Lock()
					err := tc.frame(rc, i)
					rc.wmu.Unlock()
					if err != nil {
						return
					}
				}
			}()
			rc.expectGoAway(http2.ErrCodeEnhanceYourCalm)
			rc.tc.Close()
			settleGoroutines(t, base, 2)
		})
	}
}
