package integration

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/fasthttp/websocket"
)

// ridGenerated is the form of an id wsgate makes: 16 hex digits.
var ridGenerated = regexp.MustCompile(`^[0-9a-f]{16}$`)

// ridTraceparent is the W3C Trace Context example header.
const ridTraceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// ridFixture is an HTTP and WebSocket echo backend behind two gateways:
// one that trusts no proxy, and one that trusts 127.0.0.1 (the tests'
// own address).
type ridFixture struct {
	untrusted, trusted *gw
	// upgrades receives the headers of each WebSocket handshake the
	// backend got.
	upgrades chan http.Header
}

func startRIDFixture(t *testing.T) *ridFixture {
	t.Helper()
	f := &ridFixture{upgrades: make(chan http.Header, 8)}
	ws := newWSBackend()
	addr := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if websocket.IsWebSocketUpgrade(r) {
			f.upgrades <- r.Header.Clone()
		}
		ws.ServeHTTP(w, r) // echoHandler for plain HTTP
	}))
	t.Cleanup(func() { // as wsBackend.start does
		ws.mu.Lock()
		for c := range ws.conns {
			_ = c.Close()
		}
		ws.mu.Unlock()
		ws.wg.Wait()
	})
	config := fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  echo: {targets: ["http://%s"]}
routes:
  - name: echo
    match: {path_prefix: /}
    upstream: echo
`, addr)
	f.untrusted = startGateway(t, config)
	f.trusted = startGateway(t, config+"trusted_proxies: [127.0.0.1]\n")
	return f
}

// TestRequestID: every request gets an X-Request-Id, the same in the
// response, in the request the backend gets and in the access log line:
// 16 hex digits made by wsgate, or the one a trusted proxy sent when it
// is a valid token. A client's own id is replaced unless it is a trusted
// proxy. traceparent passes untouched either way.
func TestRequestID(t *testing.T) {
	needBinary(t)
	f := startRIDFixture(t)
	hc := httpClient()

	cases := []struct {
		name    string
		trusted bool              // through the gateway that trusts 127.0.0.1
		send    map[string]string // request headers
		keep    string            // the id that must be kept; "" for a generated one
	}{
		{"no id", false, nil, ""},
		{"untrusted client's id replaced", false, map[string]string{"X-Request-Id": "client-chosen-1"}, ""},
		{"untrusted client's hex id replaced", false, map[string]string{"X-Request-Id": "0123456789abcdef"}, ""},
		{"trusted proxy, no id", true, nil, ""},
		{"trusted proxy's id kept", true, map[string]string{"X-Request-Id": "lb-7f3a-42"}, "lb-7f3a-42"},
		{"trusted proxy's 200-byte id kept", true, map[string]string{"X-Request-Id": strings.Repeat("k", 200)}, strings.Repeat("k", 200)},
		{"trusted proxy's 201-byte id replaced", true, map[string]string{"X-Request-Id": strings.Repeat("k", 201)}, ""},
		{"trusted proxy's id with a space replaced", true, map[string]string{"X-Request-Id": "two words"}, ""},
		{"trusted proxy's non-ASCII id replaced", true, map[string]string{"X-Request-Id": "caf\u00e9"}, ""},
		{"traceparent untouched", false, map[string]string{"Traceparent": ridTraceparent, "Tracestate": "congo=t61rcWkgMzE"}, ""},
		{"traceparent untouched from a trusted proxy", true, map[string]string{"Traceparent": ridTraceparent, "X-Request-Id": "lb-9"}, "lb-9"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := f.untrusted
			if tc.trusted {
				g = f.trusted
			}
			path := fmt.Sprintf("/rid/%d", i)
			resp, body := get(t, hc, "http://"+g.Addr+path, tc.send)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET %s: %d %.200q", path, resp.StatusCode, body)
			}
			ids := resp.Header.Values("X-Request-Id")
			if len(ids) != 1 {
				t.Fatalf("response X-Request-Id = %q, want one value", ids)
			}
			id := ids[0]
			sent := tc.send["X-Request-Id"]
			switch {
			case tc.keep != "" && id != tc.keep:
				t.Errorf("response X-Request-Id = %q, want the trusted proxy's %q", id, tc.keep)
			case tc.keep == "" && !ridGenerated.MatchString(id):
				t.Errorf("response X-Request-Id = %q, want 16 hex digits", id)
			case tc.keep == "" && id == sent:
				t.Errorf("response X-Request-Id = %q: the client's id was kept", id)
			}
			rep := decodeEcho(t, body)
			if got := rep.Header.Values("X-Request-Id"); len(got) != 1 || got[0] != id {
				t.Errorf("backend got X-Request-Id %q, want [%q]", got, id)
			}
			for _, h := range []string{"Traceparent", "Tracestate"} {
				if want, ok := tc.send[h]; ok {
					if got := rep.Header.Values(h); len(got) != 1 || got[0] != want {
						t.Errorf("backend got %s %q, want [%q]", h, got, want)
					}
				}
			}
			e := g.waitLog(ioTimeout, "request for "+path, func(e map[string]any) bool {
				return e["msg"] == "request" && e["uri"] == path
			})
			if e["request_id"] != id {
				t.Errorf("access log request_id = %v, want %q", e["request_id"], id)
			}
		})
	}

	t.Run("unique", func(t *testing.T) {
		seen := map[string]bool{}
		for i := range 20 {
			resp, _ := get(t, hc, fmt.Sprintf("http://%s/unique/%d", f.untrusted.Addr, i), nil)
			id := resp.Header.Get("X-Request-Id")
			if seen[id] {
				t.Fatalf("request %d: X-Request-Id %q again", i, id)
			}
			seen[id] = true
		}
	})

	// A WebSocket handshake gets an id too: in the 101 and in the
	// backend's handshake request.
	t.Run("websocket", func(t *testing.T) {
		for _, tc := range []struct {
			name    string
			trusted bool
			sent    string
			keep    string
		}{
			{"untrusted", false, "client-chosen-ws", ""},
			{"trusted", true, "lb-ws-1", "lb-ws-1"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				g := f.untrusted
				if tc.trusted {
					g = f.trusted
				}
				hdr := http.Header{"X-Request-Id": {tc.sent}, "Traceparent": {ridTraceparent}}
				d := &websocket.Dialer{HandshakeTimeout: ioTimeout}
				c, resp, err := d.Dial("ws://"+g.Addr+"/rid/ws", hdr)
				if err != nil {
					t.Fatalf("dial: %v", err)
				}
				defer c.Close()
				var backend http.Header
				select {
				case backend = <-f.upgrades:
				default:
					t.Fatal("the backend got no handshake before the 101")
				}
				id := backend.Get("X-Request-Id")
				switch {
				case tc.keep != "" && id != tc.keep:
					t.Errorf("backend handshake X-Request-Id = %q, want %q", id, tc.keep)
				case tc.keep == "" && !ridGenerated.MatchString(id):
					t.Errorf("backend handshake X-Request-Id = %q, want 16 hex digits", id)
				}
				if got := backend.Values("Traceparent"); len(got) != 1 || got[0] != ridTraceparent {
					t.Errorf("backend handshake Traceparent = %q, want [%q]", got, ridTraceparent)
				}
				if got := resp.Header.Values("X-Request-Id"); len(got) != 1 || got[0] != id {
					t.Errorf("101 X-Request-Id = %q, want [%q] as the backend got", got, id)
				}
				echoOnce(t, c, websocket.TextMessage, []byte("with an id"))
			})
		}
	})
}
