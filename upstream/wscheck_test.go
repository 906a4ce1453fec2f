package upstream

import (
	"bufio"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// wsBackend is a WebSocket server written with a library (not by us): it
// answers pings (the library's default handler), answers each text
// message as mode says, and reports what it saw.
type wsBackend struct {
	addr   string
	cert   *x509.Certificate // with TLS
	closes chan int          // the close code of each connection's end; -1 without a close frame
	msgs   chan string       // messages received
	hosts  chan string       // Host of each upgrade
}

// newWSBackend starts a backend on 127.0.0.1:0. mode "echo" answers
// "pong:"+msg, "other" answers "nope", "close" closes with 1001 "bye".
func newWSBackend(t *testing.T, mode string, useTLS bool, subprotocols ...string) *wsBackend {
	t.Helper()
	b := &wsBackend{closes: make(chan int, 16), msgs: make(chan string, 16), hosts: make(chan string, 16)}
	up := websocket.Upgrader{Subprotocols: subprotocols}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		trySend(b.hosts, r.Host)
		conn, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		for {
			_, msg, err := conn.ReadMessage()
			if err != nil {
				code := -1
				if ce, ok := errors.AsType[*websocket.CloseError](err); ok {
					code = ce.Code
				}
				trySend(b.closes, code)
				return
			}
			trySend(b.msgs, string(msg))
			switch mode {
			case "echo":
				err = conn.WriteMessage(websocket.TextMessage, append([]byte("pong:"), msg...))
			case "other":
				err = conn.WriteMessage(websocket.TextMessage, []byte("nope"))
			case "close":
				err = conn.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(1001, "bye"))
			}
			if err != nil {
				return
			}
		}
	}))
	if useTLS {
		srv.StartTLS()
		b.cert = srv.Certificate()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	b.addr = srv.Listener.Addr().String()
	return b
}

func trySend[T any](ch chan T, v T) {
	select {
	case ch <- v:
	default:
	}
}

// rawBackend is a hand-written peer for protocol edges: it reads the
// upgrade request and hands the connection to serve, which may block until
// done is closed (at the end of the test).
type rawBackend struct {
	addr string
	done chan struct{}
}

func newRawBackend(t *testing.T, serve func(c net.Conn, br *bufio.Reader, key string, done <-chan struct{})) *rawBackend {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rb := &rawBackend{addr: l.Addr().String(), done: make(chan struct{})}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				serve(c, br, req.Header.Get("Sec-WebSocket-Key"), rb.done)
			})
		}
	})
	t.Cleanup(func() {
		close(rb.done)
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return rb
}

func acceptKey(key string) string {
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(sum[:])
}

func write101(c net.Conn, accept string) error {
	_, err := io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "+accept+"\r\n\r\n")
	return err
}

// serverFrame encodes one frame as a server sends it (unmasked unless
// masked is set, which a server must not do).
func serverFrame(fin bool, op byte, p []byte, masked bool) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	f := []byte{b0}
	var m byte
	if masked {
		m = 0x80
	}
	switch n := len(p); {
	case n < 126:
		f = append(f, m|byte(n))
	case n <= 0xFFFF:
		f = append(f, m|126, byte(n>>8), byte(n))
	default:
		f = append(f, m|127)
		f = binary.BigEndian.AppendUint64(f, uint64(n))
	}
	if masked {
		f = append(f, 0, 0, 0, 0) // a zero mask: the payload reads the same
	}
	return append(f, p...)
}

// readClientFrame reads one frame from the check, which must be masked.
func readClientFrame(br *bufio.Reader) (op byte, p []byte, err error) {
	var hdr [2]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return 0, nil, err
	}
	if hdr[1]&0x80 == 0 {
		return 0, nil, errors.New("unmasked frame from the client")
	}
	n := int(hdr[1] & 0x7F)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(br, b[:]); err != nil {
			return 0, nil, err
		}
		n = int(binary.BigEndian.Uint16(b[:]))
	case 127:
		return 0, nil, errors.New("frame too large for this test")
	}
	var mask [4]byte
	if _, err := io.ReadFull(br, mask[:]); err != nil {
		return 0, nil, err
	}
	p = make([]byte, n)
	if _, err := io.ReadFull(br, p); err != nil {
		return 0, nil, err
	}
	for i := range p {
		p[i] ^= mask[i%4]
	}
	return hdr[0] & 0x0F, p, nil
}

// wsHealth returns a WebSocket-only check of /ws.
func wsHealth(w WebSocketCheck, timeout time.Duration) *Health {
	if w.Path == "" {
		w.Path = "/ws"
	}
	return &Health{Interval: 20 * time.Millisecond, Timeout: timeout, HealthyAfter: 1, UnhealthyAfter: 1, WebSocket: &w}
}

// wsCheckOnce runs one check against addr.
func wsCheckOnce(t *testing.T, addr string, h *Health, tlsConf *tls.Config) error {
	t.Helper()
	tc := localTarget(t, addr)
	if tlsConf != nil {
		tc.Scheme = "https"
	}
	s := newTestSet(t, &Config{Targets: []TargetConfig{tc}, TLS: tlsConf, ConnectTimeout: hangGuard, Health: h}, Options{})
	return checkOnce(s)
}

// recvClose returns the close code the backend saw.
func recvClose(t *testing.T, b *wsBackend) int {
	t.Helper()
	select {
	case code := <-b.closes:
		return code
	case <-time.After(hangGuard):
		t.Fatal("the backend never saw the connection end")
		return 0
	}
}

func TestWSCheckLibraryBackend(t *testing.T) {
	cases := []struct {
		name     string
		mode     string
		tls      bool
		protos   []string
		check    WebSocketCheck
		wantErr  string // a substring; "" for a pass
		wantMsg  string // what the backend must have received
		wantCode int    // the close code the backend must see; 0 to skip
	}{
		{name: "ping", mode: "echo", wantCode: 1000},
		{name: "ping over TLS", mode: "echo", tls: true, wantCode: 1000},
		{name: "send expect", mode: "echo", check: WebSocketCheck{Send: "hello", Expect: regexp.MustCompile("^pong:")}, wantMsg: "hello", wantCode: 1000},
		{name: "send any answer", mode: "other", check: WebSocketCheck{Send: "hello"}, wantMsg: "hello", wantCode: 1000},
		{name: "subprotocol chosen", mode: "echo", protos: []string{"chat.v1"}, check: WebSocketCheck{Subprotocol: "chat.v1"}, wantCode: 1000},
		{name: "subprotocol not chosen", mode: "echo", check: WebSocketCheck{Subprotocol: "chat.v1"}, wantErr: `websocket /ws: subprotocol "chat.v1" not chosen (got "")`},
		{name: "wrong answer", mode: "other", check: WebSocketCheck{Send: "hello", Expect: regexp.MustCompile("^pong:")}, wantErr: "websocket /ws: ", wantMsg: "hello"},
		{name: "closed instead", mode: "close", check: WebSocketCheck{Send: "hello"}, wantErr: `websocket /ws: closed by the target (code 1001 "bye") instead of an answer`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := newWSBackend(t, tc.mode, tc.tls, tc.protos...)
			var tlsConf *tls.Config
			if tc.tls {
				pool := x509.NewCertPool()
				pool.AddCert(b.cert)
				tlsConf = &tls.Config{RootCAs: pool}
			}
			timeout := hangGuard
			if tc.wantErr != "" {
				timeout = 300 * time.Millisecond // a failing check may wait for its timeout
			}
			err := wsCheckOnce(t, b.addr, wsHealth(tc.check, timeout), tlsConf)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("check() = %v, want a pass", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("check() = %v, want an error containing %q", err, tc.wantErr)
			}
			if tc.wantMsg != "" {
				select {
				case got := <-b.msgs:
					if got != tc.wantMsg {
						t.Errorf("backend received %q, want %q", got, tc.wantMsg)
					}
				default:
					t.Errorf("backend received no message, want %q", tc.wantMsg)
				}
			}
			if tc.wantCode != 0 {
				if code := recvClose(t, b); code != tc.wantCode {
					t.Errorf("backend saw close code %d, want %d", code, tc.wantCode)
				}
			}
		})
	}
}

// TestWSCheckWrongAnswerReason: a target that answers with a message not
// matching Expect and keeps the connection open fails the check, and the
// reason should say what it answered.
func TestWSCheckWrongAnswerReason(t *testing.T) {
	b := newWSBackend(t, "other", false)
	err := wsCheckOnce(t, b.addr, wsHealth(WebSocketCheck{Send: "hello", Expect: regexp.MustCompile("^pong:")}, 300*time.Millisecond), nil)
	if err == nil || !strings.Contains(err.Error(), `no message matching "^pong:" (last "nope")`) {
		t.Errorf("check() = %v, want the reason to quote the last answer \"nope\"", err)
	}
}

func TestWSCheckHeaders(t *testing.T) {
	b := newWSBackend(t, "echo", false)
	h := wsHealth(WebSocketCheck{}, hangGuard)
	h.Headers = []Header{{"Host", "ws.internal"}}
	if err := wsCheckOnce(t, b.addr, h, nil); err != nil {
		t.Fatalf("check() = %v, want a pass", err)
	}
	if got := <-b.hosts; got != "ws.internal" {
		t.Errorf("upgrade Host = %q, want %q", got, "ws.internal")
	}
}

func TestWSCheckRawBackend(t *testing.T) {
	type serveFunc = func(c net.Conn, br *bufio.Reader, key string, done <-chan struct{})
	// afterPing writes the 101, reads the ping and then runs then.
	afterPing := func(then func(c net.Conn, ping []byte)) serveFunc {
		return func(c net.Conn, br *bufio.Reader, key string, done <-chan struct{}) {
			if write101(c, acceptKey(key)) != nil {
				return
			}
			op, p, err := readClientFrame(br)
			if err != nil || op != opPing {
				return
			}
			then(c, p)
			<-done
		}
	}
	pong := func(c net.Conn, ping []byte) { _, _ = c.Write(serverFrame(true, opPong, ping, false)) }
	cases := []struct {
		name    string
		serve   serveFunc
		check   WebSocketCheck
		wantErr string // a substring; "" for a pass
	}{
		{
			name: "101 then never reads",
			serve: func(c net.Conn, br *bufio.Reader, key string, done <-chan struct{}) {
				_ = write101(c, acceptKey(key))
				<-done
			},
			wantErr: "websocket /ws: waiting for pong: no answer within 300ms",
		},
		{
			name: "wrong accept",
			serve: func(c net.Conn, br *bufio.Reader, key string, done <-chan struct{}) {
				_ = write101(c, acceptKey(key+"x"))
				<-done
			},
			wantErr: "websocket /ws: 101 with a wrong Sec-WebSocket-Accept",
		},
		{
			name: "no upgrade header",
			serve: func(c net.Conn, br *bufio.Reader, key string, done <-chan struct{}) {
				_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "+acceptKey(key)+"\r\n\r\n")
				<-done
			},
			wantErr: "websocket /ws: 101 without Upgrade: websocket",
		},
		{
			name: "not 101",
			serve: func(c net.Conn, br *bufio.Reader, key string, done <-chan struct{}) {
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
				<-done
			},
			wantErr: "websocket /ws: status 200, want 101",
		},
		{
			name: "pong then close frame",
			serve: afterPing(func(c net.Conn, ping []byte) {
				pong(c, ping)
				_, _ = c.Write(serverFrame(true, opClose, []byte{0x03, 0xE8}, false))
			}),
		},
		{
			name: "pong then end of connection",
			serve: func(c net.Conn, br *bufio.Reader, key string, done <-chan struct{}) {
				if write101(c, acceptKey(key)) != nil {
					return
				}
				if op, p, err := readClientFrame(br); err == nil && op == opPing {
					pong(c, p)
					_, _, _ = readClientFrame(br) // the close; then the connection ends
				}
			},
		},
		{
			name: "pong with another payload",
			serve: afterPing(func(c net.Conn, ping []byte) {
				_, _ = c.Write(serverFrame(true, opPong, []byte("other"), false))
			}),
			wantErr: "websocket /ws: waiting for pong: no answer within 300ms",
		},
		{
			name: "close instead of pong",
			serve: afterPing(func(c net.Conn, ping []byte) {
				_, _ = c.Write(serverFrame(true, opClose, append([]byte{0x03, 0xF3}, "busy"...), false))
			}),
			wantErr: `websocket /ws: closed by the target (code 1011 "busy") instead of a pong`,
		},
		{
			name: "masked frame",
			serve: afterPing(func(c net.Conn, ping []byte) {
				_, _ = c.Write(serverFrame(true, opPong, ping, true))
			}),
			wantErr: "websocket /ws: waiting for pong: masked frame from the target",
		},
		{
			// A frame over the 64 KiB the check reads (a snapshot pushed
			// on connect) is skipped, and the pong after it counts.
			name: "large frame skipped",
			serve: afterPing(func(c net.Conn, ping []byte) {
				_, _ = c.Write(serverFrame(true, opBinary, make([]byte, maxCheckMessage+1), false))
				pong(c, ping)
				c.Close() // the end of the connection answers the close
			}),
		},
		{
			name: "large frame cut short",
			serve: afterPing(func(c net.Conn, ping []byte) {
				_, _ = c.Write([]byte{0x80 | opBinary, 127, 0, 0, 0, 0, 0, 1, 0, 1}) // 65537 bytes announced, none sent
			}),
			wantErr: "waiting for pong: no answer within 300ms",
		},
		{
			name:  "fragmented answer",
			check: WebSocketCheck{Send: "hi", Expect: regexp.MustCompile("^pong:hi$")},
			serve: func(c net.Conn, br *bufio.Reader, key string, done <-chan struct{}) {
				if write101(c, acceptKey(key)) != nil {
					return
				}
				if op, p, err := readClientFrame(br); err != nil || op != opText || string(p) != "hi" {
					return
				}
				_, _ = c.Write(serverFrame(false, opText, []byte("po"), false))
				_, _ = c.Write(serverFrame(true, opPing, []byte("x"), false)) // a control frame between fragments
				_, _ = c.Write(serverFrame(false, opContinuation, []byte("ng:"), false))
				_, _ = c.Write(serverFrame(true, opContinuation, []byte("hi"), false))
				_, _ = c.Write(serverFrame(true, opClose, nil, false))
				<-done
			},
		},
		{
			name:  "continuation without a message",
			check: WebSocketCheck{Send: "hi"},
			serve: func(c net.Conn, br *bufio.Reader, key string, done <-chan struct{}) {
				if write101(c, acceptKey(key)) != nil {
					return
				}
				_, _, _ = readClientFrame(br)
				_, _ = c.Write(serverFrame(true, opContinuation, []byte("x"), false))
				<-done
			},
			wantErr: "websocket /ws: waiting for an answer: continuation frame without a message",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rb := newRawBackend(t, tc.serve)
			err := wsCheckOnce(t, rb.addr, wsHealth(tc.check, 300*time.Millisecond), nil)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("check() = %v, want a pass", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("check() = %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

// TestWSCheckUpgradeRequest: the check's upgrade is a valid RFC 6455
// opening handshake, and its frames are masked.
func TestWSCheckUpgradeRequest(t *testing.T) {
	got := make(chan *http.Request, 1)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err == nil {
			got <- req
		}
	}()
	h := wsHealth(WebSocketCheck{Path: "/live?x=1", Subprotocol: "v2"}, 300*time.Millisecond)
	h.Headers = []Header{{"X-Check", "1"}}
	_ = wsCheckOnce(t, l.Addr().String(), h, nil) // the peer hangs up: the check fails
	var req *http.Request
	select {
	case req = <-got:
	case <-time.After(hangGuard):
		t.Fatal("no upgrade request")
	}
	key, _ := base64.StdEncoding.DecodeString(req.Header.Get("Sec-WebSocket-Key"))
	checks := []struct{ what, got, want string }{
		{"method", req.Method, "GET"},
		{"request URI", req.RequestURI, "/live?x=1"},
		{"Upgrade", req.Header.Get("Upgrade"), "websocket"},
		{"Connection", req.Header.Get("Connection"), "Upgrade"},
		{"Sec-WebSocket-Version", req.Header.Get("Sec-WebSocket-Version"), "13"},
		{"Sec-WebSocket-Protocol", req.Header.Get("Sec-WebSocket-Protocol"), "v2"},
		{"X-Check", req.Header.Get("X-Check"), "1"},
		{"User-Agent", req.Header.Get("User-Agent"), "wsgate-health-check"},
		{"Host", req.Host, l.Addr().String()},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.what, c.got, c.want)
		}
	}
	if len(key) != 16 {
		t.Errorf("Sec-WebSocket-Key decodes to %d bytes, want 16", len(key))
	}
}

// TestWSCheckLoopLog: a target whose WebSocket layer is wedged (101, then
// nothing read) is taken out by the checker, with the reason logged.
func TestWSCheckLoopLog(t *testing.T) {
	rb := newRawBackend(t, func(c net.Conn, br *bufio.Reader, key string, done <-chan struct{}) {
		_ = write101(c, acceptKey(key))
		<-done
	})
	log, lb := newLogger()
	s := newTestSet(t, &Config{Targets: []TargetConfig{localTarget(t, rb.addr)}, ConnectTimeout: hangGuard, Health: wsHealth(WebSocketCheck{}, 200*time.Millisecond)}, Options{Logger: log})
	s.Start()
	tgt := s.Targets()[0]
	waitFor(t, "a \"target unhealthy\" line", func() bool {
		return lb.has("target unhealthy", "target="+tgt.URL, `reason="health check failed: websocket /ws: waiting for pong: no answer within 200ms"`)
	})
	if tgt.Healthy() {
		t.Error("Healthy() = true after the WebSocket check failed, want false")
	}
}

// TestWSCheckAfterHTTP: with both checks configured, a failing HTTP check
// is the result and the WebSocket check is not run.
func TestWSCheckAfterHTTP(t *testing.T) {
	b := newWSBackend(t, "echo", false) // answers 400 to a plain GET
	h := wsHealth(WebSocketCheck{}, hangGuard)
	h.Path, h.Expect = "/health", []StatusRange{{200, 299}}
	err := wsCheckOnce(t, b.addr, h, nil)
	if err == nil || !strings.HasPrefix(err.Error(), "GET /health: status ") {
		t.Errorf("check() = %v, want the HTTP check's failure", err)
	}
	select {
	case code := <-b.closes:
		t.Errorf("backend saw a WebSocket session (close %d), want none", code)
	default:
	}
}
