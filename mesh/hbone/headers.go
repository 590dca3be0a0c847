package hbone

import (
	"fmt"
	"strings"

	"golang.org/x/net/http2/hpack"
)

// printableASCII reports whether s holds only visible ASCII and spaces (0x20–0x7e): what a
// trace-context header may carry (W3C Trace Context and Baggage both limit themselves to
// it), and so what HBONE forwards to the next hop unchanged.
func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// checkFieldValue applies RFC 9113 §8.2.1: a field value carrying NUL, CR or LF makes the
// request malformed. Such bytes must never reach the next hop or an HTTP/1 upstream, where
// CR LF would start a header of the attacker's choosing.
func checkFieldValue(f hpack.HeaderField) error {
	if strings.ContainsAny(f.Value, "\x00\r\n") {
		return fmt.Errorf("header %s carries a NUL, CR or LF", trim(f.Name))
	}
	return nil
}

// cleanBaggage returns the baggage to propagate: trimmed of surrounding whitespace, and
// dropped (as an invalid traceparent is) when it holds anything but printable ASCII.
func cleanBaggage(v string) string {
	v = strings.Trim(v, " \t")
	if !printableASCII(v) {
		return ""
	}
	return v
}
