package proxy

// Frame-level tests: hand-made frames from raw clients and raw backends,
// RFC 6455 protocol violations on both legs, masking and the header
// codec (fuzzed). The helpers here are shared with relay_test.go and
// drain_test.go.

import (
	"bufio"
	"bytes"
	crand "crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// startWSBackend serves WebSocket upgrades with up on 127.0.0.1:0 and
// runs serve on each connection; the connection is closed when serve
// returns. A nil up accepts every origin with default settings.
func startWSBackend(t testing.TB, up *websocket.Upgrader, serve func(c *websocket.Conn)) string {
	t.Helper()
	if up == nil {
		up = &websocket.Upgrader{}
	}
	if up.CheckOrigin == nil {
		up.CheckOrigin = func(*http.Request) bool { return true }
	}
	return startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		serve(c)
	}))
}

// echoUntilError echoes messages on c with their type and returns the
// error that ended the loop (a *websocket.CloseError after a close frame).
func echoUntilError(c *websocket.Conn) error {
	for range 1 << 20 {
		mt, msg, err := c.ReadMessage()
		if err != nil {
			return err
		}
		if err := c.WriteMessage(mt, msg); err != nil {
			return err
		}
	}
	return errors.New("too many messages")
}

// readUntilError reads and drops messages on c until a read fails.
func readUntilError(c *websocket.Conn) error {
	for range 1 << 20 {
		if _, _, err := c.ReadMessage(); err != nil {
			return err
		}
	}
	return errors.New("too many messages")
}

// closeCode returns the code and text of a *websocket.CloseError, or -1.
func closeCode(err error) (int, string) {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		return ce.Code, ce.Text
	}
	return -1, ""
}

// recvErr waits up to d for an error on ch.
func recvErr(t testing.TB, what string, ch <-chan error, d time.Duration) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(d):
		t.Fatalf("timed out after %v waiting for %s", d, what)
		return nil
	}
}

// wsAccept computes Sec-WebSocket-Accept for key (RFC 6455 §4.2.2),
// independently of the code under test.
func wsAccept(key string) string {
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(sum[:])
}

// makeFrame encodes one frame by hand: b0 is FIN|RSV|opcode; payload is
// masked with *key when key is not nil. It uses the minimal length
// encoding and is independent of frame.go.
func makeFrame(b0 byte, key *[4]byte, payload []byte) []byte {
	var mb byte
	if key != nil {
		mb = 0x80
	}
	b := []byte{b0}
	switch n := len(payload); {
	case n <= 125:
		b = append(b, mb|byte(n))
	case n <= 0xFFFF:
		b = append(b, mb|126, byte(n>>8), byte(n))
	default:
		b = append(b, mb|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if key == nil {
		return append(b, payload...)
	}
	b = append(b, key[:]...)
	for i, c := range payload {
		b = append(b, c^key[i&3])
	}
	return b
}

// closeBody is the payload of a close frame with code and reason.
func closeBody(code uint16, reason string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, code), reason...)
}

// rawFrame is one frame as read off the wire by readRawFrame.
type rawFrame struct {
	fin     bool
	rsv     byte
	opcode  byte
	masked  bool
	key     [4]byte
	payload []byte // unmasked
}

// closeCode returns the code and reason of a close frame (1005 if empty).
func (f rawFrame) closeCode() (int, string) {
	if len(f.payload) < 2 {
		return 1005, ""
	}
	return int(binary.BigEndian.Uint16(f.payload)), string(f.payload[2:])
}

// readRawFrame reads one whole frame from br, independently of frame.go.
// Payloads are capped at 64 MiB.
func readRawFrame(br *bufio.Reader) (rawFrame, error) {
	var f rawFrame
	var hdr [2]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return f, err
	}
	f.fin = hdr[0]&0x80 != 0
	f.rsv = hdr[0] & 0x70
	f.opcode = hdr[0] & 0x0F
	f.masked = hdr[1]&0x80 != 0
	n := uint64(hdr[1] & 0x7F)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(br, b[:]); err != nil {
			return f, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(br, b[:]); err != nil {
			return f, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	if n > 64<<20 {
		return f, fmt.Errorf("frame of %d bytes", n)
	}
	if f.masked {
		if _, err := io.ReadFull(br, f.key[:]); err != nil {
			return f, err
		}
	}
	f.payload = make([]byte, n)
	if _, err := io.ReadFull(br, f.payload); err != nil {
		return f, err
	}
	if f.masked {
		for i := range f.payload {
			f.payload[i] ^= f.key[i&3]
		}
	}
	return f, nil
}

// rawWS is a hand-driven WebSocket client: a TCP connection that did a
// real opening handshake through the proxy.
type rawWS struct {
	t    testing.TB
	c    net.Conn
	br   *bufio.Reader
	key  [4]byte // masking key for frames sent with send
	resp *http.Response
}

// dialRaw performs the opening handshake on a raw TCP connection to addr,
// followed in the same write by early (which may be nil), and checks the
// 101 and its Sec-WebSocket-Accept.
func dialRaw(t testing.TB, addr, path string, early []byte) *rawWS {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	var nonce [16]byte
	if _, err := crand.Read(nonce[:]); err != nil {
		t.Fatal(err)
	}
	key := base64.StdEncoding.EncodeToString(nonce[:])
	req := "GET " + path + " HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := c.Write(append([]byte(req), early...)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read handshake response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake status %d, want 101", resp.StatusCode)
	}
	if got := resp.Header.Get("Sec-WebSocket-Accept"); got != wsAccept(key) {
		t.Fatalf("Sec-WebSocket-Accept = %q, want %q", got, wsAccept(key))
	}
	c.SetReadDeadline(time.Time{})
	return &rawWS{t: t, c: c, br: br, key: [4]byte{0x37, 0xfa, 0x21, 0x3d}, resp: resp}
}

// send writes one masked frame.
func (w *rawWS) send(b0 byte, payload []byte) {
	w.t.Helper()
	w.write(makeFrame(b0, &w.key, payload))
}

// write writes raw bytes.
func (w *rawWS) write(b []byte) {
	w.t.Helper()
	w.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := w.c.Write(b); err != nil {
		w.t.Fatalf("write: %v", err)
	}
}

// read reads one frame, waiting at most d.
func (w *rawWS) read(d time.Duration) (rawFrame, error) {
	w.c.SetReadDeadline(time.Now().Add(d))
	return readRawFrame(w.br)
}

// readClose reads frames until a close frame arrives (at most d) and
// returns its code and reason.
func (w *rawWS) readClose(d time.Duration) (int, string) {
	w.t.Helper()
	for range 1000 {
		f, err := w.read(d)
		if err != nil {
			w.t.Fatalf("waiting for a close frame: %v", err)
		}
		if f.opcode == 0x8 {
			if f.masked {
				w.t.Errorf("close frame to the client is masked")
			}
			return f.closeCode()
		}
	}
	w.t.Fatal("no close frame in 1000 frames")
	return 0, ""
}

// expectEOF checks that the proxy ends the connection within d.
func (w *rawWS) expectEOF(d time.Duration) {
	w.t.Helper()
	w.c.SetReadDeadline(time.Now().Add(d))
	n, err := io.Copy(io.Discard, w.br)
	if err != nil {
		w.t.Errorf("connection not ended within %v: %v (after %d more bytes)", d, err, n)
	} else if n > 0 {
		w.t.Errorf("%d bytes after the close frame", n)
	}
}

// startWSRawBackend accepts connections on 127.0.0.1:0, reads each request
// head and hands the connection to serve, which must answer it (see
// write101). Connections are closed when serve returns; the test waits
// for every serve at cleanup.
func startWSRawBackend(t testing.TB, serve func(c net.Conn, br *bufio.Reader, req *http.Request)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
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
				c.SetDeadline(time.Now().Add(30 * time.Second)) // a stuck test fails, not hangs
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				serve(c, br, req)
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

// write101 answers req with a valid 101 followed by extra header lines
// (each ending in \r\n) and then tail, all in one write.
func write101(c net.Conn, req *http.Request, extra string, tail []byte) error {
	head := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Accept: " + wsAccept(req.Header.Get("Sec-WebSocket-Key")) + "\r\n" + extra + "\r\n"
	_, err := c.Write(append([]byte(head), tail...))
	return err
}

// violation is a frame (or frames) that breaks RFC 6455.
type violation struct {
	name  string
	frame []byte
}

// violations returns protocol violations as a peer would send them: key
// is the masking key a client uses, nil for a backend (whose frames are
// unmasked). The first case gets the masking wrong.
func violations(key *[4]byte) []violation {
	wrongMask := &[4]byte{9, 8, 7, 6}
	maskBit := byte(0x80)
	name := "unmasked frame"
	if key == nil {
		maskBit = 0
		name = "masked frame"
	} else {
		wrongMask = nil
	}
	msb := []byte{0x82, maskBit | 127, 0x80, 0, 0, 0, 0, 0, 0, 1}
	if key != nil {
		msb = append(msb, key[:]...)
	}
	return []violation{
		{name, makeFrame(0x81, wrongMask, []byte("hi"))},
		{"RSV1 without extension", makeFrame(0x80|0x40|0x1, key, []byte("hi"))},
		{"RSV2", makeFrame(0x80|0x20|0x2, key, []byte("hi"))},
		{"RSV3", makeFrame(0x80|0x10|0x1, key, []byte("hi"))},
		{"opcode 0x3", makeFrame(0x83, key, []byte("hi"))},
		{"opcode 0xB", makeFrame(0x8B, key, nil)},
		{"fragmented ping", makeFrame(0x09, key, []byte("p"))},
		{"ping payload 126 bytes", makeFrame(0x89, key, bytes.Repeat([]byte("p"), 126))},
		{"continuation without start", makeFrame(0x80, key, []byte("x"))},
		{"new message inside a fragmented one", append(makeFrame(0x01, key, []byte("a")), makeFrame(0x81, key, []byte("b"))...)},
		{"close code 1005", makeFrame(0x88, key, closeBody(1005, ""))},
		{"close code 1006", makeFrame(0x88, key, closeBody(1006, ""))},
		{"close code 999", makeFrame(0x88, key, closeBody(999, ""))},
		{"close code 2000", makeFrame(0x88, key, closeBody(2000, ""))},
		{"close payload of 1 byte", makeFrame(0x88, key, []byte{3})},
		{"64-bit length with MSB set", msb},
	}
}

// TestClientProtocolViolations sends each violation from a raw client
// after a real handshake through the proxy: the client gets close 1002
// and then EOF at once (wsgate half-closes; the close budget, a minute
// here, would cut only after hangGuard), the backend a close frame.
func TestClientProtocolViolations(t *testing.T) {
	backendErr := make(chan error, 1)
	backend := startWSBackend(t, nil, func(c *websocket.Conn) { backendErr <- echoUntilError(c) })
	p := startProxyWith(t, slowCloses(), wsRoute(testUpstream(backend)))
	key := [4]byte{0xa1, 0x02, 0xc3, 0x44}
	cases := append(violations(&key), violation{"close reason not UTF-8", makeFrame(0x88, &key, closeBody(1000, "\xff\xfe"))})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want := 1002
			if tc.name == "close reason not UTF-8" {
				want = 1007
			}
			w := dialRaw(t, p.addr, "/", nil)
			w.send(0x81, []byte("before")) // a valid frame first: the session is live
			if f, err := w.read(5 * time.Second); err != nil || string(f.payload) != "before" {
				t.Fatalf("echo before the violation: %q, %v", f.payload, err)
			}
			w.write(tc.frame)
			if code, reason := w.readClose(hangGuard); code != want {
				t.Errorf("client got close %d %q, want %d", code, reason, want)
			}
			w.expectEOF(hangGuard)
			err := recvErr(t, "the backend's close", backendErr, hangGuard)
			if code, _ := closeCode(err); code != 1001 {
				t.Errorf("backend got %v, want close 1001", err)
			}
		})
	}
}

// TestBackendProtocolViolations sends each violation from a raw backend:
// the client gets close 1011 (its peer failed), the backend close 1002
// (masked, as wsgate is its client) and then EOF at once (the close
// budget, a minute here, would cut only after hangGuard).
func TestBackendProtocolViolations(t *testing.T) {
	for _, tc := range violations(nil) {
		t.Run(tc.name, func(t *testing.T) {
			got := make(chan rawFrame, 1)
			eof := make(chan error, 1)
			backend := startWSRawBackend(t, func(c net.Conn, br *bufio.Reader, req *http.Request) {
				if write101(c, req, "", tc.frame) != nil {
					return
				}
				for range 100 {
					f, err := readRawFrame(br)
					if err != nil {
						return
					}
					if f.opcode == 0x8 {
						got <- f
						c.SetReadDeadline(time.Now().Add(hangGuard))
						_, err := io.Copy(io.Discard, br)
						eof <- err
						return
					}
				}
			})
			p := startProxyWith(t, slowCloses(), wsRoute(testUpstream(backend)))
			c, _ := dialWS(t, p.addr, "/", nil)
			c.SetReadDeadline(time.Now().Add(hangGuard))
			err := readUntilError(c)
			if code, _ := closeCode(err); code != 1011 {
				t.Errorf("client got %v, want close 1011", err)
			}
			select {
			case f := <-got:
				if code, reason := f.closeCode(); code != 1002 {
					t.Errorf("backend got close %d %q, want 1002", code, reason)
				}
				if !f.masked {
					t.Error("close frame to the backend is not masked")
				}
			case <-time.After(hangGuard):
				t.Fatal("backend got no close frame")
			}
			if err := recvErr(t, "EOF at the backend", eof, hangGuard); err != nil {
				t.Errorf("backend connection not ended after the close: %v", err)
			}
		})
	}
}
