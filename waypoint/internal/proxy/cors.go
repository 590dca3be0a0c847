package proxy

import (
	"net/http"
	"strconv"
	"strings"

	"ambit.dev/waypoint/internal/route"
)

// cors applies a route's CORS policy before forwarding: a preflight from an allowed origin is
// answered here (non-nil response); a preflight from another origin is answered empty when the
// policy ignores unmatched preflights, else forwarded. allowed reports whether the request's
// origin is allowed, so that corsResponse adds the headers to the upstream's answer.
func (ex *exchange) cors(c *route.Cors) (resp *http.Response, allowed bool) {
	origin := ex.req.Header.Get("Origin")
	if origin == "" {
		return nil, false
	}
	allowed = c.Allows(origin)
	preflight := ex.req.Method == http.MethodOptions && ex.req.Header.Get("Access-Control-Request-Method") != ""
	switch {
	case !preflight:
		return nil, allowed
	case allowed:
		resp = ex.local(http.StatusOK, "")
		resp.Body, resp.ContentLength = http.NoBody, 0
		resp.Header.Del("Content-Type")
		resp.Header.Set("Content-Length", "0")
		h := resp.Header
		corsHeaders(h, c, origin)
		if len(c.AllowMethods) > 0 {
			h.Set("Access-Control-Allow-Methods", strings.Join(c.AllowMethods, ","))
		}
		if len(c.AllowHeaders) > 0 {
			h.Set("Access-Control-Allow-Headers", strings.Join(c.AllowHeaders, ","))
		}
		if c.MaxAge > 0 {
			h.Set("Access-Control-Max-Age", strconv.Itoa(int(c.MaxAge.Seconds())))
		}
		return resp, true
	case c.IgnoreUnmatchedPreflights:
		resp = ex.local(http.StatusOK, "")
		resp.Body, resp.ContentLength = http.NoBody, 0
		resp.Header.Del("Content-Type")
		resp.Header.Set("Content-Length", "0")
		return resp, false
	}
	return nil, false
}

// corsHeaders sets the headers every answer to an allowed origin carries.
func corsHeaders(h http.Header, c *route.Cors, origin string) {
	h.Set("Access-Control-Allow-Origin", origin)
	h.Add("Vary", "Origin")
	if c.AllowCredentials {
		h.Set("Access-Control-Allow-Credentials", "true")
	}
	if len(c.ExposeHeaders) > 0 {
		h.Set("Access-Control-Expose-Headers", strings.Join(c.ExposeHeaders, ","))
	}
}
