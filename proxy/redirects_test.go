package proxy

import (
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"

	"github.com/wsgate/wsgate/routes"
	"github.com/wsgate/wsgate/upstream"
)

func TestUnderPrefix(t *testing.T) {
	tg := &upstream.Target{Scheme: "http", Addr: "10.0.0.5:8080", Host: "app.internal"}
	v6 := &upstream.Target{Scheme: "http", Addr: "[::1]:8080", Host: "::1"}
	host := []byte("example.com")
	for _, tc := range []struct {
		v      string
		t      *upstream.Target
		want   string // "" = unchanged
		client string // the client's scheme; "" = http
	}{
		{"/login", tg, "/app/login", ""},
		{"/", tg, "/app/", ""},
		{"/login?next=/x#f", tg, "/app/login?next=/x#f", ""},
		{"/apple", tg, "/app/apple", ""},
		{"/app", tg, "", ""},
		{"/app/x", tg, "", ""},
		{"/app?x=1", tg, "", ""},
		{"/app#top", tg, "", ""},
		{"http://10.0.0.5:8080/login", tg, "/app/login", ""},
		{"HTTP://10.0.0.5:8080/login", tg, "/app/login", ""},
		{"http://APP.internal:8080/login", tg, "/app/login", ""},
		{"http://10.0.0.5:8080", tg, "/app/", ""},
		{"http://10.0.0.5:8080?x=1", tg, "/app/?x=1", ""},
		{"http://10.0.0.5:8080/app/x", tg, "/app/x", ""},
		{"http://example.com/login", tg, "/app/login", ""},       // the Host sent
		{"https://example.com/login", tg, "", ""},                // to HTTPS, from a client on HTTP: kept
		{"https://example.com/login", tg, "/app/login", "https"}, // the client's scheme, default port
		{"http://example.com/login", tg, "", "https"},            // to HTTP, from a client on HTTPS: kept
		{"https://10.0.0.5:8080/login", tg, "", ""},              // not the target's scheme
		{"http://example.com:80/login", tg, "/app/login", ""},    // the default port, spelt out
		{"//10.0.0.5:8080/x", tg, "/app/x", ""},
		{"http://[::1]:8080/x", v6, "/app/x", ""},
		{"http://app.internal/login", tg, "", ""}, // port 80, not the target's 8080
		{"http://example.com:8443/login", tg, "", ""},
		{"https://other.example/login", tg, "", ""},
		{"//other.example/x", tg, "", ""},
		{"http://user@10.0.0.5:8080/x", tg, "", ""},
		{"ftp://10.0.0.5:8080/x", tg, "", ""},
		{"login", tg, "", ""},
		{"../login", tg, "", ""},
		{"?page=2", tg, "", ""},
		{"http:/login", tg, "", ""},
	} {
		client := tc.client
		if client == "" {
			client = "http"
		}
		got, ok := underPrefix(nil, []byte(tc.v), "/app", tc.t, host, client)
		if tc.want == "" {
			if ok {
				t.Errorf("underPrefix(%q), client on %s = %q, want it unchanged", tc.v, client, got)
			}
			continue
		}
		if !ok || string(got) != tc.want {
			t.Errorf("underPrefix(%q), client on %s = %q, %v; want %q", tc.v, client, got, ok, tc.want)
		}
	}
}

func TestRewriteRedirectsDoesNotAllocate(t *testing.T) {
	if testing.CoverMode() != "" {
		t.Skip("coverage counters change allocation counts")
	}
	tg := &upstream.Target{Scheme: "http", Addr: "10.0.0.5:8080", Host: "app.internal"}
	r := &routes.Route{PathPrefix: "/app/", StripPrefix: true, RewriteRedirects: true}
	var h fasthttp.ResponseHeader
	host := []byte("example.com")
	for _, loc := range []string{"/login?next=/x", "http://10.0.0.5:8080/login", "https://other.example/"} {
		f := func() {
			h.Set("Location", loc)
			rewriteRedirects(&h, r, tg, host, "http")
		}
		f()
		if n := testing.AllocsPerRun(100, f); n != 0 {
			t.Errorf("Location %q: %v allocations per call, want 0", loc, n)
		}
	}
	h.Reset()
	h.Set("Content-Type", "text/plain")
	if n := testing.AllocsPerRun(100, func() { rewriteRedirects(&h, r, tg, host, "http") }); n != 0 {
		t.Errorf("no Location: %v allocations per call, want 0", n)
	}
}

// redirectBackend answers with the Location and Content-Location its
// query asks for (loc, cloc), 302 on a WebSocket handshake too.
func redirectBackend(t *testing.T) string {
	return startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if v := q.Get("loc"); v != "" {
			w.Header().Set("Location", v) // as written, not resolved
		}
		if v := q.Get("cloc"); v != "" {
			w.Header().Set("Content-Location", v)
		}
		w.Header().Set("X-Path", r.URL.Path)
		w.WriteHeader(http.StatusFound)
		io.WriteString(w, "moved")
	}))
}

// TestRewriteRedirects: on a strip_prefix route, the backend's redirects
// come back under the prefix; the opt-out and routes without
// strip_prefix pass them as sent.
func TestRewriteRedirects(t *testing.T) {
	backend := redirectBackend(t)
	up := testUpstream(backend)
	route := func(name, prefix string, strip, rewrite bool) *routes.Route {
		r := wsRoute(up)
		r.Name, r.PathPrefix, r.StripPrefix, r.RewriteRedirects = name, prefix, strip, rewrite
		return r
	}
	p := startProxy(t,
		route("app", "/app/", true, true),
		route("optout", "/optout", true, false),
		route("plain", "/plain", false, false),
	)
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, tc := range []struct {
		name, path, loc, cloc string
		wantLoc, wantCloc     string
	}{
		{"path outside the prefix", "/app/x", "/login", "", "/app/login", ""},
		{"backend root", "/app/x", "/", "", "/app/", ""},
		{"with a query", "/app/x", "/login?next=/a/b", "", "/app/login?next=/a/b", ""},
		{"absolute to the backend", "/app/x", "http://" + backend + "/login", "", "/app/login", ""},
		{"absolute to the Host sent", "/app/x", "http://" + p.addr + "/login", "", "/app/login", ""},
		{"another host", "/app/x", "https://other.example/login", "", "https://other.example/login", ""},
		{"relative", "/app/x/y", "login", "", "login", ""},
		{"already under the prefix", "/app/x", "/app/elsewhere", "", "/app/elsewhere", ""},
		{"Content-Location", "/app/x", "", "/doc/1", "", "/app/doc/1"},
		{"opted out", "/optout/x", "/login", "/doc/1", "/login", "/doc/1"},
		{"no strip_prefix", "/plain/x", "/login", "", "/login", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := url.Values{}
			if tc.loc != "" {
				q.Set("loc", tc.loc)
			}
			if tc.cloc != "" {
				q.Set("cloc", tc.cloc)
			}
			resp, err := client.Get("http://" + p.addr + tc.path + "?" + q.Encode())
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusFound {
				t.Fatalf("status %d, want 302", resp.StatusCode)
			}
			if got := resp.Header.Get("Location"); got != tc.wantLoc {
				t.Errorf("Location %q, want %q", got, tc.wantLoc)
			}
			if got := resp.Header.Get("Content-Location"); got != tc.wantCloc {
				t.Errorf("Content-Location %q, want %q", got, tc.wantCloc)
			}
		})
	}

	// A WebSocket handshake the backend refuses with a redirect.
	for _, tc := range []struct{ path, want string }{
		{"/app/ws?loc=%2Flogin", "/app/login"},
		{"/optout/ws?loc=%2Flogin", "/login"},
	} {
		d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
		c, resp, err := d.Dial("ws://"+p.addr+tc.path, nil)
		if err == nil {
			c.Close()
			t.Fatalf("%s: handshake succeeded, want the backend's 302", tc.path)
		}
		if resp == nil || resp.StatusCode != http.StatusFound {
			t.Fatalf("%s: %v, want the backend's 302", tc.path, err)
		}
		if got := resp.Header.Get("Location"); got != tc.want {
			t.Errorf("%s: refused handshake's Location %q, want %q", tc.path, got, tc.want)
		}
	}
}

// TestRewriteRedirectsResponseHeadersWin: a Location set in the route's
// response_headers is not rewritten.
func TestRewriteRedirectsResponseHeadersWin(t *testing.T) {
	r := wsRoute(testUpstream(redirectBackend(t)))
	r.PathPrefix, r.StripPrefix, r.RewriteRedirects = "/app", true, true
	r.ResponseHeaders.Set = []routes.Header{{Name: "Location", Value: "/fixed"}}
	p := startProxy(t, r)
	resp, _ := rawStatus(t, p.addr, "GET /app/x?loc=/login HTTP/1.1\r\nHost: x\r\n\r\n")
	if got := resp.Header.Get("Location"); got != "/fixed" {
		t.Errorf("Location %q, want the route's %q", got, "/fixed")
	}
	if !strings.HasPrefix(resp.Status, "302") {
		t.Errorf("status %q, want 302", resp.Status)
	}
}

// TestClientScheme: the client's scheme is https on a TLS listener, or
// when a trusted proxy says so in one X-Forwarded-Proto; an untrusted
// peer's header counts for nothing.
func TestClientScheme(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	for _, tc := range []struct {
		peer  string
		proto []string
		want  string
	}{
		{"10.1.2.3:5000", nil, "http"},
		{"10.1.2.3:5000", []string{"https"}, "https"},
		{"10.1.2.3:5000", []string{"HTTPS"}, "https"},
		{"10.1.2.3:5000", []string{"http"}, "http"},
		{"10.1.2.3:5000", []string{"https", "http"}, "http"},
		{"192.0.2.7:5000", []string{"https"}, "http"},
	} {
		var req fasthttp.Request
		req.SetRequestURI("/x")
		for _, p := range tc.proto {
			req.Header.Add("X-Forwarded-Proto", p)
		}
		var ctx fasthttp.RequestCtx
		ctx.Init(&req, net.TCPAddrFromAddrPort(netip.MustParseAddrPort(tc.peer)), nil)
		if got := clientScheme(&ctx, trusted); got != tc.want {
			t.Errorf("peer %s, X-Forwarded-Proto %q: %s, want %s", tc.peer, tc.proto, got, tc.want)
		}
		if got := clientScheme(&ctx, nil); got != "http" {
			t.Errorf("no trusted proxies, peer %s: %s, want http", tc.peer, got)
		}
	}
}
