package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// startBackend serves the backend on 127.0.0.1:0 until the test ends and
// returns its address.
func startBackend(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return ln.Addr().String()
}

// client ignores HTTP_PROXY and friends: everything is on 127.0.0.1.
var client = &http.Client{Transport: &http.Transport{}, Timeout: 5 * time.Second}

func get(t *testing.T, url string) (*http.Response, []byte) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", url, err)
	}
	return resp, body
}

func TestSmallAndHealthz(t *testing.T) {
	addr := startBackend(t)
	resp, body := get(t, "http://"+addr+"/small")
	if resp.StatusCode != 200 || string(body) != "hello, world\n" || len(body) != 13 {
		t.Errorf("GET /small = %d %q, want 200 %q", resp.StatusCode, body, "hello, world\n")
	}
	if resp.ContentLength != 13 || resp.Header.Get("Content-Type") != "text/plain" || resp.Proto != "HTTP/1.1" {
		t.Errorf("GET /small: Content-Length %d, Content-Type %q, %s; want 13, text/plain, HTTP/1.1",
			resp.ContentLength, resp.Header.Get("Content-Type"), resp.Proto)
	}
	if resp, _ := get(t, "http://"+addr+"/healthz"); resp.StatusCode != 200 {
		t.Errorf("GET /healthz = %d, want 200", resp.StatusCode)
	}
}

func TestBytes(t *testing.T) {
	addr := startBackend(t)
	for _, n := range []int{0, 1, 1000, 3*len(pattern) + 7} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			resp, body := get(t, fmt.Sprintf("http://%s/bytes/%d", addr, n))
			if resp.StatusCode != 200 || len(body) != n || resp.ContentLength != int64(n) {
				t.Fatalf("GET /bytes/%d = %d, %d bytes, Content-Length %d", n, resp.StatusCode, len(body), resp.ContentLength)
			}
			for i := range body {
				if body[i] != pattern[i%64] {
					t.Fatalf("GET /bytes/%d: byte %d is %q, want %q", n, i, body[i], pattern[i%64])
				}
			}
		})
	}
	for _, bad := range []string{"-1", "x", "1073741825"} {
		if resp, _ := get(t, "http://"+addr+"/bytes/"+bad); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("GET /bytes/%s = %d, want 400", bad, resp.StatusCode)
		}
	}
}

func TestEcho(t *testing.T) {
	addr := startBackend(t)
	want := make([]byte, 100_000)
	for i := range want {
		want[i] = byte(i * 7)
	}
	for _, tc := range []struct {
		name string
		body io.Reader // a bytes.Reader has a length; a bare io.Reader goes chunked
	}{
		{"content-length", bytes.NewReader(want)},
		{"chunked", struct{ io.Reader }{bytes.NewReader(want)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := client.Post("http://"+addr+"/echo", "application/octet-stream", tc.body)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			got, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != 200 || !bytes.Equal(got, want) {
				t.Errorf("POST /echo = %d, %d bytes (equal %v), want 200 and the %d bytes sent",
					resp.StatusCode, len(got), bytes.Equal(got, want), len(want))
			}
		})
	}
}

func TestSSE(t *testing.T) {
	addr := startBackend(t)
	resp, body := get(t, "http://"+addr+"/sse?n=3&interval=1ms")
	if want := "data: 0\n\ndata: 1\n\ndata: 2\n\n"; string(body) != want {
		t.Errorf("GET /sse?n=3 body %q, want %q", body, want)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("GET /sse: Content-Type %q, want text/event-stream", ct)
	}
	if _, body := get(t, "http://"+addr+"/sse?n=1&interval=0"); string(body) != "data: 0\n\n" {
		t.Errorf("GET /sse?n=1&interval=0 body %q", body)
	}
	for _, q := range []string{"n=-1", "interval=fast"} {
		if resp, _ := get(t, "http://"+addr+"/sse?"+q); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("GET /sse?%s = %d, want 400", q, resp.StatusCode)
		}
	}
}

func dialWS(t *testing.T, url string, subprotocols ...string) *websocket.Conn {
	t.Helper()
	d := websocket.Dialer{Subprotocols: subprotocols, HandshakeTimeout: 5 * time.Second}
	c, _, err := d.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	return c
}

func TestWebSocketEcho(t *testing.T) {
	addr := startBackend(t)
	for _, tc := range []struct{ offer, want string }{{"chat", "chat"}, {"echo", "echo"}, {"mqtt", ""}} {
		c := dialWS(t, "ws://"+addr+"/ws", tc.offer)
		if got := c.Subprotocol(); got != tc.want {
			t.Errorf("offer %q: subprotocol %q, want %q", tc.offer, got, tc.want)
		}
	}

	c := dialWS(t, "ws://"+addr+"/ws")
	big := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB, several frames
	for _, m := range []struct {
		typ  int
		data []byte
	}{{websocket.TextMessage, []byte("hi")}, {websocket.BinaryMessage, []byte{0, 1, 2}}, {websocket.BinaryMessage, big}, {websocket.TextMessage, nil}} {
		if err := c.WriteMessage(m.typ, m.data); err != nil {
			t.Fatal(err)
		}
		typ, got, err := c.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		if typ != m.typ || !bytes.Equal(got, m.data) {
			t.Errorf("echo of type %d, %d bytes = type %d, %d bytes", m.typ, len(m.data), typ, len(got))
		}
	}

	pong := make(chan string, 1)
	c.SetPongHandler(func(s string) error { pong <- s; return nil })
	if err := c.WriteControl(websocket.PingMessage, []byte("p1"), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteMessage(websocket.TextMessage, []byte("after ping")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.ReadMessage(); err != nil { // runs the pong handler on the way
		t.Fatal(err)
	}
	select {
	case s := <-pong:
		if s != "p1" {
			t.Errorf("pong %q, want %q", s, "p1")
		}
	default:
		t.Error("no pong before the echo that followed the ping")
	}

	// A client close gets its code back.
	c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"), time.Now().Add(time.Second))
	_, _, err := c.ReadMessage()
	if !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
		t.Errorf("after close 1000: %v, want close 1000", err)
	}
}

// TestRun checks the announcement, the ready file, and that a shutdown
// sends 1001 to WebSocket clients and returns nil.
func TestRun(t *testing.T) {
	ready := filepath.Join(t.TempDir(), "ready")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, config{addr: "127.0.0.1:0", readyFile: ready}, &stdout) }()

	var addr string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		b, err := os.ReadFile(ready)
		if err == nil {
			addr = strings.TrimSpace(string(b))
			break
		}
		if !errors.Is(err, os.ErrNotExist) || time.Now().After(deadline) {
			t.Fatalf("ready file: %v", err)
		}
	}
	c := dialWS(t, "ws://"+addr+"/ws")
	cancel()
	_, _, err := c.ReadMessage()
	if !websocket.IsCloseError(err, websocket.CloseGoingAway) {
		t.Errorf("on shutdown: %v, want close 1001", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	if want := "listening " + addr + "\n"; stdout.String() != want {
		t.Errorf("stdout %q, want %q", stdout.String(), want)
	}
}
