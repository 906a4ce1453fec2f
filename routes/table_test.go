package routes

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// precedenceRoutes is a table exercising every precedence rule; Name is
// what the tests expect Match to return.
func precedenceRoutes() []*Route {
	return []*Route{
		{Name: "root", PathPrefix: "/"},
		{Name: "api", PathPrefix: "/api"},
		{Name: "api-exact", Path: "/api/exact"},
		{Name: "api-v1-slash", PathPrefix: "/api/v1/"},
		{Name: "host-api", Hosts: []string{"example.com"}, PathPrefix: "/api"},
		{Name: "wild-api", Hosts: []string{"*.example.com"}, PathPrefix: "/api"},
		{Name: "submit-post", Path: "/submit", Methods: []string{"POST"}},
		{Name: "submit-any", Path: "/submit"},
		{Name: "tie-first", PathPrefix: "/tie"},
		{Name: "tie-second", PathPrefix: "/tie/"},
		{Name: "deep-get", PathPrefix: "/deep/x", Methods: []string{"GET", "HEAD"}},
		{Name: "only-get", Hosts: []string{"only.example.com"}, Path: "/only", Methods: []string{"GET"}},
		{Name: "multi-host", Hosts: []string{"a.test", "b.test"}, Path: "/multi"},
		{Name: "both", Path: "/both", PathPrefix: "/both/sub"},
		{Name: "ipv6", Hosts: []string{"[::1]"}, Path: "/v6"},
		{Name: "exact-beats-wild", Hosts: []string{"www.example.com"}, PathPrefix: "/"},
	}
}

func mustNew(t testing.TB, rs []*Route) *Table {
	t.Helper()
	tbl, err := New(rs)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return tbl
}

func name(r *Route) string {
	if r == nil {
		return "<nil>"
	}
	return r.Name
}

func TestMatchPrecedence(t *testing.T) {
	tbl := mustNew(t, precedenceRoutes())
	tests := []struct {
		name, method, host, path, want string
	}{
		// Host: exact > one-label wildcard > any host.
		{"exact host", "GET", "example.com", "/api/x", "host-api"},
		{"wildcard host", "GET", "a.example.com", "/api/x", "wild-api"},
		{"any host", "GET", "other.test", "/api/x", "api"},
		{"exact host beats wildcard", "GET", "www.example.com", "/api/x", "exact-beats-wild"},
		{"host group without the path falls back", "GET", "example.com", "/other", "root"},
		{"wildcard group without the path falls back", "GET", "a.example.com", "/other", "root"},
		{"wildcard is one label", "GET", "a.b.example.com", "/api", "api"},
		{"wildcard needs a label", "GET", "example.com", "/api/x", "host-api"},
		{"host with port", "GET", "example.com:8080", "/api", "host-api"},
		{"host upper case", "GET", "EXAMPLE.Com", "/api", "host-api"},
		{"host upper case with port", "GET", "A.EXAMPLE.COM:443", "/api", "wild-api"},
		{"host with final dot", "GET", "example.com.", "/api", "host-api"},
		{"host with final dot and port", "GET", "example.com.:80", "/api", "host-api"},
		{"empty host", "GET", "", "/api", "api"},
		{"ipv6 host", "GET", "[::1]:8080", "/v6", "ipv6"},
		{"ipv6 host no port", "GET", "[::1]", "/v6", "ipv6"},
		{"ipv6 other path", "GET", "[::1]:8080", "/api", "api"},
		{"second host of a route", "GET", "b.test", "/multi", "multi-host"},
		{"host not in route", "GET", "c.test", "/multi", "root"},

		// Path: exact > longest prefix, on segment boundaries.
		{"prefix itself", "GET", "x.test", "/api", "api"},
		{"prefix with slash", "GET", "x.test", "/api/", "api"},
		{"prefix child", "GET", "x.test", "/api/x", "api"},
		{"prefix grandchild", "GET", "x.test", "/api/x/y/z", "api"},
		{"not a segment boundary", "GET", "x.test", "/apix", "root"},
		{"exact beats prefix", "GET", "x.test", "/api/exact", "api-exact"},
		{"exact is exact", "GET", "x.test", "/api/exact/", "api"},
		{"exact child is prefix", "GET", "x.test", "/api/exact/x", "api"},
		{"longest prefix", "GET", "x.test", "/api/v1/users", "api-v1-slash"},
		{"trailing-slash prefix matches without slash", "GET", "x.test", "/api/v1", "api-v1-slash"},
		{"trailing-slash prefix with slash", "GET", "x.test", "/api/v1/", "api-v1-slash"},
		{"trailing-slash prefix boundary", "GET", "x.test", "/api/v1x", "api"},
		{"root", "GET", "x.test", "/", "root"},
		{"double slash", "GET", "x.test", "//api", "root"},
		{"route with path and prefix, path", "GET", "x.test", "/both", "both"},
		{"route with path and prefix, prefix", "GET", "x.test", "/both/sub/x", "both"},
		{"route with path and prefix, neither", "GET", "x.test", "/both/other", "root"},

		// Methods skip to the next candidate; ties go to file order.
		{"method allowed", "POST", "x.test", "/submit", "submit-post"},
		{"method skips to next exact", "GET", "x.test", "/submit", "submit-any"},
		{"method skips to shorter prefix", "POST", "x.test", "/deep/x/y", "root"},
		{"method allowed on prefix", "HEAD", "x.test", "/deep/x/y", "deep-get"},
		{"method is case-sensitive", "get", "x.test", "/deep/x", "root"},
		{"method skips to next host group", "POST", "only.example.com", "/only", "root"},
		{"method allowed on host", "GET", "only.example.com", "/only", "only-get"},
		{"tie goes to file order", "GET", "x.test", "/tie/x", "tie-first"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tbl.Match([]byte(tt.method), []byte(tt.host), []byte(tt.path))
			if name(got) != tt.want {
				t.Errorf("Match(%q, %q, %q) = %q, want %q", tt.method, tt.host, tt.path, name(got), tt.want)
			}
		})
	}
}

func TestMatchNone(t *testing.T) {
	tbl := mustNew(t, []*Route{
		{Name: "api", PathPrefix: "/api"},
		{Name: "chat", Path: "/chat", Methods: []string{"GET"}},
		{Name: "wild", Hosts: []string{"*.example.com"}, Path: "/"},
	})
	tests := []struct{ method, host, path string }{
		{"GET", "x.test", "/"},
		{"GET", "x.test", "/apix"},
		{"GET", "x.test", "/ap"},
		{"GET", "x.test", ""},
		{"GET", "x.test", "api"},
		{"POST", "x.test", "/chat"},
		{"GET", "x.test", "/chat/"},
		{"GET", "example.com", "/"},     // the wildcard needs a label before it
		{"GET", "a.b.example.com", "/"}, // ... and exactly one
	}
	for _, tt := range tests {
		if got := tbl.Match([]byte(tt.method), []byte(tt.host), []byte(tt.path)); got != nil {
			t.Errorf("Match(%q, %q, %q) = %q, want no route", tt.method, tt.host, tt.path, got.Name)
		}
	}
	if got := tbl.Match([]byte("GET"), []byte("a.example.com"), []byte("/")); name(got) != "wild" {
		t.Errorf("Match(GET, a.example.com, /) = %q, want %q", name(got), "wild")
	}

	empty := mustNew(t, nil)
	if got := empty.Match([]byte("GET"), []byte("x"), []byte("/")); got != nil {
		t.Errorf("empty table: Match = %q, want no route", got.Name)
	}
}

func TestNew(t *testing.T) {
	rs := precedenceRoutes()
	tbl := mustNew(t, rs)
	if got := tbl.Routes(); !slices.Equal(got, rs) {
		t.Errorf("Routes() is not the routes in file order")
	}
	for i, r := range rs {
		if r.Index != i {
			t.Errorf("route %q: Index = %d, want %d", r.Name, r.Index, i)
		}
	}

	bad := []struct {
		name  string
		route Route
		err   string
	}{
		{"no path", Route{Name: "r"}, `route "r": needs path or path_prefix`},
		{"relative path", Route{Name: "r", Path: "x"}, `path "x" must start with /`},
		{"relative prefix", Route{Name: "r", PathPrefix: "x/"}, `path_prefix "x/" must start with /`},
		{"bad host", Route{Name: "r", Path: "/", Hosts: []string{"a b"}}, `invalid character ' '`},
		{"host with port", Route{Name: "r", Path: "/", Hosts: []string{"a.test:80"}}, `must have no port`},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.route
			_, err := New([]*Route{&r})
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("New(%+v) error = %v, want one containing %q", tt.route, err, tt.err)
			}
		})
	}
}

func TestCheckHost(t *testing.T) {
	good := []string{
		"example.com", "*.example.com", "localhost", "a-b_c.example", "127.0.0.1",
		"[::1]", "[2001:db8::1]", "[::ffff:1.2.3.4]", "xn--bcher-kva.example",
	}
	for _, h := range good {
		if err := CheckHost(h); err != nil {
			t.Errorf("CheckHost(%q) = %v, want nil", h, err)
		}
	}
	bad := []string{
		"", "*.", "*", "**.example.com", "a.*.example.com", "*example.com", "Example.com",
		"a b", "a/b", "bücher.example",
		// Match strips ports and a final dot from the request host, so
		// these patterns could never match.
		"example.com:8080", "*.example.com:80", "::1", "[::1]:80", "[::1", "::1]",
		"[1.2.3.4]", "[example.com]", "*.[::1]", "a[::1]", "example.com.",
	}
	for _, h := range bad {
		if err := CheckHost(h); err == nil {
			t.Errorf("CheckHost(%q) = nil, want an error", h)
		}
	}
}

// TestMatchAllocs guards the hot path: Match must not allocate.
func TestMatchAllocs(t *testing.T) {
	tbl := mustNew(t, precedenceRoutes())
	long := "/" + strings.Repeat("seg/", 64)
	cases := []struct{ method, host, path string }{
		{"GET", "example.com", "/api/x"},
		{"GET", "A.EXAMPLE.COM:8443", "/api/v1/users/42"},
		{"POST", "only.example.com", "/only"},
		{"GET", "nomatch.test", "/nothing/here/at/all/"},
		{"GET", strings.Repeat("h", 300) + ".example.com", long},
		{"GET", "[::1]:8080", "/v6"},
	}
	for _, c := range cases {
		method, host, path := []byte(c.method), []byte(c.host), []byte(c.path)
		allocs := testing.AllocsPerRun(100, func() {
			tbl.Match(method, host, path)
		})
		if allocs != 0 {
			t.Errorf("Match(%q, %.20q, %.20q) allocates %v times, want 0", c.method, c.host, c.path, allocs)
		}
	}
}

func BenchmarkMatch(b *testing.B) {
	var rs []*Route
	for i := range 50 {
		rs = append(rs,
			&Route{Name: fmt.Sprintf("svc%d", i), Hosts: []string{fmt.Sprintf("svc%d.example.com", i)}, PathPrefix: "/"},
			&Route{Name: fmt.Sprintf("api%d", i), PathPrefix: fmt.Sprintf("/api/v%d", i)},
			&Route{Name: fmt.Sprintf("ws%d", i), Path: fmt.Sprintf("/ws/%d", i), Methods: []string{"GET"}},
		)
	}
	rs = append(rs,
		&Route{Name: "wild", Hosts: []string{"*.apps.example.com"}, PathPrefix: "/"},
		&Route{Name: "root", PathPrefix: "/"},
	)
	tbl := mustNew(b, rs)
	cases := []struct{ name, method, host, path string }{
		{"exact-host", "GET", "svc7.example.com:443", "/index.html"},
		{"wildcard", "GET", "Tenant1.Apps.Example.com", "/dashboard"},
		{"exact-path", "GET", "gw.example.com", "/ws/42"},
		{"deep-prefix", "POST", "gw.example.com", "/api/v3/users/42/messages/7"},
		{"fallback", "GET", "gw.example.com", "/static/css/site.css"},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			method, host, path := []byte(c.method), []byte(c.host), []byte(c.path)
			b.ReportAllocs()
			for b.Loop() {
				if tbl.Match(method, host, path) == nil {
					b.Fatal("no route")
				}
			}
		})
	}
}
