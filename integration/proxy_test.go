package integration

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// proxyFixture is wsgate in front of every kind of backend the end-to-end
// tests need.
type proxyFixture struct {
	g       *gw
	ws      *wsBackend
	hits    *hitCounter
	refusal chan int // bytes the refusing backend received after its 401
}

// hitCounter counts requests per path.
type hitCounter struct {
	mu sync.Mutex
	n  map[string]int // guarded by mu
}

func (h *hitCounter) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.n[r.URL.Path]++
		h.mu.Unlock()
		next.ServeHTTP(w, r)
	})
}

func (h *hitCounter) get(path string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n[path]
}

const refusalBody = "no token\n"

func startProxyFixture(t *testing.T) *proxyFixture {
	t.Helper()
	needBinary(t)
	f := &proxyFixture{
		hits:    &hitCounter{n: map[string]int{}},
		refusal: make(chan int, 10),
	}
	echoAddr := startBackend(t, f.hits.wrap(echoHandler()))

	f.ws = newWSBackend("chat.v2") // supports only chat.v2
	f.ws.onMessage = func(path string, c *websocket.Conn, mt int, p []byte) bool {
		if string(p) == "close 4001" {
			msg := websocket.FormatCloseMessage(4001, "backend bye")
			_ = c.WriteControl(websocket.CloseMessage, msg, time.Now().Add(ioTimeout))
			return true // read on: the client's close reply ends the loop
		}
		return c.WriteMessage(mt, p) == nil
	}
	wsAddr := f.ws.start(t)

	// A backend that refuses every upgrade with 401 and a body, then
	// reports how many bytes arrived after the request head: any would
	// mean wsgate tunnelled the client's connection.
	refuserAddr := startRawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		_ = c.SetDeadline(time.Now().Add(ioTimeout))
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		fmt.Fprintf(c, "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"test\"\r\n"+
			"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s", len(refusalBody), refusalBody)
		n, _ := io.Copy(io.Discard, br) // until wsgate closes the connection
		f.refusal <- int(n)
	})
	// A backend that accepts and never answers.
	silentAddr := startRawBackend(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })

	f.g = startGateway(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  echo: {targets: ["http://%s"]}
  ws: {targets: ["http://%s"]}
  refuser: {targets: ["http://%s"]}
  refused: {targets: ["http://%s"], connect_timeout: 2s}
  silent: {targets: ["http://%s"], response_timeout: 300ms}
routes:
  - match: {path_prefix: /http}
    upstream: echo
  - match: {path_prefix: /ws}
    upstream: ws
  - match: {path_prefix: /ws/small}
    upstream: ws
    websocket: {max_message_size: 1KiB}
  - match: {path_prefix: /refuse-upgrade}
    upstream: refuser
  - match: {path_prefix: /refused}
    upstream: refused
  - match: {path_prefix: /silent}
    upstream: silent
`, echoAddr, wsAddr, refuserAddr, closedAddr(t), silentAddr))
	return f
}

func TestProxyHTTP(t *testing.T) {
	f := startProxyFixture(t)
	base := "http://" + f.g.Addr
	c := httpClient()

	t.Run("GET", func(t *testing.T) {
		resp, body := get(t, c, base+"/http/get?x=1&y=%20", map[string]string{"X-Forwarded-For": "6.6.6.6"})
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d, want 200; body %q", resp.StatusCode, body)
		}
		r := decodeEcho(t, body)
		if r.Method != "GET" || r.Path != "/http/get" || r.RawQuery != "x=1&y=%20" {
			t.Errorf("backend saw %s %s?%s, want GET /http/get?x=1&y=%%20", r.Method, r.Path, r.RawQuery)
		}
		// An untrusted client's X-Forwarded-For is replaced, not extended.
		if got := r.Header.Get("X-Forwarded-For"); got != "127.0.0.1" {
			t.Errorf("backend X-Forwarded-For = %q, want %q", got, "127.0.0.1")
		}
		if got := r.Header.Get("X-Forwarded-Proto"); got != "http" {
			t.Errorf("backend X-Forwarded-Proto = %q, want http", got)
		}
		if got := r.Header.Get("X-Forwarded-Host"); got != f.g.Addr {
			t.Errorf("backend X-Forwarded-Host = %q, want %q", got, f.g.Addr)
		}
		if r.Host != f.g.Addr {
			t.Errorf("backend Host = %q, want %q", r.Host, f.g.Addr)
		}
		if got := resp.Header.Get("X-Backend"); got != "echo" {
			t.Errorf("response X-Backend = %q, want echo", got)
		}
		for _, h := range []string{"X-Resp-Hop", "Keep-Alive"} {
			if v := resp.Header.Values(h); len(v) > 0 {
				t.Errorf("response carries hop-by-hop %s: %q", h, v)
			}
		}
	})

	t.Run("hop-by-hop request headers", func(t *testing.T) {
		rc := dialRaw(t, f.g.Addr)
		rc.write("GET /http/hop HTTP/1.1\r\n" +
			"Host: app.example.test\r\n" +
			"Connection: keep-alive, X-Hop\r\n" +
			"X-Hop: secret\r\n" +
			"Keep-Alive: timeout=5\r\n" +
			"Proxy-Connection: keep-alive\r\n" +
			"TE: trailers\r\n" +
			"Proxy-Authorization: Basic dXNlcjpwYXNz\r\n" +
			"X-Forwarded-For: 6.6.6.6\r\n" +
			"X-Forwarded-Proto: https\r\n" +
			"X-Forwarded-Host: evil.example.test\r\n" +
			"X-End-To-End: kept\r\n\r\n")
		resp, body := rc.readResponse("GET")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d, want 200; body %q", resp.StatusCode, body)
		}
		r := decodeEcho(t, body)
		for _, h := range []string{"X-Hop", "Keep-Alive", "Proxy-Connection", "TE", "Proxy-Authorization"} {
			if v := r.Header.Values(h); len(v) > 0 {
				t.Errorf("backend received hop-by-hop %s: %q", h, v)
			}
		}
		want := map[string]string{
			"X-End-To-End":      "kept",
			"X-Forwarded-For":   "127.0.0.1",
			"X-Forwarded-Proto": "http",
			"X-Forwarded-Host":  "app.example.test",
		}
		for h, w := range want {
			if got := r.Header.Get(h); got != w {
				t.Errorf("backend %s = %q, want %q", h, got, w)
			}
		}
		if r.Host != "app.example.test" {
			t.Errorf("backend Host = %q, want app.example.test", r.Host)
		}
		for _, h := range []string{"X-Resp-Hop", "Keep-Alive"} {
			if v := resp.Header.Values(h); len(v) > 0 {
				t.Errorf("response carries hop-by-hop %s: %q", h, v)
			}
		}
		// The connection stays usable for the next request.
		rc.write("GET /http/again HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
		if resp, body := rc.readResponse("GET"); resp.StatusCode != http.StatusOK || decodeEcho(t, body).Path != "/http/again" {
			t.Errorf("second request on the connection: status %d, body %q", resp.StatusCode, body)
		}
	})

	t.Run("POST", func(t *testing.T) {
		for _, size := range []int{11, 300 << 10} { // buffered and streamed bodies
			body := make([]byte, size)
			_, _ = rand.Read(body)
			sum := sha256.Sum256(body)
			resp, err := c.Post(base+"/http/post", "application/octet-stream", bytes.NewReader(body))
			if err != nil {
				t.Fatalf("POST %d bytes: %v", size, err)
			}
			reply, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("POST %d bytes: status %d, body %q", size, resp.StatusCode, reply)
			}
			r := decodeEcho(t, string(reply))
			if r.Method != "POST" || r.BodyLen != size || r.BodySHA256 != hex.EncodeToString(sum[:]) {
				t.Errorf("POST %d bytes: backend saw %s with %d bytes (sha256 %s), want %s", size, r.Method, r.BodyLen, r.BodySHA256, hex.EncodeToString(sum[:]))
			}
		}
	})

	t.Run("chunked POST", func(t *testing.T) {
		rc := dialRaw(t, f.g.Addr)
		rc.write("POST /http/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
			"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n")
		resp, body := rc.readResponse("POST")
		sum := sha256.Sum256([]byte("hello, world"))
		if r := decodeEcho(t, body); resp.StatusCode != http.StatusOK || r.BodyLen != 12 || r.BodySHA256 != hex.EncodeToString(sum[:]) {
			t.Errorf("chunked POST: status %d, backend saw %d bytes, want 12 (\"hello, world\")", resp.StatusCode, r.BodyLen)
		}
	})

	t.Run("no route 404", func(t *testing.T) {
		resp, body := get(t, c, base+"/nothing/here", nil)
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("status %d, want 404; body %q", resp.StatusCode, body)
		}
	})

	t.Run("refusing upstream 502", func(t *testing.T) {
		resp, body := get(t, c, base+"/refused", nil)
		if resp.StatusCode != http.StatusBadGateway {
			t.Errorf("status %d, want 502; body %q", resp.StatusCode, body)
		}
	})

	t.Run("silent upstream 504", func(t *testing.T) {
		start := time.Now()
		resp, body := get(t, c, base+"/silent", nil)
		elapsed := time.Since(start)
		if resp.StatusCode != http.StatusGatewayTimeout {
			t.Errorf("status %d, want 504; body %q", resp.StatusCode, body)
		}
		// response_timeout is 300ms. A 504 at all shows it applied: the
		// client gives up after ioTimeout, long before the 60s default.
		if elapsed < 300*time.Millisecond {
			t.Errorf("504 after %v, before the 300ms response_timeout", elapsed)
		}
	})

	t.Run("CL+TE smuggling 400 and close", func(t *testing.T) {
		rc := dialRaw(t, f.g.Addr)
		// If wsgate framed this by Content-Length, "G" would start the
		// next request; by chunked, it would be a stray byte.
		rc.write("POST /http/smuggle HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n" +
			"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nG")
		resp, body := rc.readResponse("POST")
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("status %d, want 400; body %q", resp.StatusCode, body)
		}
		if !resp.Close {
			t.Errorf("response without Connection: close")
		}
		rc.expectEOF()
		if n := f.hits.get("/http/smuggle"); n != 0 {
			t.Errorf("backend received the smuggling request %d times", n)
		}
	})

	t.Run("h2c upgrade not forwarded", func(t *testing.T) {
		rc := dialRaw(t, f.g.Addr)
		rc.write("GET /http/h2c HTTP/1.1\r\nHost: x\r\n" +
			"Connection: Upgrade, HTTP2-Settings\r\n" +
			"Upgrade: h2c\r\n" +
			"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
		resp, body := rc.readResponse("GET")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d, want 200 (plain HTTP); body %q", resp.StatusCode, body)
		}
		r := decodeEcho(t, body)
		for _, h := range []string{"Upgrade", "HTTP2-Settings"} {
			if v := r.Header.Values(h); len(v) > 0 {
				t.Errorf("backend received %s: %q", h, v)
			}
		}
		if c := r.Header.Get("Connection"); strings.Contains(strings.ToLower(c), "upgrade") {
			t.Errorf("backend received Connection: %q", c)
		}
		// Still HTTP/1.1 on the same connection.
		rc.write("GET /http/after-h2c HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp, body := rc.readResponse("GET"); resp.StatusCode != http.StatusOK || decodeEcho(t, body).Path != "/http/after-h2c" {
			t.Errorf("request after h2c attempt: status %d, body %q", resp.StatusCode, body)
		}
	})
}

func TestProxyWebSocket(t *testing.T) {
	f := startProxyFixture(t)
	wsBase := "ws://" + f.g.Addr

	t.Run("echo with the backend's subprotocol", func(t *testing.T) {
		d := &websocket.Dialer{HandshakeTimeout: ioTimeout, Subprotocols: []string{"echo", "chat.v2"}}
		c := dialWS(t, d, wsBase+"/ws/echo", nil)
		// The client prefers echo, the backend supports only chat.v2:
		// the choice is the backend's, passed through.
		if got := c.Subprotocol(); got != "chat.v2" {
			t.Errorf("subprotocol %q, want chat.v2 (the backend's choice)", got)
		}
		echoOnce(t, c, websocket.TextMessage, []byte("hello"))
		echoOnce(t, c, websocket.BinaryMessage, []byte{0, 1, 2, 0xff})
		big := make([]byte, 200<<10) // larger than the relay's buffers
		_, _ = rand.Read(big)
		echoOnce(t, c, websocket.BinaryMessage, big)
		_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "done"), time.Now().Add(ioTimeout))
		if ce := readClose(t, c); ce.Code != websocket.CloseNormalClosure {
			t.Errorf("close reply %d %q, want 1000", ce.Code, ce.Text)
		}
		if ce := f.ws.nextClose(t, "/ws/echo"); ce.Code != websocket.CloseNormalClosure || ce.Text != "done" {
			t.Errorf("backend got close %d %q, want 1000 \"done\"", ce.Code, ce.Text)
		}
	})

	t.Run("refused upgrade relayed", func(t *testing.T) {
		d := &websocket.Dialer{HandshakeTimeout: ioTimeout}
		c, resp, err := d.Dial(wsBase+"/refuse-upgrade", nil)
		if err == nil {
			c.Close()
			t.Fatal("handshake succeeded, want 401")
		}
		if !errors.Is(err, websocket.ErrBadHandshake) || resp == nil {
			t.Fatalf("dial: %v, want a bad handshake with a response", err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusUnauthorized || string(body) != refusalBody {
			t.Errorf("got %d %q, want 401 %q", resp.StatusCode, body, refusalBody)
		}
		if got := resp.Header.Get("WWW-Authenticate"); got != `Bearer realm="test"` {
			t.Errorf("WWW-Authenticate = %q, want the backend's", got)
		}
		f.expectNoTunnel(t)
	})

	t.Run("pipelined request after refusal stays HTTP", func(t *testing.T) {
		rc := dialRaw(t, f.g.Addr)
		// One write: the handshake and a request right behind it. If
		// wsgate tunnelled after the refusal, the second request would
		// reach the refusing backend as raw bytes.
		rc.write("GET /refuse-upgrade HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n" +
			"GET /http/pipelined HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, body := rc.readResponse("GET")
		if resp.StatusCode != http.StatusUnauthorized || body != refusalBody {
			t.Fatalf("first response %d %q, want 401 %q", resp.StatusCode, body, refusalBody)
		}
		resp, body = rc.readResponse("GET")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("pipelined request: status %d, body %q", resp.StatusCode, body)
		}
		if r := decodeEcho(t, body); r.Path != "/http/pipelined" || r.Header.Get("X-Forwarded-For") != "127.0.0.1" {
			t.Errorf("pipelined request reached the echo backend as %s with X-Forwarded-For %q, want /http/pipelined through the HTTP proxy", r.Path, r.Header.Get("X-Forwarded-For"))
		}
		f.expectNoTunnel(t)
	})

	t.Run("backend close code 4001 reaches the client", func(t *testing.T) {
		c := dialWS(t, nil, wsBase+"/ws/close", nil)
		echoOnce(t, c, websocket.TextMessage, []byte("first"))
		if err := c.WriteMessage(websocket.TextMessage, []byte("close 4001")); err != nil {
			t.Fatal(err)
		}
		ce := readClose(t, c)
		if ce.Code != 4001 || ce.Text != "backend bye" {
			t.Errorf("client got close %d %q, want 4001 \"backend bye\"", ce.Code, ce.Text)
		}
	})

	t.Run("max_message_size 1009", func(t *testing.T) {
		c := dialWS(t, nil, wsBase+"/ws/small", nil)
		echoOnce(t, c, websocket.TextMessage, bytes.Repeat([]byte("a"), 1024)) // at the limit
		if err := c.WriteMessage(websocket.TextMessage, bytes.Repeat([]byte("b"), 2048)); err != nil {
			t.Fatal(err)
		}
		if ce := readClose(t, c); ce.Code != websocket.CloseMessageTooBig {
			t.Errorf("client got close %d %q, want 1009", ce.Code, ce.Text)
		}
		if ce := f.ws.nextClose(t, "/ws/small"); ce.Code != websocket.CloseGoingAway {
			t.Errorf("backend got close %d %q, want 1001", ce.Code, ce.Text)
		}
	})

	t.Run("client protocol violation 1002", func(t *testing.T) {
		rc := dialRaw(t, f.g.Addr)
		rc.wsHandshake(f.g.Addr, "/ws/violation")
		rc.write("\x81\x05hello") // text frame without the mask clients must set
		fr := rc.readFrame()
		if code, reason := fr.closeCode(); code != websocket.CloseProtocolError {
			t.Errorf("got frame opcode %#x code %d %q, want close 1002", fr.opcode, code, reason)
		}
		rc.expectEOF()
		if ce := f.ws.nextClose(t, "/ws/violation"); ce.Code != websocket.CloseGoingAway {
			t.Errorf("backend got close %d %q, want 1001", ce.Code, ce.Text)
		}
	})
}

// expectNoTunnel waits for the refusing backend's report and checks that
// nothing followed the handshake request on its connection.
func (f *proxyFixture) expectNoTunnel(t *testing.T) {
	t.Helper()
	select {
	case n := <-f.refusal:
		if n != 0 {
			t.Errorf("refusing backend received %d bytes after the handshake: the client was tunnelled", n)
		}
	case <-time.After(ioTimeout):
		t.Error("wsgate did not close its connection to the refusing backend")
	}
}
