package proxy

import (
	"context"
	"net/http"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// propagator reads and writes W3C traceparent/tracestate and baggage.
var propagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

// startSpan starts the request's server span. Its parent is the request's traceparent, else
// the one the source ztunnel put on the CONNECT.
func (p *Proxy) startSpan(ctx context.Context, d *downstream, req *http.Request) (context.Context, trace.Span) {
	pctx := propagator.Extract(ctx, propagation.HeaderCarrier(req.Header))
	if !trace.SpanContextFromContext(pctx).IsValid() && d.trace != "" {
		pctx = propagator.Extract(ctx, propagation.MapCarrier{"traceparent": d.trace, "baggage": d.baggage})
	}
	if !p.spans {
		// Spans go nowhere: the no-op tracer only carries the parent's context on, and
		// the name and attributes would be built and dropped for every request.
		return p.tracer.Start(pctx, "")
	}
	return p.tracer.Start(pctx, req.Method+" "+req.URL.Path,
		trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(
			attribute.String("http.request.method", req.Method),
			attribute.String("url.path", req.URL.Path),
			attribute.String("server.address", req.Host),
			attribute.String("ambit.destination", d.authority.String()),
			attribute.String("ambit.source_principal", d.peer.String()),
		))
}

// injectTrace writes the span's context into the upstream request, so the application's
// spans join the trace.
func (p *Proxy) injectTrace(ctx context.Context, span trace.Span, h http.Header, _ *downstream) {
	propagator.Inject(trace.ContextWithSpan(ctx, span), propagation.HeaderCarrier(h))
}
