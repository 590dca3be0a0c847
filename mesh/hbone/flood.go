package hbone

import (
	"time"

	"golang.org/x/net/http2"
)

// Frames that cost the receiver work and the sender nothing: a PING or SETTINGS must be
// answered (CVE-2019-9512 ping flood, CVE-2019-9515 settings flood), and an empty DATA frame
// without END_STREAM carries nothing yet must be processed (CVE-2019-9518). A well-behaved
// peer sends a PING per keep-alive interval, SETTINGS once and empty DATA only to end a
// stream; maxFloodFrames of one kind within floodWindow is an attack, answered with
// GOAWAY(ENHANCE_YOUR_CALM). Envoy (Istio's waypoint) bounds the same frames
// (max_outbound_control_frames, max_consecutive_inbound_frames_with_empty_payload);
// x/net/http2's server bounds only the queue of answers.
const (
	maxFloodFrames = 1000
	floodWindow    = 10 * time.Second
)

// floodGuard counts those frames per kind in fixed windows. Only the read loop uses it.
type floodGuard struct {
	start                  time.Time
	pings, settings, empty int
}

// check returns why f makes the peer a flooder, or "" if it does not.
func (g *floodGuard) check(f http2.Frame) string {
	var n *int
	var what string
	switch f := f.(type) {
	case *http2.PingFrame:
		if f.IsAck() {
			return ""
		}
		n, what = &g.pings, "PING flood"
	case *http2.SettingsFrame:
		if f.IsAck() {
			return ""
		}
		n, what = &g.settings, "SETTINGS flood"
	case *http2.DataFrame:
		if f.Length != 0 || f.StreamEnded() {
			return ""
		}
		n, what = &g.empty, "empty DATA flood"
	default:
		return ""
	}
	if now := time.Now(); now.Sub(g.start) > floodWindow {
		g.start, g.pings, g.settings, g.empty = now, 0, 0, 0
	}
	*n++
	if *n > maxFloodFrames {
		return what
	}
	return ""
}
