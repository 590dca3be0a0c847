package hbone

import (
	"errors"
	"fmt"
	"net/http"
)

// Kind classifies a failure so that callers can decide what to do: retry elsewhere, report
// a denial, or give up on a broken peer.
type Kind int

const (
	// KindDial: the tunnel or the upstream behind it could not be reached (TCP or TLS
	// failure towards the peer, or the peer answered 503). Retrying another endpoint may help.
	KindDial Kind = iota + 1
	// KindDenied: the peer refused the stream on policy grounds (401/403).
	KindDenied
	// KindProtocol: the peer violated HTTP/2 or HBONE, or rejected our request as
	// malformed (400). Retrying the same peer will not help.
	KindProtocol
	// KindIdentity: the peer's certificate did not prove an expected identity.
	KindIdentity
)

func (k Kind) String() string {
	switch k {
	case KindDial:
		return "dial"
	case KindDenied:
		return "denied"
	case KindProtocol:
		return "protocol"
	case KindIdentity:
		return "identity"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Error is the typed error returned by Client.Dial and by streams.
type Error struct {
	Kind   Kind
	Status int    // HTTP status the peer answered with, 0 if none
	Reason string // the peer's reason text, if it sent one
	Err    error  // underlying cause, if any
}

func (e *Error) Error() string {
	msg := "hbone " + e.Kind.String()
	if e.Status != 0 {
		msg += fmt.Sprintf(": status %d", e.Status)
	}
	if e.Reason != "" {
		msg += ": " + e.Reason
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrDenied) and friends work on any *Error of that kind.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Status == 0 && t.Reason == "" && t.Err == nil && t.Kind == e.Kind
}

// Sentinels for errors.Is.
var (
	ErrDial     = &Error{Kind: KindDial}
	ErrDenied   = &Error{Kind: KindDenied}
	ErrProtocol = &Error{Kind: KindProtocol}
	ErrIdentity = &Error{Kind: KindIdentity}
)

// errorForStatus maps a non-200 CONNECT response to a typed error.
func errorForStatus(status int, reason string) *Error {
	k := KindProtocol
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		k = KindDenied
	case status == http.StatusServiceUnavailable || status == http.StatusBadGateway || status == http.StatusGatewayTimeout:
		k = KindDial
	}
	return &Error{Kind: k, Status: status, Reason: reason}
}

// errStreamReset is returned by Read and Write after the peer reset the stream.
type streamResetError struct{ code uint32 }

func (e streamResetError) Error() string {
	return fmt.Sprintf("hbone: stream reset by peer (code %d)", e.code)
}

var (
	errConnClosed         = errors.New("hbone: connection closed")
	errStreamClosed       = errors.New("hbone: stream closed")
	errWriteClosed        = errors.New("hbone: write after CloseWrite")
	errPeerStoppedReading = errors.New("hbone: peer ended the stream and reads no more")
	// errUnprocessed: the peer's GOAWAY says it never processed the stream (RFC 9113 §6.8),
	// so the CONNECT may be sent again on another connection.
	errUnprocessed = errors.New("hbone: peer sent GOAWAY before processing the stream")
)
