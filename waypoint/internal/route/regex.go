package route

import (
	"regexp"
	"strings"
)

// MaxRegexLen bounds a regular expression in a match: RE2 runs in time linear in its input,
// but its compiled size grows with the expression.
const MaxRegexLen = 1024

// wholeRegexp compiles expr (RE2) to match a whole value, as Envoy's safe_regex and so
// Istio's and Gateway API's regular expression matches do; nil for "". field names expr.
func wholeRegexp(expr, field string) (*regexp.Regexp, error) {
	if expr == "" {
		return nil, nil
	}
	if len(expr) > MaxRegexLen {
		return nil, fieldError(field, "%d bytes exceeds %d", len(expr), MaxRegexLen)
	}
	if _, err := regexp.Compile(expr); err != nil {
		return nil, fieldError(field, "%q is not a regular expression (RE2): %v", expr, strings.TrimPrefix(err.Error(), "error parsing regexp: "))
	}
	return regexp.Compile("^(?:" + expr + ")$")
}

// matches reports whether v matches the query parameter match.
func (q Query) matches(v string) bool {
	if q.Regex != nil {
		return q.Regex.MatchString(v)
	}
	return v == q.Value
}

// RewritePath is path with to in place of the prefix the route matched it by (a prefix
// match), or to alone (any other match, or full). A "/" left between to and the rest is
// kept once: /api/users under prefix /api rewritten to / is /users.
func (r *Route) RewritePath(path, to string, full bool) string {
	if full {
		return to
	}
	for _, m := range r.Matches {
		pfx, ok := m.PathStringPrefix, m.PathStringPrefix != ""
		if m.hasPath && m.PathExact == "" && m.PathStringPrefix == "" && m.PathRegex == nil {
			pfx, ok = m.PathPrefix, true // "" for the prefix "/"
		}
		if ok && strings.HasPrefix(path, pfx) {
			rest := path[len(pfx):]
			if strings.HasSuffix(to, "/") && strings.HasPrefix(rest, "/") {
				rest = rest[1:]
			}
			return to + rest
		}
	}
	return to
}
