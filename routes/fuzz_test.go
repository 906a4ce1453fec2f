package routes

import (
	"slices"
	"strings"
	"testing"
)

// FuzzMatch checks Match against a slow reference that applies the
// documented rules route by route: it must never panic, and any route it
// returns must really match, and be the one the rules pick.
func FuzzMatch(f *testing.F) {
	f.Add("GET", "example.com", "/api/x")
	f.Add("POST", "A.Example.COM:8080", "/api/v1/")
	f.Add("GET", "[::1]:80", "//")
	tbl := mustNew(f, precedenceRoutes())
	rs := tbl.Routes()
	f.Fuzz(func(t *testing.T, method, host, path string) {
		got := tbl.Match([]byte(method), []byte(host), []byte(path))
		if got != nil && !matches(got, method, normHost(host), path) {
			t.Fatalf("Match(%q, %q, %q) = %q, which does not match", method, host, path, got.Name)
		}
		if len(host) > 253 {
			return // not a DNS name; Match may skip lower-casing it
		}
		if want := reference(rs, method, host, path); got != want {
			t.Fatalf("Match(%q, %q, %q) = %q, want %q", method, host, path, name(got), name(want))
		}
	})
}

// reference picks the route by the rules in the doc comment of [Table],
// looking at every route in turn.
func reference(rs []*Route, method, host, path string) *Route {
	h := normHost(host)
	tiers := []func(r *Route) bool{
		func(r *Route) bool { return slices.Contains(r.Hosts, h) },
		func(r *Route) bool {
			i := strings.IndexByte(h, '.')
			return i > 0 && slices.Contains(r.Hosts, "*"+h[i:])
		},
		func(r *Route) bool { return len(r.Hosts) == 0 },
	}
	for _, inTier := range tiers {
		for _, r := range rs {
			if inTier(r) && r.Path != "" && r.Path == path && r.allows([]byte(method)) {
				return r
			}
		}
		var best *Route
		for _, r := range rs {
			if inTier(r) && r.PathPrefix != "" && prefixMatches(r.PathPrefix, path) && r.allows([]byte(method)) &&
				(best == nil || len(trimPrefix(r.PathPrefix)) > len(trimPrefix(best.PathPrefix))) {
				best = r
			}
		}
		if best != nil {
			return best
		}
	}
	return nil
}

// matches reports whether r answers to the request on its own: host,
// path or prefix, and method.
func matches(r *Route, method, host, path string) bool {
	hostOK := len(r.Hosts) == 0 || slices.Contains(r.Hosts, host)
	if i := strings.IndexByte(host, '.'); i > 0 && slices.Contains(r.Hosts, "*"+host[i:]) {
		hostOK = true
	}
	pathOK := r.Path != "" && r.Path == path || r.PathPrefix != "" && prefixMatches(r.PathPrefix, path)
	return hostOK && pathOK && r.allows([]byte(method))
}

// prefixMatches reports whether prefix matches path on a segment boundary.
func prefixMatches(prefix, path string) bool {
	p := trimPrefix(prefix)
	if p == "/" {
		return strings.HasPrefix(path, "/")
	}
	return path == p || strings.HasPrefix(path, p+"/")
}

// normHost lower-cases host and drops its port and a final dot.
func normHost(host string) string {
	if strings.HasPrefix(host, "[") {
		if i := strings.IndexByte(host, ']'); i > 0 {
			host = host[:i+1]
		}
	} else if i := strings.LastIndexByte(host, ':'); i >= 0 {
		host = host[:i]
	}
	host = strings.TrimSuffix(host, ".")
	b := []byte(host)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
