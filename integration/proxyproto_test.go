package integration

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/pires/go-proxyproto"
)

// listeners[].proxy_protocol (docs/config.md) through the real binary:
// raw clients that write their own PROXY v1 and v2 headers, and HAProxy's
// send-proxy and send-proxy-v2 in front of wsgate.

// ppConfig is a gateway whose listener takes PROXY headers from
// 127.0.0.1 only. Route rl allows each client address 2 requests (then
// one per 100 s), route ws one session per client address, and every
// other path goes to backend.
func ppConfig(backend string) string {
	return fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
    proxy_protocol: true
trusted_proxies: [127.0.0.1]
upstreams:
  be: {targets: ["http://%s"]}
routes:
  - name: rl
    match: {path_prefix: /rl}
    upstream: be
    limits: {requests_per_second_per_ip: 0.01, burst: 2}
  - name: ws
    match: {path_prefix: /ws}
    upstream: be
    websocket: {max_sessions_per_ip: 1}
  - name: echo
    match: {path_prefix: /}
    upstream: be
admin: {addr: 127.0.0.1:0, token: "${%s}"}
`, backend, admTokenEnv)
}

// ppHeader returns a PROXY header of version 1 or 2 (PROXY command, TCP)
// from src to dst.
func ppHeader(t *testing.T, version byte, src, dst string) string {
	t.Helper()
	h := proxyproto.HeaderProxyFromAddrs(version,
		net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src)),
		net.TCPAddrFromAddrPort(netip.MustParseAddrPort(dst)))
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// ppLocalHeader returns a v2 LOCAL header: a load balancer's own
// connection (a health check).
func ppLocalHeader(t *testing.T) string {
	t.Helper()
	h := &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// ppDialFrom connects to addr from the loopback address local (Linux
// routes all of 127.0.0.0/8 to lo).
func ppDialFrom(t *testing.T, local, addr string) *rawConn {
	t.Helper()
	d := net.Dialer{Timeout: ioTimeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		if runtime.GOOS != "linux" {
			t.Skipf("dial %s from %s: %v (only Linux routes all of 127.0.0.0/8 to lo)", addr, local, err)
		}
		t.Fatalf("dial %s from %s: %v", addr, local, err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

// ppGet writes prefix and a GET of path in one write and returns the
// answer and the backend's echoReply (when the status is 200).
func ppGet(t *testing.T, rc *rawConn, prefix, path string, hdr ...string) (*http.Response, echoReply) {
	t.Helper()
	rc.write(prefix + "GET " + path + " HTTP/1.1\r\nHost: pp.test\r\n" + strings.Join(hdr, "") + "\r\n")
	resp, body := rc.readResponse(http.MethodGet)
	var got echoReply
	if resp.StatusCode == http.StatusOK {
		got = decodeEcho(t, body)
	}
	return resp, got
}

// ppUpgrade writes prefix, a WebSocket handshake for path and then extra
// (frames) in one write, and returns the answer; the body of one that
// is not a 101 is read.
func ppUpgrade(t *testing.T, rc *rawConn, prefix, path, extra string) *http.Response {
	t.Helper()
	rc.write(prefix + "GET " + path + " HTTP/1.1\r\n" +
		"Host: pp.test\r\n" +
		"Upgrade: websocket\r\n" +
		"Connection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
		"Sec-WebSocket-Version: 13\r\n\r\n" + extra)
	_ = rc.c.SetReadDeadline(time.Now().Add(ioTimeout))
	resp, err := http.ReadResponse(rc.br, &http.Request{Method: http.MethodGet})
	if err != nil {
		t.Fatalf("read handshake response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return resp
}

// ppMasked returns a masked client frame (FIN set) with a payload
// shorter than 126 bytes.
func ppMasked(opcode byte, payload string) string {
	key := [4]byte{0x1f, 0x2e, 0x3d, 0x4c}
	b := []byte{0x80 | opcode, 0x80 | byte(len(payload)), key[0], key[1], key[2], key[3]}
	for i := range len(payload) {
		b = append(b, payload[i]^key[i%4])
	}
	return string(b)
}

// ppAccessLog waits for the access log line of uri and returns its
// client field.
func ppAccessLog(g *gw, uri string) string {
	g.t.Helper()
	e := g.waitLog(ioTimeout, "request "+uri, func(e map[string]any) bool {
		return e["msg"] == "request" && e["uri"] == uri
	})
	client, _ := e["client"].(string)
	return client
}

// ppParked waits until wsgate_websocket_parked_legs is n. The poller is
// Linux's (internal/netpoll): elsewhere no leg parks.
func ppParked(t *testing.T, a *admAPI, n float64, what string) {
	t.Helper()
	if runtime.GOOS != "linux" {
		return
	}
	metWait(t, a, what, metWant{"wsgate_websocket_parked_legs", nil, n})
}

// TestProxyProtocolHeaders: raw clients write their own PROXY headers.
// From the trusted 127.0.0.1, a v1 or v2 header's source is the client
// for the whole connection (every request on it): in the access log's
// client, and in X-Forwarded-For at the backend, where the client's own
// X-Forwarded-For is dropped (the header's source is not a trusted
// proxy); a LOCAL header or none leaves the peer's address. From
// 127.0.0.2, which is not trusted, a header closes the connection, while
// a request without one is served; a malformed header closes it too.
// Peers that connect and send nothing hold up no one else.
// Bytes sent with the header in one write (a handshake and a first
// frame) are relayed, and the session's legs still park in the poller.
// Per-address limits key on the header's source: two addresses behind
// the same peer each get their own request budget and session cap.
func TestProxyProtocolHeaders(t *testing.T) {
	needBinary(t)
	_, beAddr := startRecBackend(t)
	g, _, a := admStart(t, ppConfig(beAddr))
	dst := g.Addr

	t.Run("v1", func(t *testing.T) {
		rc := dialRaw(t, g.Addr)
		hdr := ppHeader(t, 1, "203.0.113.7:41000", dst)
		resp, got := ppGet(t, rc, hdr, "/echo/v1", "X-Forwarded-For: 198.51.100.99\r\n")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d, want 200", resp.StatusCode)
		}
		if xff := got.Header.Get("X-Forwarded-For"); xff != "203.0.113.7" {
			t.Errorf("backend X-Forwarded-For %q, want the header's source 203.0.113.7 only", xff)
		}
		if c := ppAccessLog(g, "/echo/v1"); c != "203.0.113.7:41000" {
			t.Errorf("access log client %q, want 203.0.113.7:41000", c)
		}
		// The next request on the connection: the same client.
		resp, got = ppGet(t, rc, "", "/echo/v1-again")
		if resp.StatusCode != http.StatusOK || got.Header.Get("X-Forwarded-For") != "203.0.113.7" {
			t.Errorf("second request: status %d, X-Forwarded-For %q; want 200 and 203.0.113.7", resp.StatusCode, got.Header.Get("X-Forwarded-For"))
		}
		if c := ppAccessLog(g, "/echo/v1-again"); c != "203.0.113.7:41000" {
			t.Errorf("second request: access log client %q, want 203.0.113.7:41000", c)
		}
	})

	t.Run("v2 IPv6", func(t *testing.T) {
		rc := dialRaw(t, g.Addr)
		resp, got := ppGet(t, rc, ppHeader(t, 2, "[2001:db8::7]:5000", "[2001:db8::1]:443"), "/echo/v2")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d, want 200", resp.StatusCode)
		}
		if xff := got.Header.Get("X-Forwarded-For"); xff != "2001:db8::7" {
			t.Errorf("backend X-Forwarded-For %q, want 2001:db8::7", xff)
		}
		if c := ppAccessLog(g, "/echo/v2"); c != "[2001:db8::7]:5000" {
			t.Errorf("access log client %q, want [2001:db8::7]:5000", c)
		}
	})

	for _, tc := range []struct{ name, prefix, path string }{
		{"v2 LOCAL", ppLocalHeader(t), "/echo/local"},
		{"no header", "", "/echo/none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := dialRaw(t, g.Addr)
			resp, got := ppGet(t, rc, tc.prefix, tc.path)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d, want 200", resp.StatusCode)
			}
			if xff := got.Header.Get("X-Forwarded-For"); xff != "127.0.0.1" {
				t.Errorf("backend X-Forwarded-For %q, want the peer's 127.0.0.1", xff)
			}
			if c, want := ppAccessLog(g, tc.path), rc.c.LocalAddr().String(); c != want {
				t.Errorf("access log client %q, want the peer %s", c, want)
			}
		})
	}

	t.Run("untrusted peer", func(t *testing.T) {
		rc := ppDialFrom(t, "127.0.0.2", g.Addr)
		peer := rc.c.LocalAddr().String()
		rc.write(ppHeader(t, 1, "203.0.113.8:1234", dst) + "GET /echo/untrusted HTTP/1.1\r\nHost: pp.test\r\n\r\n")
		rc.expectEOF()
		g.waitLog(ioTimeout, "connection refused for "+peer, func(e map[string]any) bool {
			err, _ := e["error"].(string)
			return e["msg"] == "connection refused" && e["peer"] == peer && strings.Contains(err, "untrusted")
		})
		if n := strings.Count(g.logs.String(), "/echo/untrusted"); n != 0 {
			t.Errorf("the request after the refused header was logged %d times, want never", n)
		}
		// Without a header the same peer is served, as itself.
		rc = ppDialFrom(t, "127.0.0.2", g.Addr)
		resp, got := ppGet(t, rc, "", "/echo/untrusted-plain")
		if resp.StatusCode != http.StatusOK || got.Header.Get("X-Forwarded-For") != "127.0.0.2" {
			t.Errorf("no header from 127.0.0.2: status %d, X-Forwarded-For %q; want 200 and 127.0.0.2", resp.StatusCode, got.Header.Get("X-Forwarded-For"))
		}
	})

	t.Run("malformed header", func(t *testing.T) {
		rc := dialRaw(t, g.Addr)
		peer := rc.c.LocalAddr().String()
		rc.write("PROXY TCP4 203.0.113.9\r\nGET /echo/malformed HTTP/1.1\r\nHost: pp.test\r\n\r\n")
		rc.expectEOF()
		g.waitLog(ioTimeout, "connection refused for "+peer, func(e map[string]any) bool {
			return e["msg"] == "connection refused" && e["peer"] == peer
		})
	})

	t.Run("silent peers", func(t *testing.T) {
		// Each of these connections holds its header read for 10 s
		// (the header timeout): were headers read in the accept loop,
		// the next connection would wait 30 s, beyond ioTimeout.
		for range 3 {
			dialRaw(t, g.Addr)
		}
		rc := dialRaw(t, g.Addr)
		resp, got := ppGet(t, rc, ppHeader(t, 1, "203.0.113.10:1000", dst), "/echo/after-silent")
		if resp.StatusCode != http.StatusOK || got.Header.Get("X-Forwarded-For") != "203.0.113.10" {
			t.Errorf("status %d, X-Forwarded-For %q; want 200 and 203.0.113.10", resp.StatusCode, got.Header.Get("X-Forwarded-For"))
		}
	})

	t.Run("one write", func(t *testing.T) {
		// The header, the handshake and a first frame arrive together:
		// wsgate reads past the header and must hand every byte on.
		rc := dialRaw(t, g.Addr)
		hdr := ppHeader(t, 2, "198.51.100.20:6000", dst)
		resp := ppUpgrade(t, rc, hdr, "/ws/one", ppMasked(0x1, "first"))
		if resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("handshake status %d, want 101", resp.StatusCode)
		}
		if f := rc.readFrame(); f.opcode != 0x1 || string(f.payload) != "first" {
			t.Fatalf("echo: opcode %d %q, want text \"first\"", f.opcode, f.payload)
		}
		g.waitLog(ioTimeout, "websocket opened for 198.51.100.20:6000", func(e map[string]any) bool {
			return e["msg"] == "websocket opened" && e["client"] == "198.51.100.20:6000"
		})
		ppParked(t, a, 2, "both legs parked")
		rc.write(ppMasked(0x1, "second"))
		if f := rc.readFrame(); f.opcode != 0x1 || string(f.payload) != "second" {
			t.Fatalf("echo: opcode %d %q, want text \"second\"", f.opcode, f.payload)
		}
		rc.write(ppMasked(0x8, "\x03\xe8bye"))
		if code, reason := rc.readFrame().closeCode(); code != 1000 {
			t.Errorf("close reply %d %q, want 1000", code, reason)
		}
		ppParked(t, a, 0, "the session ended")
	})

	t.Run("request budget per header address", func(t *testing.T) {
		const addrA, addrB = "198.51.100.1:1000", "198.51.100.2:1000"
		// Two requests of A on one connection, the third on another: 429.
		rc := dialRaw(t, g.Addr)
		for i, want := range []int{http.StatusOK, http.StatusOK} {
			prefix := ""
			if i == 0 {
				prefix = ppHeader(t, 1, addrA, dst)
			}
			if resp, _ := ppGet(t, rc, prefix, "/rl/a"); resp.StatusCode != want {
				t.Fatalf("A request %d: %d, want %d", i+1, resp.StatusCode, want)
			}
		}
		rc = dialRaw(t, g.Addr)
		if resp, _ := ppGet(t, rc, ppHeader(t, 2, addrA, dst), "/rl/a"); resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("A request 3: %d, want 429", resp.StatusCode)
		}
		// B, from the same peer: a budget of its own.
		rc = dialRaw(t, g.Addr)
		for i := range 2 {
			prefix := ""
			if i == 0 {
				prefix = ppHeader(t, 1, addrB, dst)
			}
			if resp, _ := ppGet(t, rc, prefix, "/rl/b"); resp.StatusCode != http.StatusOK {
				t.Fatalf("B request %d: %d, want 200", i+1, resp.StatusCode)
			}
		}
		if resp, _ := ppGet(t, rc, "", "/rl/b"); resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("B request 3: %d, want 429", resp.StatusCode)
		}
	})

	t.Run("session cap per header address", func(t *testing.T) {
		open := func(src string) (*rawConn, int) {
			rc := dialRaw(t, g.Addr)
			return rc, ppUpgrade(t, rc, ppHeader(t, 1, src, dst), "/ws/cap", "").StatusCode
		}
		a1, st := open("198.51.100.5:2000")
		if st != http.StatusSwitchingProtocols {
			t.Fatalf("first session of 198.51.100.5: %d, want 101", st)
		}
		if _, st := open("198.51.100.5:2001"); st != http.StatusTooManyRequests {
			t.Errorf("second session of 198.51.100.5: %d, want 429", st)
		}
		b1, st := open("198.51.100.6:2000")
		if st != http.StatusSwitchingProtocols {
			t.Errorf("first session of 198.51.100.6 from the same peer: %d, want 101", st)
		}
		for _, rc := range []*rawConn{a1, b1} {
			rc.write(ppMasked(0x8, "\x03\xe8"))
			if code, _ := rc.readFrame().closeCode(); code != 1000 {
				t.Errorf("close reply %d, want 1000", code)
			}
		}
	})

	metWait(t, a, "the refusals counted",
		metWant{"wsgate_http_rate_limited_total", metLabels("route", "rl"), 2},
		metWant{"wsgate_websocket_handshake_refusals_total", metLabels("route", "ws", "status", "429"), 1},
	)
}

// needHAProxy returns the haproxy binary, or skips the test (fails it
// under WSGATE_REQUIRE_PEERS).
func needHAProxy(t *testing.T) string {
	t.Helper()
	needBinary(t)
	path, err := exec.LookPath("haproxy")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/haproxy"); serr != nil {
			skipMissingPeer(t, "haproxy is not installed (apt-get install haproxy)")
		}
		path = "/usr/sbin/haproxy"
	}
	out, err := exec.Command(path, "-v").CombinedOutput()
	if err != nil {
		t.Fatalf("%s -v: %v\n%s", path, err, out)
	}
	t.Logf("%s", strings.SplitN(string(out), "\n", 2)[0])
	return path
}

// startHAProxy runs HAProxy in TCP mode with one frontend per backend
// line: frontend i listens on the i-th returned address and forwards to
// server line backends[i] (such as "127.0.0.1:8080 send-proxy"). The
// listening sockets are made here and inherited (bind fd@N), so they
// exist before HAProxy starts and no port is guessed.
func startHAProxy(t *testing.T, bin string, backends ...string) []string {
	t.Helper()
	var (
		addrs []string
		files []*os.File
		cfg   strings.Builder
	)
	cfg.WriteString(`global
    maxconn 200
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
`)
	for i, be := range backends {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		f, err := ln.(*net.TCPListener).File()
		ln.Close() // f keeps the socket, listening
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, ln.Addr().String())
		files = append(files, f)
		// ExtraFiles[i] is descriptor 3+i in HAProxy.
		fmt.Fprintf(&cfg, "frontend fe%d\n    bind fd@%d\n    default_backend be%d\nbackend be%d\n    server s%d %s\n", i, 3+i, i, i, i, be)
	}
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	writeFile(t, path, []byte(cfg.String()))
	check := exec.Command(bin, "-c", "-f", path)
	check.ExtraFiles = files
	if out, err := check.CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s\n%s", err, out, cfg.String())
	}
	cmd := exec.Command(bin, "-db", "-f", path)
	cmd.ExtraFiles = files
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		f.Close() // HAProxy has its own copies
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(stopTimeout):
			_ = cmd.Process.Kill()
			<-exited
			t.Errorf("haproxy did not exit within %v of SIGTERM; killed", stopTimeout)
		}
		if t.Failed() {
			t.Logf("haproxy config:\n%s\nhaproxy output:\n%s", cfg.String(), stderr.String())
		}
	})
	return addrs
}

// TestProxyProtocolHAProxy: HAProxy in TCP mode in front of wsgate, with
// send-proxy (v1) and send-proxy-v2, and clients connecting to HAProxy
// from 127.0.0.3 (HAProxy itself connects from 127.0.0.1, the trusted
// proxy): a request reaches the backend with X-Forwarded-For 127.0.0.3
// and is logged with the client's own address and port; a WebSocket
// session through send-proxy-v2 relays both ways, is logged with the
// client's address, and once idle both its legs park in the poller
// (wsgate_websocket_parked_legs 2), and relay again from there.
func TestProxyProtocolHAProxy(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("clients connect from 127.0.0.3: only Linux routes all of 127.0.0.0/8 to lo")
	}
	bin := needHAProxy(t)
	be, beAddr := startRecBackend(t)
	g, _, a := admStart(t, ppConfig(beAddr))
	hp := startHAProxy(t, bin, g.Addr+" send-proxy", g.Addr+" send-proxy-v2")

	for i, fe := range hp {
		name := []string{"send-proxy", "send-proxy-v2"}[i]
		t.Run(name+" HTTP", func(t *testing.T) {
			rc := ppDialFrom(t, "127.0.0.3", fe)
			path := "/echo/haproxy-" + name
			resp, got := ppGet(t, rc, "", path)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET %s through HAProxy: %d, want 200", path, resp.StatusCode)
			}
			if xff := got.Header.Get("X-Forwarded-For"); xff != "127.0.0.3" {
				t.Errorf("backend X-Forwarded-For %q, want the client's 127.0.0.3", xff)
			}
			if c, want := ppAccessLog(g, path), rc.c.LocalAddr().String(); c != want {
				t.Errorf("access log client %q, want the client's %s", c, want)
			}
		})
	}

	t.Run("send-proxy-v2 WebSocket", func(t *testing.T) {
		d := &websocket.Dialer{
			HandshakeTimeout: ioTimeout,
			NetDialContext:   (&net.Dialer{Timeout: ioTimeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}}).DialContext,
		}
		c := dialWS(t, d, "ws://"+hp[1]+"/echo/haproxy-ws", nil)
		local := c.LocalAddr().String()
		echoOnce(t, c, websocket.TextMessage, []byte("through haproxy"))
		if xff := be.last(t).Header.Get("X-Forwarded-For"); xff != "127.0.0.3" {
			t.Errorf("backend handshake X-Forwarded-For %q, want 127.0.0.3", xff)
		}
		g.waitLog(ioTimeout, "websocket opened for "+local, func(e map[string]any) bool {
			return e["msg"] == "websocket opened" && e["client"] == local
		})
		ppParked(t, a, 2, "both legs of the session through HAProxy parked")
		for _, msg := range []string{"from the poller", strings.Repeat("x", 5000)} {
			echoOnce(t, c, websocket.TextMessage, []byte(msg))
		}
		ppParked(t, a, 2, "both legs parked again")
		if err := c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "done"), time.Now().Add(ioTimeout)); err != nil {
			t.Fatal(err)
		}
		if ce := readClose(t, c); ce.Code != websocket.CloseNormalClosure {
			t.Errorf("close reply %d %q, want 1000", ce.Code, ce.Text)
		}
		ppParked(t, a, 0, "the session ended")
	})
}
