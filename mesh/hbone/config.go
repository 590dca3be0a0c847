package hbone

import (
	"fmt"
	"log/slog"
	"math"
	"time"
)

// Defaults from design.md: the windows, stream limits and idle period every ambit proxy uses.
const (
	DefaultStreamWindow      = 4 << 20
	DefaultConnWindow        = 16 << 20
	DefaultClientMaxStreams  = 100
	DefaultServerMaxStreams  = 200
	DefaultIdleTimeout       = 5 * time.Minute
	DefaultPingInterval      = 30 * time.Second
	DefaultPingTimeout       = 10 * time.Second
	DefaultHandshakeTimeout  = 10 * time.Second
	DefaultWriteTimeout      = 30 * time.Second
	DefaultMaxHeaderListSize = 16 << 10
	// DefaultMaxResets bounds how many streams a peer may reset in one connection per
	// ResetWindow before the connection is closed (HTTP/2 rapid reset, CVE-2023-44487).
	DefaultMaxResets   = 1000
	DefaultResetWindow = 10 * time.Second
	// DefaultH3HandshakeTimeout is how long a client waits for a QUIC handshake to a peer
	// that should speak HTTP/3 before it uses HTTP/2 instead; DefaultH3FallbackPeriod is how
	// long it then keeps using HTTP/2 for that address before trying QUIC again.
	DefaultH3HandshakeTimeout = time.Second
	DefaultH3FallbackPeriod   = 5 * time.Minute
	// DefaultMaxUnverifiedHandshakes bounds the QUIC handshakes a server runs at once for
	// clients whose address it has not verified; beyond it, new clients are sent a Retry
	// first (RFC 9000 §8.1.2), which costs a spoofed source everything and a real client one
	// round trip.
	DefaultMaxUnverifiedHandshakes = 32
	// DefaultH3LossThreshold and DefaultH3ShieldHold turn on an HTTP/3 connection's loss
	// shield (h3loss.go) when it loses at least 0.5 % of its packets, for 30 s at a time.
	DefaultH3LossThreshold = 0.005
	DefaultH3ShieldHold    = 30 * time.Second

	// Port is the HBONE port on every pod and waypoint.
	Port = 15008
)

// ConnConfig tunes one side of an HBONE connection. The zero value means defaults.
type ConnConfig struct {
	// StreamWindow and ConnWindow are the receive flow-control windows we grant.
	StreamWindow int32
	ConnWindow   int32
	// MaxStreams is the number of concurrent streams on one connection: the client never
	// opens more, the server refuses more.
	MaxStreams uint32
	// MaxHeaderListSize caps the decoded size of one header block; larger requests are
	// answered 400 without being decoded further.
	MaxHeaderListSize uint32
	// IdleTimeout closes a connection that has had no stream for this long.
	IdleTimeout time.Duration
	// PingInterval is how long a connection may go without receiving a frame before we
	// probe it with PING; PingTimeout is how long the PING may go unanswered before the
	// connection is declared dead.
	PingInterval time.Duration
	PingTimeout  time.Duration
	// HandshakeTimeout bounds the TLS handshake and the HTTP/2 preface exchange.
	HandshakeTimeout time.Duration
	// WriteTimeout bounds one write to the socket, so a peer that stops reading cannot
	// hold the connection forever.
	WriteTimeout time.Duration
	// MaxResets and ResetWindow bound stream resets from the peer (rapid reset).
	MaxResets   int
	ResetWindow time.Duration
	// H3HandshakeTimeout and H3FallbackPeriod govern the client's fallback from HTTP/3 to
	// HTTP/2 (see DefaultH3HandshakeTimeout).
	H3HandshakeTimeout time.Duration
	H3FallbackPeriod   time.Duration
	// MaxUnverifiedHandshakes bounds a server's QUIC handshakes from unverified addresses
	// before it demands Retry (see DefaultMaxUnverifiedHandshakes).
	MaxUnverifiedHandshakes int
	// H3LossThreshold is the share of its packets an HTTP/3 connection must lose within a
	// measurement window for it to send its short packets twice, for H3ShieldHold (see
	// h3loss.go); negative turns the shield off.
	H3LossThreshold float64
	H3ShieldHold    time.Duration
	Logger          *slog.Logger
}

// withDefaults validates c and returns a copy with every zero field filled in.
func (c ConnConfig) withDefaults(maxStreams uint32) (ConnConfig, error) {
	if c.StreamWindow < 0 || c.ConnWindow < 0 {
		return c, fmt.Errorf("hbone config: windows must not be negative")
	}
	if c.StreamWindow == 0 {
		c.StreamWindow = DefaultStreamWindow
	}
	if c.ConnWindow == 0 {
		c.ConnWindow = DefaultConnWindow
	}
	if c.StreamWindow < 65535 || c.ConnWindow < 65535 {
		return c, fmt.Errorf("hbone config: windows must be at least 65535 bytes")
	}
	if c.MaxStreams == 0 {
		c.MaxStreams = maxStreams
	}
	if c.MaxHeaderListSize == 0 {
		c.MaxHeaderListSize = DefaultMaxHeaderListSize
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.PingInterval == 0 {
		c.PingInterval = DefaultPingInterval
	}
	if c.PingTimeout == 0 {
		c.PingTimeout = DefaultPingTimeout
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.MaxResets == 0 {
		c.MaxResets = DefaultMaxResets
	}
	if c.ResetWindow == 0 {
		c.ResetWindow = DefaultResetWindow
	}
	if c.H3HandshakeTimeout == 0 {
		c.H3HandshakeTimeout = DefaultH3HandshakeTimeout
	}
	if c.H3FallbackPeriod == 0 {
		c.H3FallbackPeriod = DefaultH3FallbackPeriod
	}
	if c.MaxUnverifiedHandshakes == 0 {
		c.MaxUnverifiedHandshakes = DefaultMaxUnverifiedHandshakes
	}
	if c.H3LossThreshold == 0 {
		c.H3LossThreshold = DefaultH3LossThreshold
	}
	if c.H3ShieldHold == 0 {
		c.H3ShieldHold = DefaultH3ShieldHold
	}
	if c.H3LossThreshold > 1 || math.IsNaN(c.H3LossThreshold) || c.H3ShieldHold < 0 {
		return c, fmt.Errorf("hbone config: H3LossThreshold must be at most 1 and H3ShieldHold not negative")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}
