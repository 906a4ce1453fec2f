package proxy

import (
	"net/http"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/fasthttp/websocket"
)

// TestSessionCaps: max_sessions refuses a handshake beyond the route's
// cap with 503, max_sessions_per_ip one beyond the client address's with
// 429, both with Retry-After and before the backend is dialled; a session
// that ends, and a handshake that fails, give their slot back.
func TestSessionCaps(t *testing.T) {
	var dialled atomic.Int64
	echo := echoWS(t)
	refuse := atomic.Bool{}
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		dialled.Add(1)
		if refuse.Load() {
			http.Error(w, "no", http.StatusForbidden)
			return
		}
		echo.ServeHTTP(w, r)
	}))
	handshake := func(t *testing.T, addr string, xff string) (*websocket.Conn, int, string) {
		t.Helper()
		hdr := http.Header{}
		if xff != "" {
			hdr.Set("X-Forwarded-For", xff)
		}
		d := websocket.Dialer{}
		c, resp, err := d.Dial("ws://"+addr+"/", hdr)
		if err != nil {
			if resp == nil {
				t.Fatalf("dial: %v", err)
			}
			return nil, resp.StatusCode, resp.Header.Get("Retry-After")
		}
		t.Cleanup(func() { c.Close() })
		return c, resp.StatusCode, ""
	}

	t.Run("max_sessions", func(t *testing.T) {
		r := wsRoute(testUpstream(backend))
		r.WebSocket.MaxSessions = 2
		p := startProxy(t, r)
		a, _, _ := handshake(t, p.addr, "")
		handshake(t, p.addr, "")
		before := dialled.Load()
		if _, status, retry := handshake(t, p.addr, ""); status != http.StatusServiceUnavailable || retry != "1" {
			t.Fatalf("third handshake: status %d, Retry-After %q; want 503, 1", status, retry)
		}
		if n := dialled.Load() - before; n != 0 {
			t.Errorf("the refused handshake dialled the backend %d times, want 0", n)
		}
		// A session that ends gives its slot back.
		a.Close()
		waitFor(t, "the session to end", hangGuard, func() bool { return p.h.Sessions() == 1 })
		if _, status, _ := handshake(t, p.addr, ""); status != http.StatusSwitchingProtocols {
			t.Fatalf("handshake after one session ended: status %d, want 101", status)
		}
	})

	t.Run("max_sessions_per_ip", func(t *testing.T) {
		r := wsRoute(testUpstream(backend))
		r.WebSocket.MaxSessionsPerIP = 1
		p := startProxy(t, r)
		handshake(t, p.addr, "")
		if _, status, retry := handshake(t, p.addr, ""); status != http.StatusTooManyRequests || retry != "1" {
			t.Fatalf("second handshake from one address: status %d, Retry-After %q; want 429, 1", status, retry)
		}
		// A client's X-Forwarded-For is not believed from an untrusted peer.
		if _, status, _ := handshake(t, p.addr, "192.0.2.7"); status != http.StatusTooManyRequests {
			t.Errorf("untrusted X-Forwarded-For: status %d, want 429 (the peer's address counts)", status)
		}
	})

	t.Run("behind a trusted proxy", func(t *testing.T) {
		r := wsRoute(testUpstream(backend))
		r.WebSocket.MaxSessionsPerIP = 1
		p := startProxyWith(t, proxySetup{Options: Options{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}}, r)
		for _, ip := range []string{"192.0.2.7", "192.0.2.8", "198.51.100.1, 127.0.0.9"} {
			if _, status, _ := handshake(t, p.addr, ip); status != http.StatusSwitchingProtocols {
				t.Errorf("X-Forwarded-For %q: status %d, want 101 (one session per client address)", ip, status)
			}
		}
		if _, status, _ := handshake(t, p.addr, "192.0.2.7"); status != http.StatusTooManyRequests {
			t.Errorf("second session of 192.0.2.7: status %d, want 429", status)
		}
	})

	t.Run("failed handshakes give the slot back", func(t *testing.T) {
		r := wsRoute(testUpstream(backend))
		r.WebSocket.MaxSessions = 1
		p := startProxy(t, r)
		refuse.Store(true)
		for i := range 3 {
			if _, status, _ := handshake(t, p.addr, ""); status != http.StatusForbidden {
				t.Fatalf("handshake %d: status %d, want the backend's 403", i, status)
			}
		}
		refuse.Store(false)
		if _, status, _ := handshake(t, p.addr, ""); status != http.StatusSwitchingProtocols {
			t.Fatalf("handshake after three refusals: status %d, want 101", status)
		}
	})
}
