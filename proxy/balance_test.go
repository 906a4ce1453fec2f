package proxy

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"

	"github.com/wsgate/wsgate/internal/netpoll"
	"github.com/wsgate/wsgate/upstream"
)

// namedBackend answers every request with its name, and WebSocket upgrades
// with a socket that sends its name once and then echoes. It counts the
// requests it saw.
func namedBackend(t *testing.T, name string) (string, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	addr := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		if websocket.IsWebSocketUpgrade(r) {
			c, err := up.Upgrade(w, r, nil)
			if err != nil {
				return
			}
			defer c.Close()
			if c.WriteMessage(websocket.TextMessage, []byte(name)) != nil {
				return
			}
			for {
				mt, p, err := c.ReadMessage()
				if err != nil {
					return
				}
				if c.WriteMessage(mt, p) != nil {
					return
				}
			}
		}
		_, _ = io.Copy(io.Discard, r.Body)
		io.WriteString(w, name)
	}))
	return addr, &n
}

// dialNamed opens a WebSocket and returns it with the backend's name.
func dialNamed(t *testing.T, addr string, hdr http.Header) (*websocket.Conn, *http.Response, string) {
	t.Helper()
	c, resp := dialWS(t, addr, "/", hdr)
	c.SetReadDeadline(time.Now().Add(hangGuard))
	_, p, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("read the backend's name: %v", err)
	}
	c.SetReadDeadline(time.Time{})
	return c, resp, string(p)
}

// idle reports whether no target of set holds a request or session.
func idle(set *upstream.Set) bool {
	for _, t := range set.Targets() {
		if t.Active() != 0 || t.Sessions() != 0 {
			return false
		}
	}
	return true
}

// TestTargetReleasedOnEveryPath: whatever way an HTTP exchange or a
// WebSocket session ends, the target's load goes back to zero, exactly
// once (a second release would go negative and show as non-zero).
func TestTargetReleasedOnEveryPath(t *testing.T) {
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/big":
			w.Write(make([]byte, 1<<20)) // streamed to the client
		case "/switch":
			w.Header().Set("Connection", "Upgrade")
			w.Header().Set("Upgrade", "other")
			w.WriteHeader(http.StatusSwitchingProtocols)
		case "/refuse":
			http.Error(w, "no websocket here", http.StatusForbidden)
		default:
			if websocket.IsWebSocketUpgrade(r) {
				echoWS(t).ServeHTTP(w, r)
				return
			}
			io.WriteString(w, "small")
		}
	}))
	up := testUpstream(backend)
	p := startProxyWith(t, slowCloses(), wsRoute(up))
	set := p.set(up)
	c := httpClient(t)
	for _, path := range []string{"/small", "/big", "/switch"} {
		for _, method := range []string{"GET", "HEAD"} {
			do(t, c, newRequest(t, method, "http://"+p.addr+path, nil))
		}
	}
	// A refused handshake, with a body relayed and without.
	d := websocket.Dialer{HandshakeTimeout: hangGuard}
	if _, resp, err := d.Dial("ws://"+p.addr+"/refuse", nil); err == nil || resp == nil || resp.StatusCode != 403 {
		t.Fatalf("dial /refuse: %v, want the backend's 403", err)
	}
	// Sessions ended by the client, by a drain-like cut, and one still
	// open while the count is checked.
	open, _ := dialWS(t, p.addr, "/", nil)
	waitFor(t, "one session on the target", hangGuard, func() bool { return set.Targets()[0].Sessions() == 1 })
	if got := set.Targets()[0].Active(); got != 1 {
		t.Errorf("Active() = %d with one open session and no request, want 1", got)
	}
	open.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
	open.ReadMessage()
	cut, _ := dialWS(t, p.addr, "/", nil)
	waitFor(t, "the second session", hangGuard, func() bool { return set.Targets()[0].Sessions() >= 1 })
	cut.NetConn().Close() // the client vanishes: the relay ends the session
	waitFor(t, "every target idle", hangGuard, func() bool { return idle(set) })
	for _, tg := range set.Targets() {
		if tg.Active() != 0 || tg.Sessions() != 0 {
			t.Errorf("target %s: Active %d, Sessions %d after everything ended, want 0 and 0", tg.URL, tg.Active(), tg.Sessions())
		}
	}
}

// TestNoTargetIs503: when no target can take a request (each at
// max_connections), HTTP and WebSocket clients get 503 with Retry-After
// and a short plain body, not 502.
func TestNoTargetIs503(t *testing.T) {
	backend, _ := namedBackend(t, "a")
	up := testUpstream(backend)
	up.MaxConnections = 1
	p := startProxy(t, wsRoute(up))
	held, _, _ := dialNamed(t, p.addr, nil) // the one connection the target may carry
	defer held.Close()

	resp, body := do(t, httpClient(t), newRequest(t, "GET", "http://"+p.addr+"/", nil))
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" ||
		len(body) > 64 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Errorf("HTTP: status %d, Retry-After %q, body %q; want 503 with Retry-After and a short plain body",
			resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	d := websocket.Dialer{HandshakeTimeout: hangGuard}
	_, wresp, err := d.Dial("ws://"+p.addr+"/", nil)
	if err == nil || wresp == nil || wresp.StatusCode != http.StatusServiceUnavailable || wresp.Header.Get("Retry-After") == "" {
		status := 0
		if wresp != nil {
			status = wresp.StatusCode
		}
		t.Errorf("handshake: %v, status %d; want 503 with Retry-After", err, status)
	}
	held.Close()
	waitFor(t, "the held session to end", hangGuard, func() bool { return idle(p.set(up)) })
	if resp, _ := do(t, httpClient(t), newRequest(t, "GET", "http://"+p.addr+"/", nil)); resp.StatusCode != 200 {
		t.Errorf("after the session ended: status %d, want 200", resp.StatusCode)
	}
}

// TestRetryRules: a refused connect moves any request on, a streamed body
// included (nothing of it was read); a connection that breaks after the
// request was sent moves on only an idempotent request with its body in
// memory; a POST is never sent twice.
func TestRetryRules(t *testing.T) {
	var resets atomic.Int64
	// A backend that reads one request head and body and resets the
	// connection without answering.
	resetter, _ := startTCPBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		resets.Add(1)
		c.(*net.TCPConn).SetLinger(0)
	})
	good, goodN := namedBackend(t, "good")
	c := httpClient(t)

	t.Run("refused connect, streamed POST body", func(t *testing.T) {
		p := startProxy(t, wsRoute(testUpstream(closedPort(t), good)))
		body := make([]byte, 1<<20) // over retry_body_limit: streamed
		rand.Read(body)
		for i := range 4 { // round robin starts on the refused target twice
			resp, got := do(t, c, newRequest(t, "POST", "http://"+p.addr+"/", strings.NewReader(string(body))))
			if resp.StatusCode != 200 || got != "good" {
				t.Fatalf("request %d: status %d body %q, want 200 from the second target", i, resp.StatusCode, got)
			}
		}
	})

	cases := []struct {
		name       string
		method     string
		header     string
		body       string
		wantStatus int
		wantResets int64 // requests the resetting backend saw
	}{
		// fasthttp sends an idempotent request once more on a new
		// connection to the same target before wsgate moves on (a
		// pooled keep-alive connection may have been closed by the
		// backend meanwhile, as nginx retries a cached connection): two.
		{"GET is retried", "GET", "", "", 200, 2},
		{"PUT with a small body is retried", "PUT", "", "data", 200, 2},
		{"POST is not retried", "POST", "", "data", 502, 1},
		{"POST with Idempotency-Key is retried", "POST", "key-1", "data", 200, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// hash on a header with one key: every request tries the
			// same target first; the key is chosen so that it is the
			// resetting one.
			up := testUpstream(resetter, good)
			up.Policy, up.Key = upstream.Hash, upstream.Key{Kind: upstream.KeyHeader, Name: "X-Key"}
			p := startProxy(t, wsRoute(up))
			key := keyFor(t, p.set(up), resetter)
			resets.Store(0)
			goodBefore := goodN.Load()
			req := newRequest(t, tc.method, "http://"+p.addr+"/", strings.NewReader(tc.body))
			req.Header.Set("X-Key", key)
			if tc.header != "" {
				req.Header.Set("Idempotency-Key", tc.header)
			}
			resp, _ := do(t, c, req)
			if resp.StatusCode != tc.wantStatus {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.wantStatus)
			}
			if got := resets.Load(); got != tc.wantResets {
				t.Errorf("the resetting backend saw %d requests, want %d", got, tc.wantResets)
			}
			wantGood := int64(0)
			if tc.wantStatus == 200 {
				wantGood = 1
			}
			if got := goodN.Load() - goodBefore; got != wantGood {
				t.Errorf("the good backend saw %d requests, want %d", got, wantGood)
			}
		})
	}
}

// keyFor returns a hash key whose first choice in set is the target at
// addr.
func keyFor(t *testing.T, set *upstream.Set, addr string) string {
	t.Helper()
	for i := range 1000 {
		key := "k" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + string(rune('a'+i/26%26))
		var a upstream.Attempt
		set.Begin(&a, time.Now(), []byte(key))
		tg := a.Next()
		a.Failed(tg, upstream.Aborted, false, nil) // release, not counted
		if tg.Addr == addr {
			return key
		}
	}
	t.Fatalf("no key among 1000 hashes to %s", addr)
	return ""
}

// TestWebSocketHandshakeFailover: a refused target is skipped for a
// handshake; a target that answers the upgrade with something else than
// 101 is not retried: its answer reaches the client.
func TestWebSocketHandshakeFailover(t *testing.T) {
	good, _ := namedBackend(t, "good")
	p := startProxy(t, wsRoute(testUpstream(closedPort(t), good)))
	for i := range 4 {
		c, _, name := dialNamed(t, p.addr, nil)
		c.Close()
		if name != "good" {
			t.Fatalf("session %d on %q, want good", i, name)
		}
	}

	var refusals, other atomic.Int64
	refusing := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		refusals.Add(1)
		http.Error(w, "go away", http.StatusForbidden)
	}))
	second := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { other.Add(1) }))
	up := testUpstream(refusing, second)
	up.Policy, up.Key = upstream.Hash, upstream.Key{Kind: upstream.KeyHeader, Name: "X-Key"}
	p2 := startProxy(t, wsRoute(up))
	d := websocket.Dialer{HandshakeTimeout: hangGuard}
	_, resp, err := d.Dial("ws://"+p2.addr+"/", http.Header{"X-Key": {keyFor(t, p2.set(up), refusing)}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("dial: %v, want the backend's 403", err)
	}
	if refusals.Load() != 1 || other.Load() != 0 {
		t.Errorf("the refusing backend saw %d handshakes and the other %d requests, want 1 and 0", refusals.Load(), other.Load())
	}
}

// TestStickyCookie: the cookie policy sets its cookie on the first
// response, an HTTP answer or a 101, and requests that carry it go to the
// same target (socket.io: polling, then the upgrade on the same cookie).
func TestStickyCookie(t *testing.T) {
	a, _ := namedBackend(t, "a")
	b, _ := namedBackend(t, "b")
	up := testUpstream(a, b)
	up.Policy = upstream.Cookie
	up.Sticky = upstream.Sticky{Cookie: "wsgate_sticky", Secret: "test"}
	p := startProxy(t, wsRoute(up))
	c := httpClient(t)

	resp, first := do(t, c, newRequest(t, "GET", "http://"+p.addr+"/socket.io/?EIO=4&transport=polling", nil))
	set := resp.Header.Get("Set-Cookie")
	if !strings.HasPrefix(set, "wsgate_sticky=") || !strings.Contains(set, "HttpOnly") || !strings.Contains(set, "SameSite=Lax") ||
		!strings.Contains(set, "Path=/") || strings.Contains(set, "Secure") {
		t.Fatalf("Set-Cookie %q, want wsgate_sticky=…; Path=/; HttpOnly; SameSite=Lax (no Secure on plain HTTP)", set)
	}
	if strings.Contains(set, "127.0.0.1") || strings.Contains(set, a) || strings.Contains(set, b) {
		t.Errorf("Set-Cookie %q reveals a target's address", set)
	}
	cookie := strings.SplitN(set, ";", 2)[0]
	for i := range 6 {
		req := newRequest(t, "GET", "http://"+p.addr+"/socket.io/?EIO=4&transport=polling", nil)
		req.Header.Set("Cookie", cookie)
		resp, got := do(t, c, req)
		if got != first || resp.Header.Get("Set-Cookie") != "" {
			t.Fatalf("request %d with the cookie: backend %q, Set-Cookie %q; want %q and no new cookie", i, got, resp.Header.Get("Set-Cookie"), first)
		}
	}
	ws, wresp, name := dialNamed(t, p.addr, http.Header{"Cookie": {cookie}})
	ws.Close()
	if name != first || wresp.Header.Get("Set-Cookie") != "" {
		t.Errorf("upgrade with the cookie: backend %q, Set-Cookie %q; want %q and no new cookie", name, wresp.Header.Get("Set-Cookie"), first)
	}
	// A client that starts with the upgrade gets its cookie on the 101.
	ws2, wresp2, _ := dialNamed(t, p.addr, nil)
	ws2.Close()
	if !strings.HasPrefix(wresp2.Header.Get("Set-Cookie"), "wsgate_sticky=") {
		t.Errorf("101 without a cookie in the request: Set-Cookie %q, want the sticky cookie", wresp2.Header.Get("Set-Cookie"))
	}
	// A cookie naming no target is rewritten.
	req := newRequest(t, "GET", "http://"+p.addr+"/", nil)
	req.Header.Set("Cookie", "wsgate_sticky=0123456789abcdef")
	if resp, _ := do(t, c, req); !strings.HasPrefix(resp.Header.Get("Set-Cookie"), "wsgate_sticky=") {
		t.Errorf("unknown cookie value: Set-Cookie %q, want a new sticky cookie", resp.Header.Get("Set-Cookie"))
	}
}

// TestLeastConnWebSockets: least_conn balances by open sessions: with 30
// sessions over 3 targets, closing 10 on one target sends the next 10
// there.
func TestLeastConnWebSockets(t *testing.T) {
	names := []string{"a", "b", "c"}
	var addrs []string
	for _, n := range names {
		addr, _ := namedBackend(t, n)
		addrs = append(addrs, addr)
	}
	up := testUpstream(addrs...)
	up.Policy = upstream.LeastConn
	p := startProxy(t, wsRoute(up))
	byName := map[string][]*websocket.Conn{}
	for range 30 {
		c, _, name := dialNamed(t, p.addr, nil)
		byName[name] = append(byName[name], c)
	}
	for _, n := range names {
		if len(byName[n]) != 10 {
			t.Fatalf("sessions per backend %v, want 10 each", counts(byName))
		}
	}
	for _, c := range byName["b"] {
		c.Close()
	}
	byName["b"] = nil
	waitFor(t, "b's sessions to end", hangGuard, func() bool {
		for _, tg := range p.set(up).Targets() {
			if tg.Sessions() == 0 {
				return true
			}
		}
		return false
	})
	for i := range 10 {
		c, _, name := dialNamed(t, p.addr, nil)
		defer c.Close()
		if name != "b" {
			t.Fatalf("session %d after closing b's 10 landed on %q, want b", i, name)
		}
	}
	for _, cs := range byName {
		for _, c := range cs {
			c.Close()
		}
	}
}

func counts(m map[string][]*websocket.Conn) map[string]int {
	out := map[string]int{}
	for k, v := range m {
		out[k] = len(v)
	}
	return out
}

// TestBalancingAllocs: choosing a target adds no allocation to the
// steady-state request path, for every policy and key kind: reading the
// key from the request, Begin, Next, Responded and Release.
func TestBalancingAllocs(t *testing.T) {
	cases := []struct {
		name   string
		policy upstream.Policy
		key    upstream.Key
		header string // sent with the request
	}{
		{"round_robin", upstream.RoundRobin, upstream.Key{}, ""},
		{"least_conn", upstream.LeastConn, upstream.Key{}, ""},
		{"random", upstream.Random, upstream.Key{}, ""},
		{"hash client_ip", upstream.Hash, upstream.Key{Kind: upstream.KeyClientIP}, ""},
		{"hash client_ip behind a trusted proxy", upstream.Hash, upstream.Key{Kind: upstream.KeyClientIP}, "X-Forwarded-For: 198.51.100.1, 2001:db8::7, 10.2.2.2\r\n"},
		{"hash header", upstream.Hash, upstream.Key{Kind: upstream.KeyHeader, Name: "X-User"}, "X-User: alice\r\n"},
		{"hash cookie", upstream.Hash, upstream.Key{Kind: upstream.KeyCookie, Name: "sid"}, "Cookie: sid=abc; other=1\r\n"},
		{"hash query", upstream.Hash, upstream.Key{Kind: upstream.KeyQuery, Name: "room"}, ""},
		{"cookie", upstream.Cookie, upstream.Key{}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testUpstream("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3")
			cfg.Policy, cfg.Key = tc.policy, tc.key
			cfg.Sticky = upstream.Sticky{Cookie: "wsgate_sticky"}
			set := upstream.New(cfg, upstream.Options{})
			sn := &snapshot{trusted: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
			header := tc.header
			if tc.policy == upstream.Cookie {
				header = "Cookie: wsgate_sticky=" + cookieValueOf(t, set) + "\r\n"
			}
			peer := net.IPv4(192, 0, 2, 7)
			if strings.HasPrefix(header, "X-Forwarded-For") {
				peer = net.IPv4(10, 1, 1, 1) // a trusted proxy
			}
			ctx := requestCtx(t, "GET /chat?room=lobby HTTP/1.1\r\nHost: example.com\r\n"+header+"\r\n", peer)
			step := func() {
				var a upstream.Attempt
				var kb [16]byte
				set.Begin(&a, ctx.Time(), balanceKey(ctx, sn, set, &kb))
				tg := a.Next()
				a.Responded(tg, 200)
				tg.Release()
			}
			step() // warm-up: lazily parsed cookies and query
			if n := testing.AllocsPerRun(200, step); n != 0 {
				t.Errorf("%v allocations per request, want 0", n)
			}
			var kb [16]byte
			if key := balanceKey(ctx, sn, set, &kb); set.Key().Kind != upstream.KeyNone && len(key) == 0 {
				t.Errorf("balanceKey = empty, want the request's %s", set.Key())
			}
		})
	}
}

// requestCtx returns a request context for the raw request from peer.
func requestCtx(t *testing.T, raw string, peer net.IP) *fasthttp.RequestCtx {
	t.Helper()
	var req fasthttp.Request
	if err := req.Read(bufio.NewReader(strings.NewReader(raw))); err != nil {
		t.Fatal(err)
	}
	ctx := &fasthttp.RequestCtx{}
	ctx.Init(&req, &net.TCPAddr{IP: peer, Port: 5555}, nil)
	return ctx
}

// cookieValueOf returns the sticky cookie value of set's first target.
func cookieValueOf(t *testing.T, set *upstream.Set) string {
	t.Helper()
	v := set.Targets()[0].StickyCookie(false)
	name, rest, _ := strings.Cut(v, "=")
	if name != "wsgate_sticky" {
		t.Fatalf("StickyCookie = %q", v)
	}
	value, _, _ := strings.Cut(rest, ";")
	return value
}

// TestClientIPKey: the client_ip key is the peer's address, or behind a
// trusted proxy the last X-Forwarded-For address that is not a trusted
// proxy (the earlier ones could be forged by the client), always in its
// 16-byte form: one client, one key, however it arrives.
func TestClientIPKey(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	key := func(s string) string { a := netip.MustParseAddr(s).As16(); return string(a[:]) }
	cases := []struct {
		name string
		peer net.IP
		xff  string
		want string
	}{
		{"untrusted peer", net.IPv4(192, 0, 2, 7), "203.0.113.9", key("192.0.2.7")},
		{"untrusted peer, 16-byte form", net.IPv4(192, 0, 2, 7).To16(), "", key("192.0.2.7")},
		{"trusted peer", net.IPv4(10, 1, 1, 1), "198.51.100.1, 203.0.113.9, 10.2.2.2", key("203.0.113.9")},
		{"trusted peer, the same client as directly", net.IPv4(10, 1, 1, 1), "192.0.2.7", key("192.0.2.7")},
		{"trusted peer, IPv4-mapped in the header", net.IPv4(10, 1, 1, 1), "::ffff:192.0.2.7", key("192.0.2.7")},
		{"trusted peer, no header", net.IPv4(10, 1, 1, 1), "", key("10.1.1.1")},
		{"trusted peer, not an address", net.IPv4(10, 1, 1, 1), "unknown, 10.2.2.2", "unknown"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			raw := "GET / HTTP/1.1\r\nHost: x\r\n"
			if tc.xff != "" {
				raw += "X-Forwarded-For: " + tc.xff + "\r\n"
			}
			var kb [16]byte
			if got := clientIP(requestCtx(t, raw+"\r\n", tc.peer), trusted, &kb); string(got) != tc.want {
				t.Errorf("clientIP = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestHTTPTimeoutNotRetried: a response timeout is not retried (one
// response timeout is already the client's wait), and the target is
// logged as timing out once, not once per request.
func TestHTTPTimeoutNotRetried(t *testing.T) {
	addr, accepted, requests := headOnlyBackend(t)
	good, goodN := namedBackend(t, "good")
	up := testUpstream(addr, good)
	up.ResponseTimeout = 200 * time.Millisecond
	up.Policy, up.Key = upstream.Hash, upstream.Key{Kind: upstream.KeyHeader, Name: "X-Key"}
	p := startProxy(t, wsRoute(up))
	key := keyFor(t, p.set(up), addr)
	c := httpClient(t)
	for range 3 {
		req := newRequest(t, "GET", "http://"+p.addr+"/", nil)
		req.Header.Set("X-Key", key)
		if resp, _ := do(t, c, req); resp.StatusCode != http.StatusGatewayTimeout {
			t.Fatalf("status %d, want 504", resp.StatusCode)
		}
	}
	if goodN.Load() != 0 {
		t.Errorf("the good backend saw %d requests, want 0: timeouts are not retried", goodN.Load())
	}
	if requests.Load() < 3 || accepted.Load() == 0 {
		t.Errorf("the silent backend saw %d requests, want 3", requests.Load())
	}
	if n := strings.Count(p.logs.String(), `msg="target timing out"`); n != 1 {
		t.Errorf("%d \"target timing out\" lines, want 1 (once per change of state)", n)
	}
}

// TestStalePooledConnection: a pooled connection the backend closed while
// it sat idle (an idle timeout, a restart) is found before a request is
// written on it, so even a POST goes out once, on a new connection to the
// same (only) target, instead of failing with 502; also with a streamed
// body, chunked or over retry_body_limit, none of which is lost.
func TestStalePooledConnection(t *testing.T) {
	big := make([]byte, 1<<20)
	rand.Read(big)
	cases := []struct {
		name string
		body func() io.Reader // a new reader for each request
		size int64            // -1: chunked
	}{
		{"small body, held in memory", func() io.Reader { return strings.NewReader("data") }, 4},
		{"chunked body, streamed", func() io.Reader { return io.MultiReader(strings.NewReader("da"), strings.NewReader("ta")) }, -1},
		{"1 MiB body, streamed", func() io.Reader { return bytes.NewReader(big) }, int64(len(big))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var posts atomic.Int64
			var badBodies atomic.Int64
			closed := make(chan struct{}, 16)
			want := ""
			if b, err := io.ReadAll(tc.body()); err == nil {
				want = string(b)
			}
			// Answers one request per connection, as keep-alive, then
			// closes it.
			addr, _ := startTCPBackend(t, func(c net.Conn) {
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				got, _ := io.ReadAll(req.Body)
				if string(got) != want {
					badBodies.Add(1)
				}
				posts.Add(1)
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
				c.Close()
				closed <- struct{}{}
			})
			up := testUpstream(addr)
			p := startProxy(t, wsRoute(up))
			c := httpClient(t)
			for i := range 3 {
				req := newRequest(t, "POST", "http://"+p.addr+"/", tc.body())
				req.ContentLength = tc.size
				if tc.size < 0 {
					req.Body = io.NopCloser(tc.body()) // no length known: chunked
				}
				resp, body := do(t, c, req)
				if resp.StatusCode != 200 || body != "ok" {
					t.Fatalf("POST %d: status %d body %q, want 200", i, resp.StatusCode, body)
				}
				select {
				case <-closed:
				case <-time.After(hangGuard):
					t.Fatal("the backend did not close its connection")
				}
			}
			if got := posts.Load(); got != 3 {
				t.Errorf("the backend saw %d POSTs, want 3 (each once)", got)
			}
			if n := badBodies.Load(); n != 0 {
				t.Errorf("%d POSTs arrived with a body other than the one sent", n)
			}
			if strings.Contains(p.logs.String(), "target breaking connections") {
				t.Errorf("a stale pooled connection was counted as a failure of the target:\n%s", p.logs)
			}
		})
	}
}

// TestIdleConnStaleCheck: the first write of a request on a pooled
// connection the peer has closed fails with errStaleConn and writes
// nothing: always for a request that is not idempotent, and after
// idempotentCheckAfter of quiet for an idempotent one.
func TestIdleConnStaleCheck(t *testing.T) {
	cases := []struct {
		name    string
		line    string
		idle    time.Duration // since the last read
		closed  bool          // the peer closed the connection
		wantErr bool
	}{
		{"POST on a closed connection", "POST / HTTP/1.1\r\n", 0, true, true},
		{"POST on an open connection", "POST / HTTP/1.1\r\n", 0, false, false},
		{"GET on a closed connection, busy pool", "GET / HTTP/1.1\r\n", 0, true, false},
		{"GET on a closed connection, idle pool", "GET / HTTP/1.1\r\n", 2 * idempotentCheckAfter, true, true},
		{"GET on an open connection, idle pool", "GET / HTTP/1.1\r\n", 2 * idempotentCheckAfter, false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !netpoll.Supported && tc.closed {
				t.Skip("the check is made on Linux only")
			}
			ours, peer := tcpPair(t)
			c := &idleConn{Conn: netpoll.NewTCPConn(ours), timeout: time.Minute, lastRead: time.Now().Add(-tc.idle)}
			if tc.closed {
				peer.Close()
				// The FIN has arrived once a read would see it.
				waitFor(t, "the peer's FIN", hangGuard, func() bool { return netpoll.PeerGone(c.Conn) })
			}
			_, err := c.Write([]byte(tc.line))
			if got := errors.Is(err, errStaleConn); got != tc.wantErr {
				t.Errorf("Write = %v, want errStaleConn: %v", err, tc.wantErr)
			}
		})
	}
	for line, want := range map[string]bool{"GET / HTTP/1.1": true, "GETX / HTTP/1.1": false, "POST /": false, "DELETE /x": true, "": false, "GET": false} {
		if got := idempotentLine([]byte(line)); got != want {
			t.Errorf("idempotentLine(%q) = %v, want %v", line, got, want)
		}
	}
}

// TestTargetReleasedWhenClientLeaves: a client that goes away in the
// middle of a streamed response, or of a refused handshake's body, does
// not leave the target counted as busy.
func TestTargetReleasedWhenClientLeaves(t *testing.T) {
	stop := make(chan struct{})
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/refuse" {
			w.WriteHeader(http.StatusForbidden)
		}
		w.Write(make([]byte, 200<<10)) // more than one write of the client
		w.(http.Flusher).Flush()
		select { // the body never ends
		case <-r.Context().Done():
		case <-stop:
		}
	}))
	defer close(stop)
	up := testUpstream(backend)
	p := startProxyWith(t, slowCloses(), wsRoute(up))
	for _, req := range []string{
		"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /refuse HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
	} {
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, req)
		c.SetReadDeadline(time.Now().Add(hangGuard))
		if _, err := c.Read(make([]byte, 4096)); err != nil {
			t.Fatalf("%q: read the response head: %v", req[:12], err)
		}
		waitFor(t, "the request to hold its target", hangGuard, func() bool { return p.set(up).Targets()[0].Active() == 1 })
		c.Close()
		waitFor(t, "the target released after the client left", hangGuard, func() bool { return idle(p.set(up)) })
	}
}
