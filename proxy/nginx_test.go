package proxy

import (
	"net/http"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/wsgate/wsgate/routes"
)

// Behaviours the README's "Coming from nginx" table states.

// TestRequestHeadersSetHost: request_headers.set Host reaches the backend,
// on HTTP requests and on the WebSocket handshake (nginx's
// proxy_set_header Host, and $proxy_host when written out); without it the
// client's Host goes through with its port (nginx's $http_host, not
// $host), lower-cased.
func TestRequestHeadersSetHost(t *testing.T) {
	type seen struct{ host, uri string }
	got := make(chan seen, 1)
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{r.Host, r.RequestURI}
		if r.Header.Get("Upgrade") != "" {
			c, err := up.Upgrade(w, r, nil)
			if err == nil {
				c.Close()
			}
		}
	}))
	set := wsRoute(testUpstream(backend))
	set.Name, set.PathPrefix = "set", "/set"
	set.RequestHeaders.Set = []routes.Header{{Name: "Host", Value: "internal.example:8080"}}
	plain := wsRoute(testUpstream(backend))
	p := startProxy(t, set, plain)

	for _, tc := range []struct{ path, host, want string }{
		{"/set/x", "public.example", "internal.example:8080"},
		{"/other", "public.example:8443", "public.example:8443"},
		{"/other", "PUBLIC.example", "public.example"}, // fasthttp lower-cases the URI's host
	} {
		resp, _ := rawStatus(t, p.addr, "GET "+tc.path+" HTTP/1.1\r\nHost: "+tc.host+"\r\n\r\n")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: status %d", tc.path, resp.StatusCode)
		}
		if s := <-got; s.host != tc.want {
			t.Errorf("GET %s with Host %q: backend saw Host %q, want %q", tc.path, tc.host, s.host, tc.want)
		}
		d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
		c, _, err := d.Dial("ws://"+p.addr+tc.path, http.Header{"Host": {tc.host}})
		if err != nil {
			t.Fatalf("WebSocket %s: %v", tc.path, err)
		}
		c.Close()
		if s := <-got; s.host != tc.want {
			t.Errorf("WebSocket %s with Host %q: backend saw Host %q, want %q", tc.path, tc.host, s.host, tc.want)
		}
	}
}

// TestPrefixWithoutSlash: a path_prefix written "/api/" also takes "/api"
// itself, forwarded at once: nginx's location /api/ answers "/api" with
// a 301 to "/api/" instead.
func TestPrefixWithoutSlash(t *testing.T) {
	got := make(chan string, 1)
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.RequestURI
	}))
	strip := wsRoute(testUpstream(backend))
	strip.Name, strip.PathPrefix, strip.StripPrefix = "strip", "/api/", true
	keep := wsRoute(testUpstream(backend))
	keep.Name, keep.PathPrefix = "keep", "/web/"
	other := &routes.Route{Name: "other", PathPrefix: "/", Respond: &routes.Respond{Status: 404, Body: "other"}}
	p := startProxy(t, strip, keep, other)
	for _, tc := range []struct{ target, want string }{
		{"/api", "/"},
		{"/api?x=1", "/?x=1"},
		{"/api/", "/"},
		{"/web", "/web"},
		{"/web/", "/web/"},
	} {
		resp, _ := rawStatus(t, p.addr, "GET "+tc.target+" HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: status %d, want 200 from the backend", tc.target, resp.StatusCode)
		}
		if uri := <-got; uri != tc.want {
			t.Errorf("GET %s: backend saw %q, want %q", tc.target, uri, tc.want)
		}
	}
}
