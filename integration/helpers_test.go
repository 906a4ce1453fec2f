package integration

import (
	"bufio"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// ioTimeout bounds every single read or write a test waits for.
const ioTimeout = 10 * time.Second

// startBackend serves h on 127.0.0.1:0 until the test ends and returns
// its address. Hijacked connections (WebSockets) are closed in cleanup.
func startBackend(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: ioTimeout}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		_ = srv.Close()
		<-served
	})
	return ln.Addr().String()
}

// echoReply is what echoHandler answers: the request as the backend saw it.
type echoReply struct {
	Method     string
	Path       string
	RawQuery   string
	Host       string
	Header     http.Header
	BodyLen    int
	BodySHA256 string
	Remote     string
}

// echoHandler answers every request with an echoReply in JSON. Its
// response also carries hop-by-hop headers that a proxy must remove:
// Connection names X-Resp-Hop, and Keep-Alive.
func echoHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		sum := sha256.Sum256(body)
		reply := echoReply{
			Method:     r.Method,
			Path:       r.URL.Path,
			RawQuery:   r.URL.RawQuery,
			Host:       r.Host,
			Header:     r.Header,
			BodyLen:    len(body),
			BodySHA256: hex.EncodeToString(sum[:]),
			Remote:     r.RemoteAddr,
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Connection", "X-Resp-Hop")
		w.Header().Set("X-Resp-Hop", "must not reach the client")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("X-Backend", "echo")
		_ = json.NewEncoder(w).Encode(reply)
	})
}

// wsBackend is a WebSocket backend that echoes every message with its
// type (and answers plain HTTP like echoHandler). It records the close
// frames it receives, by request path.
type wsBackend struct {
	up websocket.Upgrader
	wg sync.WaitGroup
	// onMessage, when set, handles each message instead of echoing it;
	// it returns false to stop reading. Set it before start.
	onMessage func(path string, c *websocket.Conn, mt int, p []byte) bool

	mu      sync.Mutex
	conns   map[*websocket.Conn]bool // guarded by mu
	closes  []closeEvent             // guarded by mu
	changed chan struct{}            // guarded by mu: closed on every new close event
}

type closeEvent struct {
	path string
	err  *websocket.CloseError
}

// newWSBackend returns a backend that accepts the given subprotocols: it
// picks the first one the client offered that is in this list.
func newWSBackend(subprotocols ...string) *wsBackend {
	return &wsBackend{
		up: websocket.Upgrader{
			Subprotocols:      subprotocols,
			CheckOrigin:       func(*http.Request) bool { return true },
			EnableCompression: true,
		},
		conns:   map[*websocket.Conn]bool{},
		changed: make(chan struct{}),
	}
}

// start serves the backend on 127.0.0.1:0 and returns its address; in
// cleanup it closes every connection left and waits for the handlers.
func (b *wsBackend) start(t *testing.T) string {
	addr := startBackend(t, b)
	t.Cleanup(func() {
		b.mu.Lock()
		for c := range b.conns {
			_ = c.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return addr
}

func (b *wsBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !websocket.IsWebSocketUpgrade(r) {
		echoHandler().ServeHTTP(w, r)
		return
	}
	b.wg.Add(1)
	defer b.wg.Done()
	c, err := b.up.Upgrade(w, r, nil)
	if err != nil {
		return // Upgrade answered with an error status
	}
	b.mu.Lock()
	b.conns[c] = true
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.conns, c)
		b.mu.Unlock()
		_ = c.Close()
	}()
	for {
		mt, p, err := c.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				b.mu.Lock()
				b.closes = append(b.closes, closeEvent{r.URL.Path, ce})
				close(b.changed)
				b.changed = make(chan struct{})
				b.mu.Unlock()
			}
			return
		}
		if b.onMessage != nil {
			if !b.onMessage(r.URL.Path, c, mt, p) {
				return
			}
			continue
		}
		if err := c.WriteMessage(mt, p); err != nil {
			return
		}
	}
}

// nextClose removes and returns the first close frame received on a
// connection for path, waiting up to ioTimeout for one.
func (b *wsBackend) nextClose(t *testing.T, path string) *websocket.CloseError {
	t.Helper()
	return b.waitClose(t, path, ioTimeout)
}

// waitClose is nextClose with a chosen timeout.
func (b *wsBackend) waitClose(t *testing.T, path string, timeout time.Duration) *websocket.CloseError {
	t.Helper()
	deadline := time.After(timeout)
	for {
		b.mu.Lock()
		for i, e := range b.closes {
			if e.path == path {
				b.closes = append(b.closes[:i], b.closes[i+1:]...)
				b.mu.Unlock()
				return e.err
			}
		}
		changed := b.changed
		b.mu.Unlock()
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("backend received no close frame on %s within %v", path, timeout)
			return nil
		}
	}
}

// startRawBackend accepts connections on 127.0.0.1:0 and runs serve on
// each in its own goroutine. Cleanup closes the listener and every
// connection, then waits for the goroutines.
func startRawBackend(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				serve(c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// rawConn is a client connection for hand-made requests and frames.
type rawConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

func (r *rawConn) write(s string) {
	r.t.Helper()
	_ = r.c.SetWriteDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(r.c, s); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

// readResponse reads one response with its whole body.
func (r *rawConn) readResponse(method string) (*http.Response, string) {
	r.t.Helper()
	_ = r.c.SetReadDeadline(time.Now().Add(ioTimeout))
	resp, err := http.ReadResponse(r.br, &http.Request{Method: method})
	if err != nil {
		r.t.Fatalf("read response: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		r.t.Fatalf("read response body: %v", err)
	}
	resp.Body.Close()
	return resp, string(body)
}

// expectEOF checks that the server closes the connection: the next read
// ends without data within ioTimeout.
func (r *rawConn) expectEOF() {
	r.t.Helper()
	_ = r.c.SetReadDeadline(time.Now().Add(ioTimeout))
	b, err := r.br.ReadByte()
	switch {
	case err == nil:
		rest, _ := r.br.Peek(r.br.Buffered())
		r.t.Fatalf("connection still open: read %q", append([]byte{b}, rest...))
	case isTimeoutErr(err):
		r.t.Fatal("connection still open after 10s")
	}
	// io.EOF or a reset: closed.
}

func isTimeoutErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// wsHandshake writes a valid client opening handshake for path and
// returns the status line and headers of the answer.
func (r *rawConn) wsHandshake(host, path string) *http.Response {
	r.t.Helper()
	r.write("GET " + path + " HTTP/1.1\r\n" +
		"Host: " + host + "\r\n" +
		"Upgrade: websocket\r\n" +
		"Connection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
		"Sec-WebSocket-Version: 13\r\n\r\n")
	_ = r.c.SetReadDeadline(time.Now().Add(ioTimeout))
	resp, err := http.ReadResponse(r.br, &http.Request{Method: "GET"})
	if err != nil {
		r.t.Fatalf("read handshake response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		r.t.Fatalf("handshake status %d, want 101", resp.StatusCode)
	}
	if got, want := resp.Header.Get("Sec-WebSocket-Accept"), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="; got != want {
		r.t.Fatalf("Sec-WebSocket-Accept = %q, want %q", got, want)
	}
	return resp
}

// frame is a WebSocket frame read off a raw connection.
type frame struct {
	fin     bool
	opcode  byte
	payload []byte
}

// readFrame reads one unmasked (server-to-client) frame.
func (r *rawConn) readFrame() frame {
	r.t.Helper()
	_ = r.c.SetReadDeadline(time.Now().Add(ioTimeout))
	var h [2]byte
	if _, err := io.ReadFull(r.br, h[:]); err != nil {
		r.t.Fatalf("read frame header: %v", err)
	}
	if h[1]&0x80 != 0 {
		r.t.Fatal("server frame is masked")
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(r.br, b[:]); err != nil {
			r.t.Fatal(err)
		}
		n = uint64(b[0])<<8 | uint64(b[1])
	case 127:
		r.t.Fatal("unexpected 64-bit frame length")
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r.br, p); err != nil {
		r.t.Fatalf("read frame payload: %v", err)
	}
	return frame{fin: h[0]&0x80 != 0, opcode: h[0] & 0x0f, payload: p}
}

// closeCode returns the code and reason of a close frame's payload.
func (f frame) closeCode() (int, string) {
	if f.opcode != 0x8 || len(f.payload) < 2 {
		return 0, ""
	}
	return int(f.payload[0])<<8 | int(f.payload[1]), string(f.payload[2:])
}

// dialWS opens a WebSocket through wsgate to ws://addr+path.
func dialWS(t *testing.T, d *websocket.Dialer, url string, hdr http.Header) *websocket.Conn {
	t.Helper()
	if d == nil {
		d = &websocket.Dialer{HandshakeTimeout: ioTimeout}
	}
	c, resp, err := d.Dial(url, hdr)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (status %d)", url, err, status)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// echoOnce sends msg and checks that the same message comes back.
func echoOnce(t *testing.T, c *websocket.Conn, mt int, msg []byte) {
	t.Helper()
	_ = c.SetWriteDeadline(time.Now().Add(ioTimeout))
	if err := c.WriteMessage(mt, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(ioTimeout))
	gotType, got, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if gotType != mt || string(got) != string(msg) {
		t.Fatalf("echo = type %d, %d bytes %.40q; want type %d, %d bytes %.40q", gotType, len(got), got, mt, len(msg), msg)
	}
}

// readClose reads until the peer's close frame and returns it; any other
// error (EOF without a close frame, timeout) fails the test.
func readClose(t *testing.T, c *websocket.Conn) *websocket.CloseError {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(ioTimeout))
	for {
		_, _, err := c.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("read: %v, want a close frame", err)
		}
		return ce
	}
}

// getJSON decodes an echoReply from a response body.
func decodeEcho(t *testing.T, body string) echoReply {
	t.Helper()
	var r echoReply
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("decode backend reply: %v\n%s", err, body)
	}
	return r
}

// yamlQuote quotes s as a YAML double-quoted scalar.
func yamlQuote(s string) string {
	b, _ := json.Marshal(s) // JSON strings are valid YAML double-quoted scalars
	return string(b)
}

// httpClient returns a client with timeouts for plain HTTP tests.
func httpClient() *http.Client {
	return &http.Client{
		Timeout: ioTimeout,
		Transport: &http.Transport{
			DisableCompression: true,
			Proxy:              nil,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func get(t *testing.T, c *http.Client, url string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", url, err)
	}
	return resp, string(body)
}

// lines splits s into non-empty lines.
func lines(s string) []string {
	var out []string
	for l := range strings.SplitSeq(s, "\n") {
		if l = strings.TrimRight(l, "\r"); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// wsAccept is the Sec-WebSocket-Accept for key (RFC 6455 §4.2.2).
func wsAccept(key string) string {
	h := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(h[:])
}
