package proxy

import (
	"context"
	"net/http"
	"testing"

	"golang.org/x/net/http/httpguts"
)

// FuzzTraceContext runs the waypoint's trace propagation on arbitrary trace context, from
// the CONNECT (traceparent and baggage as HBONE passed them) and from the request's own
// headers: it never panics, and every header it writes upstream is a valid field value.
func FuzzTraceContext(f *testing.F) {
	for _, s := range [][4]string{
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "userId=alice,serverNode=DF%2028", "", ""},
		{"", "", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", "key1=value1;property1;property2, key2 = value2"},
		{"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future", "k=v", "garbage", "=,;;=%zz"},
		{"00-00000000000000000000000000000000-b7ad6b7169203331-01", "", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", "k=\xe2\x82\xac"},
	} {
		f.Add(s[0], s[1], s[2], s[3])
	}
	e := newEnv(f)
	p := e.proxy
	f.Fuzz(func(t *testing.T, connectTP, connectBaggage, reqTP, reqBaggage string) {
		d := &downstream{trace: connectTP, baggage: connectBaggage}
		req, _ := http.NewRequest(http.MethodGet, "http://web/", nil)
		req.Header["Traceparent"] = []string{reqTP}
		req.Header["Baggage"] = []string{reqBaggage}
		ctx, span := p.startSpan(context.Background(), d, req)
		defer span.End()
		out := http.Header{}
		p.injectTrace(ctx, span, out, d)
		for k, vv := range out {
			for _, v := range vv {
				if !httpguts.ValidHeaderFieldValue(v) {
					t.Fatalf("wrote %s: %q upstream", k, v)
				}
			}
		}
	})
}
