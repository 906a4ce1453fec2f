package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// countingBackend answers 200 "ok" after reading the whole body and
// counts the requests that reached it.
func countingBackend(t *testing.T) (string, *atomic.Int64) {
	var n atomic.Int64
	addr := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	}))
	return addr, &n
}

func TestSmugglingRejected(t *testing.T) {
	backend, reached := countingBackend(t)
	p := startProxy(t, wsRoute(testUpstream(backend)))
	const post = "POST / HTTP/1.1\r\nHost: x\r\n"
	for _, tc := range []struct {
		name, req string
		status    []int // any of these
	}{
		// RFC 9112 §6.1: reject, and close after responding.
		{"Content-Length then Transfer-Encoding", post + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", []int{400}},
		{"Transfer-Encoding then Content-Length", post + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", []int{400}},
		// RFC 9110 §8.6, RFC 9112 §6.3: invalid Content-Length.
		{"Content-Length list", post + "Content-Length: 5, 6\r\n\r\nhello", []int{400}},
		{"Content-Length twice, differing", post + "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello", []int{400}},
		{"Content-Length twice, equal", post + "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", []int{400}}, // stricter than the RFC's MAY
		{"Content-Length with sign", post + "Content-Length: +5\r\n\r\nhello", []int{400}},
		{"Content-Length negative", post + "Content-Length: -1\r\n\r\nhello", []int{400}},
		{"Content-Length not digits", post + "Content-Length: 5x\r\n\r\nhello", []int{400}},
		{"Content-Length empty", post + "Content-Length: \r\n\r\nhello", []int{400}},
		// RFC 9112 §6.1, §6.3: only chunked, once, last; unknown codings 501.
		{"Transfer-Encoding gzip, chunked", post + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", []int{400, 501}},
		{"Transfer-Encoding chunked, gzip", post + "Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", []int{400, 501}},
		{"Transfer-Encoding xchunked", post + "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", []int{400, 501}},
		{"Transfer-Encoding identity", post + "Transfer-Encoding: identity\r\n\r\n0\r\n\r\n", []int{400, 501}},
		{"Transfer-Encoding twice", post + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", []int{400, 501}},
		{"Transfer-Encoding vertical tab", post + "Transfer-Encoding:\vchunked\r\n\r\n0\r\n\r\n", []int{400, 501}},
		{"Transfer-Encoding space before colon", post + "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", []int{400}},
		{"Transfer-Encoding on HTTP/1.0", "POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", []int{400, 501}},
		// RFC 9112 §3.2: Host.
		{"missing Host", "GET / HTTP/1.1\r\n\r\n", []int{400}},
		{"duplicate Host", "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", []int{400}},
		{"duplicate Host, other case", "GET / HTTP/1.1\r\nHost: x\r\nhost: x\r\n\r\n", []int{400}},
		{"invalid Host", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", []int{400}},
		// RFC 9110 §5.5, RFC 9112 §5.1: field syntax.
		{"NUL in a value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", []int{400}},
		{"bare CR in a value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", []int{400}},
		{"space before colon", "GET / HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n", []int{400}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := reached.Load()
			resps, _, c := rawExchange(t, p.addr, tc.req, 1)
			if got := resps[0].StatusCode; !slices.Contains(tc.status, got) {
				t.Errorf("status %d, want one of %v", got, tc.status)
			}
			if !closedAfter(t, c) {
				t.Error("connection left open after a request with broken framing")
			}
			if n := reached.Load() - before; n != 0 {
				t.Errorf("%d request(s) reached the backend", n)
			}
		})
	}
}

// TestMalformedChunkedBodyClosesConnection sends a chunked body whose
// framing breaks after the head was forwarded, with a second request
// behind the break. The client gets 400 and its connection is closed, so
// the bytes after the break are never read as a request.
func TestMalformedChunkedBodyClosesConnection(t *testing.T) {
	var complete, smuggled atomic.Int64
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/smuggled" {
			smuggled.Add(1)
		}
		if _, err := io.ReadAll(r.Body); err == nil && r.Method == "POST" {
			complete.Add(1)
		}
	}))
	p := startProxy(t, wsRoute(testUpstream(backend)))
	const next = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
	for _, tc := range []struct{ name, body string }{
		{"bad chunk end", "5\r\nhelloXX" + next},
		{"bare LF after chunk size", "5\nhello\r\n0\r\n\r\n" + next},
		{"hex prefix", "0x5\r\nhello\r\n0\r\n\r\n" + next},
		{"size not hex", "zz\r\nhello\r\n0\r\n\r\n" + next},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resps, _, c := rawExchange(t, p.addr, "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"+tc.body, 1)
			if got := resps[0].StatusCode; got != 400 {
				t.Errorf("status %d, want 400", got)
			}
			if !closedAfter(t, c) {
				t.Error("connection left open after a malformed body")
			}
		})
	}
	if n := smuggled.Load(); n != 0 {
		t.Errorf("the request behind a malformed body reached the backend %d times", n)
	}
	if n := complete.Load(); n != 0 {
		t.Errorf("the backend read %d malformed bodies as complete", n)
	}
}

func TestRequestHeaderTooLarge(t *testing.T) {
	backend, reached := countingBackend(t)
	p := startProxyWith(t, proxySetup{Server: ServerOptions{HeaderBytes: 4096}}, wsRoute(testUpstream(backend)))

	resps, _, c := rawExchange(t, p.addr, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", 8<<10)+"\r\n\r\n", 1)
	if got := resps[0].StatusCode; got != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("8 KiB header with a 4 KiB limit: status %d, want 431", got)
	}
	if !closedOrReset(t, c) {
		t.Error("connection left open after 431")
	}
	// Many small fields add up the same way.
	resps, _, _ = rawExchange(t, p.addr, "GET / HTTP/1.1\r\nHost: x\r\n"+strings.Repeat("X-F: 0123456789\r\n", 500)+"\r\n", 1)
	if got := resps[0].StatusCode; got != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("500 header fields: status %d, want 431", got)
	}
	// Just under the limit passes.
	resp, _ := rawStatus(t, p.addr, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", 3<<10)+"\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Errorf("3 KiB header: status %d, want 200", resp.StatusCode)
	}
	if n := reached.Load(); n != 1 {
		t.Errorf("%d requests reached the backend, want only the one under the limit", n)
	}
}

func TestRequestBodyLimit(t *testing.T) {
	const limit = 64 << 10
	type result struct {
		n        int64
		complete bool
	}
	results := make(chan result, 8)
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		results <- result{n, err == nil}
	}))
	r := wsRoute(testUpstream(backend))
	r.MaxRequestBody = limit
	p := startProxy(t, r)

	// send writes head and body from a goroutine: the proxy may stop
	// reading (and close) long before the body is all sent.
	send := func(t *testing.T, head string, body io.Reader) (*http.Response, error) {
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		done := make(chan struct{})
		t.Cleanup(func() { c.Close(); <-done })
		go func() {
			defer close(done)
			if _, err := io.WriteString(c, head); err == nil {
				io.Copy(c, body)
			}
		}()
		return http.ReadResponse(bufio.NewReader(c), nil)
	}

	for _, size := range []int64{limit + 1, 1 << 20} {
		t.Run(fmt.Sprintf("content-length %d", size), func(t *testing.T) {
			resp, err := send(t, fmt.Sprintf("POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", size), &patternReader{n: size})
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusRequestEntityTooLarge || !resp.Close {
				t.Errorf("status %d, close %v; want 413 and Connection: close", resp.StatusCode, resp.Close)
			}
		})
	}
	select {
	case res := <-results:
		t.Fatalf("a request over the limit by Content-Length reached the backend (%d bytes)", res.n)
	default:
	}

	t.Run("chunked over the limit", func(t *testing.T) {
		pr, pw := io.Pipe()
		go func() {
			// 1 MiB in 4 KiB chunks; stops when the proxy hangs up.
			defer pw.Close()
			chunk := fmt.Sprintf("%x\r\n%s\r\n", 4096, strings.Repeat("z", 4096))
			for range 256 {
				if _, err := io.WriteString(pw, chunk); err != nil {
					return
				}
			}
			io.WriteString(pw, "0\r\n\r\n")
		}()
		t.Cleanup(func() { pr.Close() })
		resp, err := send(t, "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", pr)
		switch {
		case err != nil:
			t.Logf("upload aborted: %v", err) // also acceptable
		case resp.StatusCode != http.StatusRequestEntityTooLarge:
			t.Errorf("status %d, want 413", resp.StatusCode)
		}
		select {
		case res := <-results:
			if res.complete || res.n > limit {
				t.Errorf("backend read %d bytes, complete %v; want an incomplete body within the limit", res.n, res.complete)
			}
		case <-time.After(10 * time.Second):
			// The proxy failed before the backend saw the request: fine.
		}
	})

	t.Run("chunked within the limit", func(t *testing.T) {
		body := strings.Repeat("y", limit)
		resp, err := send(t, "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", strings.NewReader(fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(body), body)))
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 {
			t.Errorf("status %d, want 200", resp.StatusCode)
		}
		if res := <-results; !res.complete || res.n != limit {
			t.Errorf("backend read %d bytes, complete %v; want all %d", res.n, res.complete, limit)
		}
	})
}

func TestH2CUpgradeNotForwarded(t *testing.T) {
	seen := make(chan http.Header, 1)
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Clone()
		io.WriteString(w, "plain")
	}))
	p := startProxy(t, wsRoute(testUpstream(backend)))
	resp, body := rawStatus(t, p.addr, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n"+
		"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n")
	if resp.StatusCode != 200 || body != "plain" {
		t.Errorf("status %d body %q, want the backend's plain 200", resp.StatusCode, body)
	}
	h := <-seen
	for _, name := range []string{"Upgrade", "Http2-Settings", "Connection"} {
		if v, ok := h[name]; ok {
			t.Errorf("backend saw %s: %q", name, v)
		}
	}
}

func TestUpgradeOnRouteWithoutWebSocket(t *testing.T) {
	seen := make(chan http.Header, 1)
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Clone()
		io.WriteString(w, "plain")
	}))
	r := wsRoute(testUpstream(backend))
	r.WebSocket.Enabled = false
	p := startProxy(t, r)
	resps, bodies, c := rawExchange(t, p.addr, "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", 1)
	if resps[0].StatusCode != 200 || bodies[0] != "plain" {
		t.Errorf("status %d body %q, want the backend's plain 200", resps[0].StatusCode, bodies[0])
	}
	h := <-seen
	for _, name := range []string{"Upgrade", "Connection"} {
		if v, ok := h[name]; ok {
			t.Errorf("backend saw %s: %q", name, v)
		}
	}
	// Still HTTP: the next request on the connection works.
	io.WriteString(c, "GET /again HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("second request: %v, %v", resp, err)
	}
	<-seen
}

func TestBackendSwitchingProtocolsOnPlainRequest(t *testing.T) {
	addr, _ := startTCPBackend(t, func(c net.Conn) {
		if _, err := readRequestHead(bufio.NewReader(c)); err == nil {
			io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nBYTES-OF-ANOTHER-PROTOCOL")
		}
	})
	p := startProxy(t, wsRoute(testUpstream(addr)))
	resp, body := rawStatus(t, p.addr, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
	if resp.StatusCode != http.StatusBadGateway || strings.Contains(body, "BYTES") {
		t.Errorf("status %d body %q, want 502", resp.StatusCode, body)
	}
}

func TestAbsoluteFormTarget(t *testing.T) {
	backend, heads := captureBackend(t)
	r := wsRoute(testUpstream(backend))
	r.Hosts = []string{"app.example"}
	p := startProxy(t, r)
	// RFC 9112 §3.2.2: the target's authority replaces Host, for routing
	// and upstream alike. Userinfo is dropped, never turned into
	// Authorization.
	resp, _ := rawStatus(t, p.addr, "GET http://user:pw@app.example/x?q=1 HTTP/1.1\r\nHost: other.example\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d, want 200 from the route for app.example", resp.StatusCode)
	}
	got := <-heads
	for _, want := range []string{"host: app.example", "x-forwarded-host: app.example"} {
		if !slices.Contains(got, want) {
			t.Errorf("backend head %q lacks %q", got, want)
		}
	}
	for _, line := range got {
		if strings.HasPrefix(line, "authorization:") {
			t.Errorf("backend saw %q made from the target's userinfo", line)
		}
	}
}
