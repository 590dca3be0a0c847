package hbone

import (
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/net/http2/hpack"
)

// Real values, as Istio's ztunnel, Envoy and OpenTelemetry SDKs send them, seed the header
// fuzzers below.
var (
	seedForwarded = []string{
		`for="10.244.1.7:43122"`,
		`for="[fd00:10:244::7]:43122"`,
		`for=10.244.1.7`,
		`for="[fd00::2]"; proto=https, for=1.2.3.4`,
		`proto=https;for="192.0.2.60:1";by=203.0.113.43`,
		`for=_hidden, for=198.51.100.17`,
		`For="[2001:db8:cafe::17]:4711"`,
		`for="::ffff:10.0.0.1"`,
		`for=unknown`,
	}
	seedTraceparent = []string{
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
		"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-the-future-holds",
		"00-00000000000000000000000000000000-b7ad6b7169203331-01",
		"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
	}
	seedBaggage = []string{
		"userId=alice,serverNode=DF%2028,isProduction=false",
		"key1=value1;property1;property2, key2 = value2, key3=value3; propertyKey=propertyValue",
		"traffic.ambit.dev/canary=true",
		"",
	}
)

// validFieldValue is RFC 9113 §8.2.1 for a field value we pass on: no NUL, CR or LF, no
// leading or trailing whitespace.
func validFieldValue(v string) bool {
	if strings.ContainsAny(v, "\x00\r\n") {
		return false
	}
	return v == strings.Trim(v, " \t")
}

// FuzzForwarded: parseForwarded never panics, and an address it returns is a plain IP (no
// zone, not IPv4-mapped) that survives the round trip through the header the client writes.
func FuzzForwarded(f *testing.F) {
	for _, s := range seedForwarded {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		ap, err := parseForwarded(v)
		if err != nil || !ap.IsValid() {
			return
		}
		if ap.Addr().Zone() != "" || ap.Addr().Is4In6() {
			t.Fatalf("parseForwarded(%q) = %v: zone or mapped address", v, ap)
		}
		if ap.Port() == 0 {
			return // only a port-carrying address is written back by a client
		}
		fields := requestFields(Target{Authority: netip.MustParseAddrPort("10.0.0.1:80"), Forwarded: ap})
		back, err := parseForwarded(fields[2].Value)
		if err != nil || back != ap {
			t.Fatalf("round trip of %v through %q = %v, %v", ap, fields[2].Value, back, err)
		}
	})
}

// FuzzTraceparent: a traceparent validTraceparent keeps is a W3C value (version 00 exactly
// 55 characters) that is safe to write into the next hop's headers unchanged.
func FuzzTraceparent(f *testing.F) {
	for _, s := range seedTraceparent {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		if !validTraceparent(v) {
			return
		}
		if strings.HasPrefix(v, "00-") && len(v) != 55 {
			t.Fatalf("kept version-00 traceparent of %d characters: %q", len(v), v)
		}
		if !printableASCII(v) {
			t.Fatalf("kept traceparent with non-printable bytes: %q", v)
		}
	})
}

// FuzzBaggage feeds a CONNECT carrying an arbitrary baggage (and traceparent and forwarded)
// to the request parser: what it keeps is within the size limit and safe to forward.
func FuzzBaggage(f *testing.F) {
	for i, s := range seedBaggage {
		f.Add(s, seedTraceparent[i%len(seedTraceparent)], seedForwarded[i%len(seedForwarded)])
	}
	f.Fuzz(func(t *testing.T, baggage, traceparent, forwarded string) {
		r, err := parseFields([]hpack.HeaderField{
			{Name: ":method", Value: "CONNECT"},
			{Name: ":authority", Value: "10.0.0.1:80"},
			{Name: headerForwarded, Value: forwarded},
			{Name: headerTraceparent, Value: traceparent},
			{Name: headerBaggage, Value: baggage},
		})
		if err != nil {
			return
		}
		if len(r.Baggage) > maxBaggageLen {
			t.Fatalf("kept %d bytes of baggage", len(r.Baggage))
		}
		for _, v := range []string{r.Baggage, r.Traceparent} {
			if !validFieldValue(v) || !printableASCII(v) {
				t.Fatalf("kept a value that is unsafe to forward: %q", v)
			}
		}
		if r.Forwarded.Addr().Zone() != "" {
			t.Fatalf("kept zoned forwarded address %v", r.Forwarded)
		}
	})
}
