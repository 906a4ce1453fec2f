//go:build unix

package integration

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// Load balancing end to end: the real binary, real backends on
// 127.0.0.1:0, and what a client and the backends see. Health intervals,
// passive windows and timeouts are short so that each test takes a few
// seconds; every wait is a log line, a backend-side count or a channel,
// with logGuard only as the failure deadline.

// logGuard bounds a wait for a log line or a count that must come.
const logGuard = 20 * time.Second

// counter counts events by key and lets a test wait for a count. It is
// safe for concurrent use.
type counter struct {
	mu      sync.Mutex
	n       map[string]int // guarded by mu
	changed chan struct{}  // guarded by mu: closed and replaced on every add
}

func newCounter() *counter { return &counter{n: map[string]int{}, changed: make(chan struct{})} }

func (c *counter) add(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n[key]++
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *counter) get(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[key]
}

// waitAtLeast waits until key counts at least n, for at most logGuard.
func (c *counter) waitAtLeast(t *testing.T, key string, n int) {
	t.Helper()
	deadline := time.After(logGuard)
	for {
		c.mu.Lock()
		got, changed := c.n[key], c.changed
		c.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("%q counted %d within %v, want at least %d", key, got, logGuard, n)
		}
	}
}

// namedBackend is a net/http backend that tells who it is: plain requests
// get its name as body and in X-Backend, a WebSocket gets its name as the
// first message and then an echo. It counts the requests it received
// (body read to its end) by "METHOD /path", and answers GET /healthz
// with a status the test sets.
type namedBackend struct {
	name string
	addr string // 127.0.0.1:port
	url  string // http://addr: the target as wsgate logs it
	hits *counter
	srv  *http.Server
	up   websocket.Upgrader
	// closeConns makes every answer carry Connection: close.
	closeConns atomic.Bool

	healthMu sync.Mutex
	health   int // guarded by healthMu: the status of GET /healthz

	mu     sync.Mutex
	ws     map[*websocket.Conn]bool // guarded by mu: open WebSockets
	wsDone sync.WaitGroup           // one per WebSocket handler
}

// startNamed serves a namedBackend on 127.0.0.1:0 until the test ends.
func startNamed(t *testing.T, name string) *namedBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &namedBackend{
		name:   name,
		addr:   ln.Addr().String(),
		url:    "http://" + ln.Addr().String(),
		hits:   newCounter(),
		up:     websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }},
		health: http.StatusOK,
		ws:     map[*websocket.Conn]bool{},
	}
	b.srv = &http.Server{Handler: b, ReadHeaderTimeout: ioTimeout}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = b.srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = b.srv.Close()
		<-served
		b.closeWebSockets()
		b.wsDone.Wait()
	})
	return b
}

func (b *namedBackend) setHealth(status int) {
	b.healthMu.Lock()
	defer b.healthMu.Unlock()
	b.health = status
}

func (b *namedBackend) closeWebSockets() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for c := range b.ws {
		_ = c.Close()
	}
}

// kill stops the backend the hard way: its listener and every
// connection, idle, busy or WebSocket, are closed at once. The port stays
// bound (not listening) until the test ends, so a connect to it is
// refused and no other listener takes it.
func (b *namedBackend) kill(t *testing.T) {
	t.Helper()
	_ = b.srv.Close()
	b.closeWebSockets()
	holdPort(t, b.addr)
}

func (b *namedBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" {
		b.hits.add(r.Method + " " + r.URL.Path)
		b.healthMu.Lock()
		status := b.health
		b.healthMu.Unlock()
		w.WriteHeader(status)
		return
	}
	if websocket.IsWebSocketUpgrade(r) {
		b.serveWebSocket(w, r)
		return
	}
	if _, err := io.Copy(io.Discard, r.Body); err != nil {
		return // a body cut short was not received: not counted
	}
	b.hits.add(r.Method + " " + r.URL.Path)
	if b.closeConns.Load() {
		w.Header().Set("Connection", "close")
	}
	w.Header().Set("X-Backend", b.name)
	w.Header().Set("Content-Type", "text/plain")
	_, _ = io.WriteString(w, b.name)
}

func (b *namedBackend) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	b.wsDone.Add(1)
	defer b.wsDone.Done()
	c, err := b.up.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	b.hits.add("WS " + r.URL.Path)
	b.mu.Lock()
	b.ws[c] = true
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.ws, c)
		b.mu.Unlock()
		_ = c.Close()
	}()
	if c.WriteMessage(websocket.TextMessage, []byte(b.name)) != nil {
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

// holdPort keeps the port of addr, whose listener was just closed, bound
// until the test ends: SO_REUSEADDR (the closed server's connections sit
// in TIME_WAIT) and no listen(2), as freeAddr does. A connect is refused
// and no ":0" listener gets the port. When the bind fails the port is
// merely closed, which the tests tolerate.
func holdPort(t *testing.T, addr string) {
	t.Helper()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	syscall.CloseOnExec(fd)
	_ = syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}); err != nil {
		syscall.Close(fd)
		t.Logf("hold %s after closing it: %v (left unbound)", addr, err)
		return
	}
	t.Cleanup(func() { syscall.Close(fd) })
}

// answer is what a client got through wsgate.
type answer struct {
	status  int
	backend string // X-Backend, "" when wsgate answered itself
	header  http.Header
	body    string
}

// send makes one request through wsgate; a transport error fails the test.
func send(t *testing.T, c *http.Client, method, url, body string, hdr map[string]string) answer {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return answer{status: resp.StatusCode, backend: resp.Header.Get("X-Backend"), header: resp.Header, body: string(b)}
}

// logsWhere returns the log entries match accepts, in order.
func logsWhere(g *gw, match func(map[string]any) bool) []map[string]any {
	entries, _ := g.logs.snapshot()
	var out []map[string]any
	for _, e := range entries {
		if match(e) {
			out = append(out, e)
		}
	}
	return out
}

// logIs matches entries with msg whose string fields have the given
// values (pairs of key, value).
func logIs(msg string, kv ...string) func(map[string]any) bool {
	return func(e map[string]any) bool {
		if e["msg"] != msg {
			return false
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if s, _ := e[kv[i]].(string); s != kv[i+1] {
				return false
			}
		}
		return true
	}
}

// fieldHas reports whether the string field key of e contains sub.
func fieldHas(e map[string]any, key, sub string) bool {
	s, _ := e[key].(string)
	return strings.Contains(s, sub)
}

// checkRetryAfter checks that a 503 says when to come back: a whole
// number of seconds, 1 to 30 as upstream.Set.RetryAfter bounds it.
func checkRetryAfter(t *testing.T, what string, h http.Header) {
	t.Helper()
	v := h.Get("Retry-After")
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 30 {
		t.Errorf("%s: Retry-After = %q, want 1 to 30 seconds", what, v)
	}
}

// TestRetryLosesNoRequestWhenBackendDies proves that a backend dying
// between two requests loses none and duplicates none: 200 requests
// (GET, GET, POST, POST, … so that both methods reach both backends under
// round robin; the POSTs have a small body and no Idempotency-Key) go
// through wsgate to two backends, and before request 102 one backend is
// killed (listener and every connection closed). The first request to
// meet the dead backend is then the POST 103. Every request must get
// 200, and the backends together must have received each request
// exactly once: a request that meets the dead backend has sent nothing
// (a refused connect, or a pooled connection the backend had already
// closed), so it is sent to the other one whatever its method.
func TestRetryLosesNoRequestWhenBackendDies(t *testing.T) {
	needBinary(t)
	// The backends close every connection after answering: each try
	// dials, so after the kill each try on the dead backend is a refused
	// connect.
	t.Run("fresh connections", func(t *testing.T) { dyingBackend(t, false) })
	t.Run("pooled connections", func(t *testing.T) {
		dyingBackend(t, true)
	})
}

// dyingBackend runs the scenario of TestRetryLosesNoRequestWhenBackendDies,
// with backends that keep connections alive or close them.
func dyingBackend(t *testing.T, keepAlive bool) {
	a, b := startNamed(t, "a"), startNamed(t, "b")
	a.closeConns.Store(!keepAlive)
	b.closeConns.Store(!keepAlive)
	g := startGateway(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  app:
    targets: [%q, %q]
    connect_timeout: 2s
routes:
  - match: {path_prefix: /}
    upstream: app
`, a.url, b.url))
	c := httpClient()
	base := "http://" + g.Addr
	const n, killAt = 200, 102
	var failures []string
	for i := range n {
		if i == killAt {
			if b.hits.get("GET /r") == 0 || b.hits.get("POST /r") == 0 {
				t.Fatalf("backend b got %d GET and %d POST before the kill, want both", b.hits.get("GET /r"), b.hits.get("POST /r"))
			}
			b.kill(t)
		}
		method, body := http.MethodGet, ""
		if i%4 >= 2 {
			method, body = http.MethodPost, "payload "+strconv.Itoa(i)
		}
		ans := send(t, c, method, base+"/r", body, nil)
		if ans.status != http.StatusOK {
			failures = append(failures, fmt.Sprintf("request %d (%s): status %d %q", i, method, ans.status, ans.body))
		}
	}
	for _, f := range failures {
		t.Error(f)
	}
	for _, m := range []string{http.MethodGet, http.MethodPost} {
		key := m + " /r"
		if got := a.hits.get(key) + b.hits.get(key); got != n/2 {
			t.Errorf("%s requests received: a %d + b %d = %d, want %d (each exactly once)",
				m, a.hits.get(key), b.hits.get(key), got, n/2)
		}
	}
	if got := len(logsWhere(g, logIs("target refusing connections", "upstream", "app", "target", b.url))); got != 1 {
		t.Errorf("%d \"target refusing connections\" lines for the dead backend, want 1", got)
	}
	t.Logf("a received %d GET, %d POST; b %d GET, %d POST; %d failures",
		a.hits.get("GET /r"), a.hits.get("POST /r"), b.hits.get("GET /r"), b.hits.get("POST /r"), len(failures))
}

// resettingBackend reads each request whole, counts it by method, then
// resets the connection (SO_LINGER 0) without answering.
func resettingBackend(t *testing.T) (string, *counter) {
	t.Helper()
	hits := newCounter()
	addr := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			return
		}
		hits.add(r.Method)
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = conn.Close()
	}))
	return addr, hits
}

// TestNonIdempotentNeverSentTwice proves that a request that may have had
// its effect is never sent again: a POST without Idempotency-Key that
// reached a backend which then reset the connection gets 502, the
// backend saw it once and the other backend never. A GET, and a POST
// with Idempotency-Key, meeting the same reset are tried on the other
// backend and get 200.
//
// Round robin starts each upstream at its first target, and every
// upstream here (three of them, over the same two backends, one per
// route) serves one request: so each request's first try is
// deterministically on the resetting backend, listed first.
func TestNonIdempotentNeverSentTwice(t *testing.T) {
	needBinary(t)
	badAddr, bad := resettingBackend(t)
	good := startNamed(t, "good")
	targets := fmt.Sprintf("[%q, %q]", "http://"+badAddr, good.url)
	g := startGateway(t, `listeners:
  - addr: 127.0.0.1:0
upstreams:
  post: {targets: `+targets+`, balance: round_robin}
  get: {targets: `+targets+`, balance: round_robin}
  idem: {targets: `+targets+`, balance: round_robin}
routes:
  - {match: {path: /post}, upstream: post}
  - {match: {path: /get}, upstream: get}
  - {match: {path: /idem}, upstream: idem}
`)
	c := httpClient()
	base := "http://" + g.Addr

	ans := send(t, c, http.MethodPost, base+"/post", "charge the card", nil)
	if ans.status != http.StatusBadGateway {
		t.Errorf("POST without Idempotency-Key: status %d (backend %q), want 502", ans.status, ans.backend)
	}
	if got := bad.get(http.MethodPost); got != 1 {
		t.Errorf("resetting backend received the POST %d times, want 1", got)
	}
	if got := good.hits.get("POST /post"); got != 0 {
		t.Errorf("healthy backend received the POST %d times, want 0 (it was sent before the reset)", got)
	}

	ans = send(t, c, http.MethodGet, base+"/get", "", nil)
	if ans.status != http.StatusOK || ans.backend != "good" {
		t.Errorf("GET: status %d from %q, want 200 from the healthy backend", ans.status, ans.backend)
	}
	if got := bad.get(http.MethodGet); got < 1 {
		t.Errorf("resetting backend received the GET %d times, want its first try there", got)
	}
	if got := good.hits.get("GET /get"); got != 1 {
		t.Errorf("healthy backend received the GET %d times, want 1", got)
	}

	ans = send(t, c, http.MethodPost, base+"/idem", "charge the card", map[string]string{"Idempotency-Key": "k1"})
	if ans.status != http.StatusOK || ans.backend != "good" {
		t.Errorf("POST with Idempotency-Key: status %d from %q, want 200 from the healthy backend", ans.status, ans.backend)
	}
	if got := bad.get(http.MethodPost); got != 2 {
		t.Errorf("resetting backend received %d POSTs in all, want 2 (one per POST)", got)
	}
	if got := good.hits.get("POST /idem"); got != 1 {
		t.Errorf("healthy backend received the idempotent POST %d times, want 1", got)
	}
	t.Logf("resetting backend: %d GET tries for one GET (fasthttp's own retry of a reset idempotent request, then wsgate's failover)", bad.get(http.MethodGet))
}

// TestWebSocketCheckCatchesWedgedBackend proves that the WebSocket health
// check catches a backend whose WebSocket layer is wedged (it answers a
// valid 101 and then never reads or writes) while an HTTP check of the
// same backend passes: the upstream checked over WebSocket takes it out
// (503 with Retry-After, for HTTP and upgrades alike), the one checked
// over HTTP keeps proxying to it. The same WebSocket check keeps a
// healthy WebSocket backend (ping answered, close answered) in.
func TestWebSocketCheckCatchesWedgedBackend(t *testing.T) {
	needBinary(t)
	hits := newCounter()
	done := make(chan struct{})
	addr := startRawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, req.Body)
			hits.add(req.URL.Path)
			if req.URL.Path == "/ws" && strings.EqualFold(req.Header.Get("Upgrade"), "websocket") {
				_, _ = fmt.Fprintf(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
					"Sec-WebSocket-Accept: %s\r\n\r\n", wsAccept(req.Header.Get("Sec-WebSocket-Key")))
				<-done // wedged: never reads, never writes
				return
			}
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
			if req.Close {
				return
			}
		}
	})
	// After startRawBackend's: cleanups run last-in first-out, so the
	// wedged handlers return before it waits for them.
	t.Cleanup(func() { close(done) })

	healthy := startNamed(t, "healthy")
	g := startGateway(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  httpcheck:
    targets: ["http://%[1]s"]
    health: {path: /healthz, interval: 200ms, timeout: 200ms}
  wscheck:
    targets: ["http://%[1]s"]
    health: {websocket: {path: /ws}, interval: 200ms, timeout: 150ms, unhealthy_after: 1}
  wshealthy:
    targets: [%[2]q]
    health: {websocket: {path: /ws}, interval: 200ms, timeout: 200ms}
routes:
  - {match: {path: /h}, upstream: httpcheck}
  - {match: {path: /w}, upstream: wscheck}
  - {match: {path: /wh}, upstream: wshealthy}
`, addr, healthy.url))
	target := "http://" + addr
	e := g.waitLog(logGuard, "target unhealthy for wscheck", logIs("target unhealthy", "upstream", "wscheck", "target", target))
	if !fieldHas(e, "reason", "websocket /ws") {
		t.Errorf("wscheck unhealthy reason = %q, want the websocket check's failure", e["reason"])
	}
	// Three more HTTP checks after that (unhealthy_after is 3 for
	// httpcheck): had they failed, httpcheck would be out by now.
	hits.waitAtLeast(t, "/healthz", hits.get("/healthz")+3)
	healthy.hits.waitAtLeast(t, "WS /ws", healthy.hits.get("WS /ws")+3)
	for _, up := range []string{"httpcheck", "wshealthy"} {
		if got := logsWhere(g, logIs("target unhealthy", "upstream", up)); len(got) != 0 {
			t.Errorf("%s logged target unhealthy: %v", up, got)
		}
	}

	c := httpClient()
	base := "http://" + g.Addr
	if ans := send(t, c, http.MethodGet, base+"/h", "", nil); ans.status != http.StatusOK || ans.body != "ok" {
		t.Errorf("GET /h: status %d %q, want 200 \"ok\" from the backend", ans.status, ans.body)
	}
	ans := send(t, c, http.MethodGet, base+"/w", "", nil)
	if ans.status != http.StatusServiceUnavailable {
		t.Errorf("GET /w: status %d %q, want 503", ans.status, ans.body)
	}
	checkRetryAfter(t, "GET /w", ans.header)
	resp, body := dialRefused(t, "ws://"+g.Addr+"/w")
	check503(t, "upgrade on /w", resp.StatusCode, resp.Header, body)
	ws := dialWS(t, nil, "ws://"+g.Addr+"/wh", nil)
	if got := readName(t, ws); got != "healthy" {
		t.Errorf("upgrade on /wh landed on %q, want the healthy backend", got)
	}
	if got := hits.get("/w"); got != 0 {
		t.Errorf("the backend received /w %d times, want 0 (its only target is out)", got)
	}
	if got := hits.get("/h"); got != 1 {
		t.Errorf("the backend received /h %d times, want 1", got)
	}
}

// hungBackend accepts connections and reads requests (counting them by
// path) without ever answering.
func hungBackend(t *testing.T) (string, *counter) {
	t.Helper()
	hits := newCounter()
	addr := startRawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return // wsgate gave up and closed the connection
			}
			hits.add(req.URL.Path)
		}
	})
	return addr, hits
}

// TestPassiveEjectionAndCap proves passive ejection end to end. Of three
// targets, one accepts connections and never answers: two timeouts
// (passive failures: 2) eject it, logged once as timing out and once as
// ejected; after that no request reaches it and every one succeeds. And
// the cap: when both targets of an upstream refuse connections, only one
// is ejected (max_eject_percent 50), the log says so, and requests keep
// getting the target's own failure (502), never 503 "no target".
func TestPassiveEjectionAndCap(t *testing.T) {
	needBinary(t)
	t.Run("eject", func(t *testing.T) {
		a, b := startNamed(t, "a"), startNamed(t, "b")
		hungAddr, hung := hungBackend(t)
		hungURL := "http://" + hungAddr
		g := startGateway(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  app:
    targets: [%q, %q, %q]
    response_timeout: 1s
    retries: 0
    passive: {failures: 2, window: 10s, eject_for: 30s}
routes:
  - {match: {path_prefix: /}, upstream: app}
`, a.url, b.url, hungURL))
		c := httpClient()
		base := "http://" + g.Addr
		ejected := logIs("target unhealthy", "upstream", "app", "target", hungURL)
		timeouts := 0
		for i := 0; i < 30 && len(logsWhere(g, ejected)) == 0; i++ {
			switch ans := send(t, c, http.MethodGet, base+"/r", "", nil); ans.status {
			case http.StatusOK:
			case http.StatusGatewayTimeout:
				timeouts++
			default:
				t.Fatalf("request %d: status %d %q, want 200 or 504", i, ans.status, ans.body)
			}
		}
		e := g.waitLog(logGuard, "ejecting the hung target", ejected)
		if !fieldHas(e, "reason", "ejected") {
			t.Errorf("reason = %q, want it to say ejected", e["reason"])
		}
		if timeouts != 2 {
			t.Errorf("%d requests got 504 before the ejection, want 2 (passive failures: 2, retries: 0)", timeouts)
		}
		before := hung.get("/r")
		for i := range 30 {
			if ans := send(t, c, http.MethodGet, base+"/r", "", nil); ans.status != http.StatusOK {
				t.Errorf("request %d after the ejection: status %d %q, want 200", i, ans.status, ans.body)
			}
		}
		if got := hung.get("/r"); got != before {
			t.Errorf("the hung target received %d requests after its ejection, want 0", got-before)
		}
		if got := len(logsWhere(g, logIs("target timing out", "target", hungURL))); got != 1 {
			t.Errorf("%d \"target timing out\" lines for %s, want 1 (one per change, not per request)", got, hungURL)
		}
		if a.hits.get("GET /r")+b.hits.get("GET /r") < 30 {
			t.Errorf("healthy targets received %d + %d requests, want at least 30", a.hits.get("GET /r"), b.hits.get("GET /r"))
		}
	})

	t.Run("max_eject_percent", func(t *testing.T) {
		t1, t2 := "http://"+closedAddr(t), "http://"+closedAddr(t)
		g := startGateway(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  app:
    targets: [%q, %q]
    retries: 0
    passive: {failures: 2, window: 10s, eject_for: 30s}
routes:
  - {match: {path_prefix: /}, upstream: app}
`, t1, t2))
		c := httpClient()
		base := "http://" + g.Addr
		capped := logIs("target not ejected: max_eject_percent reached", "upstream", "app")
		statuses := map[int]int{}
		for i := 0; i < 20 && len(logsWhere(g, capped)) == 0; i++ {
			statuses[send(t, c, http.MethodGet, base+"/r", "", nil).status]++
		}
		g.waitLog(logGuard, "max_eject_percent reached", capped)
		for range 5 {
			statuses[send(t, c, http.MethodGet, base+"/r", "", nil).status]++
		}
		if n := len(logsWhere(g, logIs("target unhealthy", "upstream", "app"))); n != 1 {
			t.Errorf("%d targets ejected, want 1 of 2 (max_eject_percent 50)", n)
		}
		for status, n := range statuses {
			if status != http.StatusBadGateway {
				t.Errorf("%d requests got %d, want every one 502 (a refused target, not 503 no target)", n, status)
			}
		}
	})
}

// stickyName returns the sticky cookie's value in a response's
// Set-Cookie lines, and the whole line; "" when there is none.
func stickyName(h http.Header) (value, line string) {
	for _, l := range h.Values("Set-Cookie") {
		if v, ok := strings.CutPrefix(l, "wsgate_sticky="); ok {
			v, _, _ = strings.Cut(v, ";")
			return v, l
		}
	}
	return "", ""
}

// TestStickyCookieSocketIO proves the cookie policy with a socket.io-like
// client: the first polling request gets the sticky cookie (HttpOnly,
// SameSite=Lax, Path=/), the next polling requests and then the WebSocket
// upgrade (its Dialer sharing the cookie jar) land on the same backend; a
// client with no cookie gets the cookie on the 101 itself; and when the
// pinned backend fails its health check the client moves to the other
// one with a new cookie, and stays there.
func TestStickyCookieSocketIO(t *testing.T) {
	needBinary(t)
	a, b := startNamed(t, "a"), startNamed(t, "b")
	backends := map[string]*namedBackend{"a": a, "b": b}
	g := startGateway(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  app:
    targets: [%q, %q]
    balance: cookie
    health: {path: /healthz, interval: 250ms, timeout: 250ms, unhealthy_after: 2, healthy_after: 1}
routes:
  - {match: {path_prefix: /socket.io}, upstream: app}
`, a.url, b.url))
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := httpClient()
	c.Jar = jar
	polling := "http://" + g.Addr + "/socket.io/?EIO=4&transport=polling"
	wsURL := "ws://" + g.Addr + "/socket.io/?EIO=4&transport=websocket"

	first := send(t, c, http.MethodGet, polling, "", nil)
	pinned := first.backend
	cookie, line := stickyName(first.header)
	if first.status != http.StatusOK || backends[pinned] == nil || cookie == "" {
		t.Fatalf("first polling request: status %d from %q, Set-Cookie %q; want 200 from a or b with the sticky cookie",
			first.status, pinned, first.header.Values("Set-Cookie"))
	}
	for _, attr := range []string{"Path=/", "HttpOnly", "SameSite=Lax"} {
		if !strings.Contains(line, attr) {
			t.Errorf("Set-Cookie %q lacks %s", line, attr)
		}
	}
	if strings.Contains(line, "Secure") {
		t.Errorf("Set-Cookie %q is Secure on a plain HTTP listener", line)
	}
	for i := range 10 {
		ans := send(t, c, http.MethodGet, polling, "", nil)
		if ans.status != http.StatusOK || ans.backend != pinned {
			t.Errorf("polling request %d: status %d from %q, want 200 from %q", i+2, ans.status, ans.backend, pinned)
		}
		if v, _ := stickyName(ans.header); v != "" {
			t.Errorf("polling request %d: Set-Cookie again (%q) though the cookie names the target", i+2, v)
		}
	}

	// The upgrade with the same jar.
	d := &websocket.Dialer{HandshakeTimeout: ioTimeout, Jar: jar}
	ws, resp, err := d.Dial(wsURL, nil)
	if err != nil {
		t.Fatalf("upgrade with the cookie: %v", err)
	}
	t.Cleanup(func() { ws.Close() })
	if got := readName(t, ws); got != pinned {
		t.Errorf("upgrade with the cookie landed on %q, want %q", got, pinned)
	}
	if v, _ := stickyName(resp.Header); v != "" {
		t.Errorf("101 with the cookie set it again: %q", v)
	}
	echoOnce(t, ws, websocket.TextMessage, []byte("42[\"hello\"]"))

	// A fresh client, no cookie: the 101 carries one, naming the backend
	// the session landed on.
	fresh, resp, err := (&websocket.Dialer{HandshakeTimeout: ioTimeout}).Dial(wsURL, nil)
	if err != nil {
		t.Fatalf("upgrade without a cookie: %v", err)
	}
	t.Cleanup(func() { fresh.Close() })
	freshName := readName(t, fresh)
	v, _ := stickyName(resp.Header)
	switch {
	case v == "":
		t.Errorf("101 without a cookie sent no sticky cookie: %v", resp.Header)
	case freshName == pinned && v != cookie:
		t.Errorf("101 cookie %q for %s, but polling got %q for it", v, freshName, cookie)
	case freshName != pinned && v == cookie:
		t.Errorf("101 cookie %q names %s, but the session is on %s", v, pinned, freshName)
	}

	// The pinned backend fails its health check: the client moves.
	other := "a"
	if pinned == "a" {
		other = "b"
	}
	backends[pinned].setHealth(http.StatusServiceUnavailable)
	g.waitLog(logGuard, "pinned target unhealthy", logIs("target unhealthy", "upstream", "app", "target", backends[pinned].url))
	moved := send(t, c, http.MethodGet, polling, "", nil)
	newCookie, _ := stickyName(moved.header)
	if moved.status != http.StatusOK || moved.backend != other {
		t.Errorf("after %s went unhealthy: status %d from %q, want 200 from %q", pinned, moved.status, moved.backend, other)
	}
	if newCookie == "" || newCookie == cookie {
		t.Errorf("after the move Set-Cookie value = %q, want a new one (old %q)", newCookie, cookie)
	}
	// Back in rotation, the old backend does not take the client back:
	// the cookie now names the other one.
	backends[pinned].setHealth(http.StatusOK)
	g.waitLog(logGuard, "pinned target healthy again", logIs("target healthy", "upstream", "app", "target", backends[pinned].url))
	for i := range 5 {
		if ans := send(t, c, http.MethodGet, polling, "", nil); ans.status != http.StatusOK || ans.backend != other {
			t.Errorf("request %d after the move: status %d from %q, want 200 from %q", i, ans.status, ans.backend, other)
		}
	}
	ws2, _, err := d.Dial(wsURL, nil)
	if err != nil {
		t.Fatalf("upgrade after the move: %v", err)
	}
	t.Cleanup(func() { ws2.Close() })
	if got := readName(t, ws2); got != other {
		t.Errorf("upgrade after the move landed on %q, want %q", got, other)
	}
}

// readName reads the first message of a namedBackend WebSocket: the name
// of the backend the session landed on.
func readName(t *testing.T, c *websocket.Conn) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(ioTimeout))
	_, p, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("read the backend's name: %v", err)
	}
	_ = c.SetReadDeadline(time.Time{})
	return string(p)
}

// check503 checks wsgate's own "no target" answer: 503, Retry-After, a
// short plain body.
func check503(t *testing.T, what string, status int, h http.Header, body string) {
	t.Helper()
	if status != http.StatusServiceUnavailable {
		t.Errorf("%s: status %d %q, want 503", what, status, body)
		return
	}
	checkRetryAfter(t, what, h)
	if ct := h.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") || len(body) == 0 || len(body) > 200 {
		t.Errorf("%s: body %q (%s), want a short plain text", what, body, ct)
	}
}

// dialRefused makes a WebSocket handshake that must be refused, and returns
// the response and its body.
func dialRefused(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	c, resp, err := (&websocket.Dialer{HandshakeTimeout: ioTimeout}).Dial(url, nil)
	if err == nil {
		c.Close()
		t.Fatalf("dial %s: upgraded, want a refusal", url)
	}
	if resp == nil {
		t.Fatalf("dial %s: %v, want an HTTP refusal", url, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body)
}

// TestNoTargetAvailable503 proves that a request no target can take gets
// wsgate's own 503 with Retry-After (not the 502 of a failed try): when
// active checks took every target out, for HTTP and for a WebSocket
// handshake; and when the only target is at max_connections, held by an
// open WebSocket session.
func TestNoTargetAvailable503(t *testing.T) {
	needBinary(t)
	t.Run("all unhealthy", func(t *testing.T) {
		t1, t2 := "http://"+closedAddr(t), "http://"+closedAddr(t)
		g := startGateway(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  app:
    targets: [%q, %q]
    health: {path: /healthz, interval: 200ms, timeout: 150ms, unhealthy_after: 1}
routes:
  - {match: {path_prefix: /}, upstream: app}
`, t1, t2))
		for _, u := range []string{t1, t2} {
			g.waitLog(logGuard, "target unhealthy for "+u, logIs("target unhealthy", "upstream", "app", "target", u))
		}
		ans := send(t, httpClient(), http.MethodGet, "http://"+g.Addr+"/r", "", nil)
		check503(t, "GET", ans.status, ans.header, ans.body)
		resp, body := dialRefused(t, "ws://"+g.Addr+"/ws")
		check503(t, "WebSocket handshake", resp.StatusCode, resp.Header, body)
	})

	t.Run("max_connections", func(t *testing.T) {
		b := startNamed(t, "b")
		g := startGateway(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  app:
    targets: [%q]
    max_connections: 1
routes:
  - {match: {path_prefix: /}, upstream: app}
`, b.url))
		ws := dialWS(t, nil, "ws://"+g.Addr+"/ws", nil)
		if got := readName(t, ws); got != "b" {
			t.Fatalf("session on %q, want b", got)
		}
		ans := send(t, httpClient(), http.MethodGet, "http://"+g.Addr+"/r", "", nil)
		check503(t, "GET with the target full", ans.status, ans.header, ans.body)
		resp, body := dialRefused(t, "ws://"+g.Addr+"/ws")
		check503(t, "second handshake with the target full", resp.StatusCode, resp.Header, body)
		if got := b.hits.get("GET /r") + b.hits.get("WS /ws"); got != 1 {
			t.Errorf("backend received %d requests and sessions, want 1 (the held session)", got)
		}
		echoOnce(t, ws, websocket.TextMessage, []byte("still here"))
	})
}

// TestDNSDiscovery proves DNS discovery against a DNS server of the test:
// one target is an IP, the other a name (backend.test) resolved every
// 100ms. With no address for the name only the IP target serves; when
// the name resolves, its address (the same 127.0.0.1, another port)
// becomes a target and takes requests and sessions; when it stops
// resolving, new requests avoid it while a session open on it lives on.
func TestDNSDiscovery(t *testing.T) {
	needBinary(t)
	dns := startDNS(t, "backend.test.")
	a, b := startNamed(t, "a"), startNamed(t, "b")
	_, portB, _ := net.SplitHostPort(b.addr)
	g := startGateway(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  app:
    targets: [%q, "http://backend.test:%s"]
    resolve_every: 100ms
    resolvers: [%q]
routes:
  - {match: {path_prefix: /}, upstream: app}
`, a.url, portB, dns.Addr()))
	c := httpClient()
	base := "http://" + g.Addr
	g.waitLog(logGuard, "name has no addresses", logIs("name has no addresses", "upstream", "app", "name", "backend.test"))
	for i := range 10 {
		if ans := send(t, c, http.MethodGet, base+"/r", "", nil); ans.status != http.StatusOK || ans.backend != "a" {
			t.Errorf("request %d, name without address: status %d from %q, want 200 from a", i, ans.status, ans.backend)
		}
	}

	dns.set(netip.MustParseAddr("127.0.0.1"))
	added := g.waitLog(logGuard, "target added", func(e map[string]any) bool {
		return logIs("upstream targets changed", "upstream", "app")(e) && fieldHas(e, "added", b.url)
	})
	if r, _ := added["removed"].(string); r != "" {
		t.Errorf("targets changed with removed = %q, want none", added["removed"])
	}
	seen := map[string]int{}
	for range 20 {
		ans := send(t, c, http.MethodGet, base+"/r", "", nil)
		if ans.status != http.StatusOK {
			t.Fatalf("status %d %q, want 200", ans.status, ans.body)
		}
		seen[ans.backend]++
	}
	if seen["b"] == 0 || seen["a"] == 0 {
		t.Errorf("20 requests after the name resolved went %v, want both a and b", seen)
	}

	// A session on b: dial until round robin puts one there.
	var onB *websocket.Conn
	for i := 0; i < 6 && onB == nil; i++ {
		ws := dialWS(t, nil, "ws://"+g.Addr+"/ws", nil)
		if readName(t, ws) == "b" {
			onB = ws
		} else {
			ws.Close()
		}
	}
	if onB == nil {
		t.Fatal("no session landed on b in 6 handshakes")
	}

	dns.set()
	g.waitLog(logGuard, "target removed", func(e map[string]any) bool {
		return logIs("upstream targets changed", "upstream", "app")(e) && fieldHas(e, "removed", b.url)
	})
	bBefore := b.hits.get("GET /r")
	for i := range 10 {
		if ans := send(t, c, http.MethodGet, base+"/r", "", nil); ans.status != http.StatusOK || ans.backend != "a" {
			t.Errorf("request %d after the name lost its address: status %d from %q, want 200 from a", i, ans.status, ans.backend)
		}
	}
	if got := b.hits.get("GET /r"); got != bBefore {
		t.Errorf("b received %d requests after its removal, want 0", got-bBefore)
	}
	echoOnce(t, onB, websocket.TextMessage, []byte("still on b"))
}

// benchBackend is a running bench/backend process.
type benchBackend struct {
	addr string
	cmd  *exec.Cmd
}

// buildBenchBackend builds bench/backend into a temp dir.
func buildBenchBackend(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "backend")
	cmd := exec.Command("go", "build", "-o", bin, "./bench/backend")
	cmd.Dir = moduleRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./bench/backend: %v\n%s", err, out)
	}
	return bin
}

// startBenchBackend runs bin on 127.0.0.1:0 and reads its address from
// its one stdout line. In cleanup the process is continued (it may be
// stopped), killed and waited for.
func startBenchBackend(t *testing.T, bin string) *benchBackend {
	t.Helper()
	cmd := exec.Command(bin, "-addr", "127.0.0.1:0")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(out).ReadString('\n')
		line <- l
	}()
	select {
	case l := <-line:
		addr, ok := strings.CutPrefix(strings.TrimSpace(l), "listening ")
		if !ok {
			t.Fatalf("bench backend printed %q, want \"listening ADDR\"", l)
		}
		return &benchBackend{addr: addr, cmd: cmd}
	case <-time.After(logGuard):
		t.Fatalf("bench backend printed no address within %v", logGuard)
		return nil
	}
}

// TestHungTargetEjectedAndLogged is the scenario: of two bench
// backends one is stopped (SIGSTOP: the kernel still accepts its
// connections, nothing answers). With passive: {failures: 3}, a 500ms
// response timeout and a 1s handshake timeout, the stopped target is
// logged once as timing out, then ejected, and every request and
// handshake sent after the ejection is logged succeeds. The number that
// waited for a timeout is reported.
func TestHungTargetEjectedAndLogged(t *testing.T) {
	needBinary(t)
	bin := buildBenchBackend(t)
	stopped, live := startBenchBackend(t, bin), startBenchBackend(t, bin)
	stoppedURL := "http://" + stopped.addr
	g := startGateway(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  app:
    targets: [%q, "http://%s"]
    response_timeout: 500ms
    passive: {failures: 3}
routes:
  - match: {path_prefix: /}
    upstream: app
    websocket: {handshake_timeout: 1s}
`, stoppedURL, live.addr))
	if err := stopped.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	ejected := logIs("target unhealthy", "upstream", "app", "target", stoppedURL)
	c := httpClient()
	d := &websocket.Dialer{HandshakeTimeout: logGuard}
	type result struct {
		what         string
		status       int
		afterEjected bool
	}
	var results []result
	gets, handshakes := 0, 0
	for i := range 25 {
		after := len(logsWhere(g, ejected)) > 0
		if i%5 == 4 {
			handshakes++
			ws, resp, err := d.Dial("ws://"+g.Addr+"/ws", nil)
			status := 0
			if resp != nil {
				status = resp.StatusCode
			}
			if err == nil {
				echoOnce(t, ws, websocket.TextMessage, []byte("ping"))
				ws.Close()
			} else if resp == nil {
				t.Fatalf("handshake %d: %v", handshakes, err)
			}
			results = append(results, result{"handshake", status, after})
			continue
		}
		gets++
		ans := send(t, c, http.MethodGet, "http://"+g.Addr+"/small", "", nil)
		if ans.status == http.StatusOK && ans.body != "hello, world\n" {
			t.Errorf("GET /small: body %q", ans.body)
		}
		results = append(results, result{"GET", ans.status, after})
	}
	e := g.waitLog(logGuard, "stopped target ejected", ejected)
	if !fieldHas(e, "reason", "ejected") {
		t.Errorf("reason = %q, want it to say ejected", e["reason"])
	}
	if got := len(logsWhere(g, logIs("target timing out", "upstream", "app", "target", stoppedURL))); got != 1 {
		t.Errorf("%d \"target timing out\" lines for the stopped target, want 1", got)
	}
	var waitedGets, waitedHandshakes, after int
	for _, r := range results {
		if r.status == http.StatusGatewayTimeout {
			if r.what == "GET" {
				waitedGets++
			} else {
				waitedHandshakes++
			}
		}
		want := http.StatusOK
		if r.what == "handshake" {
			want = http.StatusSwitchingProtocols
		}
		if r.afterEjected {
			after++
			if r.status != want {
				t.Errorf("%s sent after the ejection was logged: status %d, want %d", r.what, r.status, want)
			}
		} else if r.status != want && r.status != http.StatusGatewayTimeout {
			t.Errorf("%s: status %d, want %d or 504", r.what, r.status, want)
		}
	}
	if after < 10 {
		t.Errorf("only %d of %d requests were sent after the ejection was logged; want most", after, len(results))
	}
	t.Logf("waited for a timeout (504): %d of %d GETs, %d of %d handshakes; %d sent after the ejection was logged",
		waitedGets, gets, waitedHandshakes, handshakes, after)
}
