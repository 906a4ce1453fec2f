package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/wsgate/wsgate/routes"
)

func TestWebSocketEcho(t *testing.T) {
	backend := startBackend(t, echoWS(t))
	p := startProxy(t, wsRoute(testUpstream(backend)))

	c, resp := dialWS(t, p.addr, "/chat?room=1", http.Header{"Sec-WebSocket-Protocol": {"chat.v1, chat.v2"}})
	if got := c.Subprotocol(); got != "chat.v2" {
		t.Errorf("Subprotocol() = %q, want the backend's choice %q", got, "chat.v2")
	}
	if got := resp.Header.Values("Set-Cookie"); len(got) != 2 {
		t.Errorf("Set-Cookie = %q, want the backend's two cookies", got)
	}
	for _, m := range []struct {
		typ  int
		data []byte
	}{
		{websocket.TextMessage, []byte("hello")},
		{websocket.BinaryMessage, []byte{0, 1, 2, 255}},
		{websocket.TextMessage, bytes.Repeat([]byte("x"), 70000)},    // 64-bit length, streamed
		{websocket.BinaryMessage, bytes.Repeat([]byte{7}, 300)},      // 16-bit length
		{websocket.TextMessage, bytes.Repeat([]byte("y"), 3*32<<10)}, // several of the relay's 32 KiB chunks
	} {
		if err := c.WriteMessage(m.typ, m.data); err != nil {
			t.Fatal(err)
		}
		typ, got, err := c.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		if typ != m.typ || !bytes.Equal(got, m.data) {
			t.Fatalf("echo of %d bytes type %d = %d bytes type %d", len(m.data), m.typ, len(got), typ)
		}
	}
}

func TestWebSocketForwardsHandshakeHeaders(t *testing.T) {
	var got atomic.Pointer[http.Request]
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Store(r)
		c, err := up.Upgrade(w, r, nil)
		if err == nil {
			c.Close()
		}
	}))
	p := startProxy(t, wsRoute(testUpstream(backend)))
	c, _ := dialWS(t, p.addr, "/x/y?q=1", http.Header{
		"Origin":          {"https://app.example"},
		"Cookie":          {"sid=abc"},
		"Authorization":   {"Bearer t"},
		"X-Forwarded-For": {"6.6.6.6"}, // untrusted: replaced
	})
	c.Close()
	r := got.Load()
	for name, want := range map[string]string{
		"Origin":            "https://app.example",
		"Cookie":            "sid=abc",
		"Authorization":     "Bearer t",
		"X-Forwarded-For":   "127.0.0.1",
		"X-Forwarded-Proto": "http",
		"X-Forwarded-Host":  p.addr,
	} {
		if v := r.Header.Get(name); v != want {
			t.Errorf("backend saw %s = %q, want %q", name, v, want)
		}
	}
	if r.Host != p.addr {
		t.Errorf("backend saw Host %q, want %q", r.Host, p.addr)
	}
	if r.URL.RequestURI() != "/x/y?q=1" {
		t.Errorf("backend saw URI %q", r.URL.RequestURI())
	}
}

// TestWebSocketRefusalRelayed checks that a backend's non-101 answer
// reaches the client whole and that nothing the client sends afterwards is
// tunnelled: the connection stays HTTP.
func TestWebSocketRefusalRelayed(t *testing.T) {
	var requests atomic.Int32
	body := strings.Repeat("denied ", 1000) // well over the Dialer's 1 KiB
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.Header().Set("X-Deny-Reason", "no token")
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, body)
	}))
	p := startProxy(t, wsRoute(testUpstream(backend)))
	req := "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n" +
		"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
	resps, bodies, _ := rawExchange(t, p.addr, req, 2)
	if resps[0].StatusCode != http.StatusForbidden {
		t.Fatalf("status %d, want 403", resps[0].StatusCode)
	}
	if resps[0].Header.Get("X-Deny-Reason") != "no token" || bodies[0] != body {
		t.Errorf("refusal headers or body not relayed whole: %q, %d bytes", resps[0].Header, len(bodies[0]))
	}
	// The bytes after the handshake were parsed as a second HTTP request
	// (also refused by the backend as an ordinary request), never
	// tunnelled raw.
	if resps[1].StatusCode != http.StatusForbidden {
		t.Errorf("pipelined request got %d, want 403 as plain HTTP", resps[1].StatusCode)
	}
	if n := requests.Load(); n != 2 {
		t.Errorf("backend got %d requests, want 2", n)
	}
}

// TestWebSocketBadAccept: a 101 with a wrong Sec-WebSocket-Accept is 502.
func TestWebSocketBadAccept(t *testing.T) {
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: bm9wZQ==\r\n\r\nframes")
		brw.Flush()
	}))
	p := startProxy(t, wsRoute(testUpstream(backend)))
	resp, body := rawStatus(t, p.addr, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", resp.StatusCode)
	}
	if strings.Contains(body, "frames") {
		t.Error("bytes after a bad 101 reached the client")
	}
}

func TestWebSocketHandshakeFailures(t *testing.T) {
	backend := startBackend(t, echoWS(t))
	refused := closedPort(t)
	silent := silentBackend(t)
	r := wsRoute(testUpstream(backend))
	r.WebSocket.Origins = []string{"https://good.example"}
	r.PathPrefix = "/origin"
	p := startProxy(t, wsRoute(testUpstream(backend)), r,
		pathRoute("/refused", wsRoute(testUpstream(refused))),
		pathRoute("/silent", wsRoute(testUpstream(silent))))
	const key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	for _, tc := range []struct {
		name, req string
		want      int
	}{
		{"wrong version", "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" + key + "Sec-WebSocket-Version: 8\r\n\r\n", 426},
		{"missing key", "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n", 400},
		{"bad key", "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: abc\r\nSec-WebSocket-Version: 13\r\n\r\n", 400},
		{"no connection upgrade", "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n" + key + "Sec-WebSocket-Version: 13\r\n\r\n", 400},
		{"post", "POST / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" + key + "Sec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n", 400},
		{"origin refused", "GET /origin HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" + key + "Sec-WebSocket-Version: 13\r\n\r\n", 403},
		{"origin allowed", "GET /origin HTTP/1.1\r\nHost: x\r\nOrigin: https://GOOD.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" + key + "Sec-WebSocket-Version: 13\r\n\r\n", 101},
		{"backend refused", "GET /refused HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" + key + "Sec-WebSocket-Version: 13\r\n\r\n", 502},
		{"backend silent", "GET /silent HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" + key + "Sec-WebSocket-Version: 13\r\n\r\n", 504},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := rawStatus(t, p.addr, tc.req)
			if resp.StatusCode != tc.want {
				t.Errorf("status %d, want %d (%q)", resp.StatusCode, tc.want, body)
			}
			if tc.want == http.StatusUpgradeRequired && resp.Header.Get("Sec-WebSocket-Version") != "13" {
				t.Errorf("426 without Sec-WebSocket-Version: 13")
			}
		})
	}
}

// pathRoute sets r's path prefix.
func pathRoute(prefix string, r *routes.Route) *routes.Route {
	r.PathPrefix = prefix
	return r
}

func TestCloseCodesRelayed(t *testing.T) {
	// The backend closes with the code and reason the client asks for in
	// its first message; the client's own close travels the other way.
	gotClose := make(chan string, 1)
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		_, msg, err := c.ReadMessage()
		if err != nil {
			return
		}
		if string(msg) == "close me" {
			c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(4001, "bye from backend"))
			c.ReadMessage()
			return
		}
		_, _, err = c.ReadMessage()
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			gotClose <- ce.Error()
		}
	}))
	p := startProxy(t, wsRoute(testUpstream(backend)))

	for _, code := range []int{1000, 1001, 1003, 1008, 1011, 1013, 3000, 4999} {
		c, _ := dialWS(t, p.addr, "/", nil)
		c.WriteMessage(websocket.TextMessage, []byte("wait"))
		c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(code, "bye from client"))
		select {
		case got := <-gotClose:
			want := (&websocket.CloseError{Code: code, Text: "bye from client"}).Error()
			if got != want {
				t.Errorf("backend got %q, want %q", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("code %d: backend saw no close", code)
		}
		c.Close()
	}

	c, _ := dialWS(t, p.addr, "/", nil)
	c.WriteMessage(websocket.TextMessage, []byte("close me"))
	_, _, err := c.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 4001 || ce.Text != "bye from backend" {
		t.Errorf("client got %v, want close 4001 %q", err, "bye from backend")
	}
}

// silentBackend accepts connections and never answers.
func silentBackend(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var conns []net.Conn
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				for _, c := range conns {
					c.Close()
				}
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}
