package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/wsgate/wsgate/internal/testnet"
	"github.com/wsgate/wsgate/routes"
	"github.com/wsgate/wsgate/upstream"
)

// startBackend serves h on 127.0.0.1:0 until the test ends and returns
// its address.
func startBackend(t testing.TB, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		srv.Close()
	})
	return ln.Addr().String()
}

// testProxy is a wsgate handler serving on 127.0.0.1:0.
type testProxy struct {
	h    *Handler
	addr string
	logs *syncBuffer
	sets map[string]*upstream.Set // by upstream name
}

// set returns the live set of up.
func (p *testProxy) set(up *upstream.Config) *upstream.Set { return p.sets[up.Name] }

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testUpstreams holds every upstream testUpstream made, by name, for
// startProxyWith to build its sets from.
var (
	testUpstreams   sync.Map // name → *upstream.Config
	testUpstreamSeq atomic.Int64
)

// testUpstream returns an upstream of plain http targets with a name of
// its own; startProxyWith builds and starts its set.
func testUpstream(addrs ...string) *upstream.Config {
	up := &upstream.Config{
		Name:            fmt.Sprintf("test%d", testUpstreamSeq.Add(1)),
		ConnectTimeout:  2 * time.Second,
		ResponseTimeout: 5 * time.Second,
		Retries:         2,
		TryTimeout:      10 * time.Second,
		RetryBodyLimit:  64 << 10,
	}
	for _, a := range addrs {
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			panic(err)
		}
		up.Targets = append(up.Targets, upstream.TargetConfig{Scheme: "http", Host: host, Port: port, Weight: 1})
	}
	testUpstreams.Store(up.Name, up)
	return up
}

// wsRoute returns a catch-all route to up with WebSocket enabled.
func wsRoute(up *upstream.Config) *routes.Route {
	return &routes.Route{
		Name:           "test",
		PathPrefix:     "/",
		Upstream:       &routes.Upstream{Name: up.Name},
		MaxRequestBody: 1 << 30,
		WebSocket: routes.WebSocket{
			Enabled:          true,
			HandshakeTimeout: 2 * time.Second,
			IdleTimeout:      time.Hour,
		},
	}
}

// startProxy serves the given routes on 127.0.0.1:0 until the test ends,
// with default options and the access log on.
func startProxy(t testing.TB, rs ...*routes.Route) *testProxy {
	t.Helper()
	return startProxyWith(t, proxySetup{}, rs...)
}

// echoWS is a net/http WebSocket backend that echoes every message with
// its type; it picks the subprotocol "chat.v2" when offered.
func echoWS(t testing.TB) http.Handler {
	up := websocket.Upgrader{Subprotocols: []string{"chat.v2"}, CheckOrigin: func(*http.Request) bool { return true }}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, http.Header{"Set-Cookie": {"a=1", "b=2"}})
		if err != nil {
			return
		}
		defer c.Close()
		for {
			mt, rd, err := c.NextReader()
			if err != nil {
				return
			}
			wr, err := c.NextWriter(mt)
			if err != nil {
				return
			}
			if _, err := io.Copy(wr, rd); err != nil {
				return
			}
			if err := wr.Close(); err != nil {
				return
			}
		}
	})
}

// dialWS opens a WebSocket to the proxy.
func dialWS(t testing.TB, addr, path string, hdr http.Header) (*websocket.Conn, *http.Response) {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	c, resp, err := d.Dial("ws://"+addr+path, hdr)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s%s: %v (status %d)", addr, path, err, status)
	}
	t.Cleanup(func() { c.Close() })
	return c, resp
}

// rawExchange writes a raw request to addr and reads n responses. Each
// response's body is read into resp.Body's place (readBody). The
// connection is returned for further checks and closed at cleanup.
func rawExchange(t testing.TB, addr, req string, n int) ([]*http.Response, []string, net.Conn) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	var resps []*http.Response
	var bodies []string
	for range n {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("read response %d: %v", len(resps)+1, err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("read body %d: %v", len(resps)+1, err)
		}
		resps = append(resps, resp)
		bodies = append(bodies, string(b))
	}
	return resps, bodies, &bufConn{Conn: c, r: br}
}

// bufConn reads through the bufio.Reader that parsed the responses.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// rawStatus sends one raw request and returns the response status code.
func rawStatus(t testing.TB, addr, req string) (*http.Response, string) {
	t.Helper()
	resps, bodies, _ := rawExchange(t, addr, req, 1)
	return resps[0], bodies[0]
}

// closedAfter reports whether the server closes c (EOF) without sending
// anything more.
func closedAfter(t testing.TB, c net.Conn) bool {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	n, err := c.Read(b[:])
	return n == 0 && err == io.EOF
}

// proxySetup adjusts a test proxy: Server sizes the front-end server and
// Options is passed to New (Routes, Logger and AccessLog are filled in;
// NoAccessLog turns the access log off, for benchmarks).
type proxySetup struct {
	Server      ServerOptions
	Options     Options
	NoAccessLog bool
	// Listener, when set, wraps the proxy's listener (TLS, …).
	Listener func(net.Listener) net.Listener
}

// slowCloses gives the proxy a close-handshake budget of a minute
// (closeWait is 5s) and hangGuard is well under it: a test that sees a
// connection end, or a close frame, within hangGuard knows that the path
// under test did it, not the budget's cut — without timing anything.
func slowCloses() proxySetup { return proxySetup{Options: Options{closeWait: time.Minute}} }

// hangGuard bounds waits for what must happen at once, in tests that
// start their proxy with slowCloses.
const hangGuard = 20 * time.Second

// startProxyWith is startProxy with server and handler options.
func startProxyWith(t testing.TB, s proxySetup, rs ...*routes.Route) *testProxy {
	t.Helper()
	table, err := routes.New(rs)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	o := s.Options
	o.Routes = table
	o.AccessLog = !s.NoAccessLog
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(logs, nil))
	}
	var sets []*upstream.Set
	seen := map[string]bool{}
	for _, r := range rs {
		if r.Upstream == nil || seen[r.Upstream.Name] {
			continue
		}
		seen[r.Upstream.Name] = true
		cfg, ok := testUpstreams.Load(r.Upstream.Name)
		if !ok {
			t.Fatalf("route %q: upstream %q was not made by testUpstream", r.Name, r.Upstream.Name)
		}
		set := upstream.New(cfg.(*upstream.Config), upstream.Options{Logger: o.Logger})
		set.Start()
		sets = append(sets, set)
	}
	o.Upstreams = sets
	h := New(o)
	srv := NewServer(h, s.Server)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if s.Listener != nil {
		ln = s.Listener(ln)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.ShutdownWithContext(ctx)
		_, _ = h.Drain(ctx, 0)
		<-done
		for _, set := range sets {
			set.Close()
		}
		if t.Failed() {
			t.Logf("proxy logs:\n%s", logs.String())
		}
	})
	tp := &testProxy{h: h, addr: ln.Addr().String(), logs: logs, sets: map[string]*upstream.Set{}}
	for _, set := range sets {
		tp.sets[set.Name()] = set
	}
	return tp
}

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	accepted atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

// startCountingBackend is startBackend that also returns the number of
// connections the backend has accepted so far.
func startCountingBackend(t testing.TB, h http.Handler) (string, *atomic.Int64) {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &countingListener{Listener: inner}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		srv.Close()
	})
	return ln.Addr().String(), &ln.accepted
}

// startTCPBackend accepts TCP connections on 127.0.0.1:0 and runs serve on
// each in its own goroutine, leaving the whole exchange to it; it returns
// the address and the number of connections accepted so far. At cleanup
// it closes the listener and every connection and waits for the serve
// goroutines.
func startTCPBackend(t testing.TB, serve func(net.Conn)) (string, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		accepted atomic.Int64
		wg       sync.WaitGroup
		mu       sync.Mutex
		conns    []net.Conn
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
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
	return ln.Addr().String(), &accepted
}

// readRequestHead reads a request head (up to the blank line) from br.
func readRequestHead(br *bufio.Reader) (string, error) {
	var head strings.Builder
	for range 200 {
		line, err := br.ReadString('\n')
		head.WriteString(line)
		if err != nil {
			return head.String(), err
		}
		if line == "\r\n" || line == "\n" {
			return head.String(), nil
		}
	}
	return head.String(), errors.New("request head has too many lines")
}

// closedOrReset reports whether the server ends c without sending
// anything more: with a FIN, or with a reset when it closes while request
// bytes it never read are still queued.
func closedOrReset(t testing.TB, c net.Conn) bool {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	n, err := c.Read(b[:])
	return n == 0 && (err == io.EOF || errors.Is(err, syscall.ECONNRESET))
}

// drainErr drains h with every close at once and returns Drain's error.
func drainErr(h *Handler, ctx context.Context) error {
	_, err := h.Drain(ctx, 0)
	return err
}

// Shared with the other packages' tests.
var waitFor = testnet.WaitFor
