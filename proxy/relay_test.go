package proxy

// Relay tests over real sockets: message types, fragmentation and frame
// boundaries, streaming memory, pings, close codes, lost peers, message
// size limits, idle timeout, bytes sent along with a handshake,
// permessage-deflate, the session log line, plus the relay benchmarks.

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/wsgate/wsgate/internal/testnet"
)

// TestRelayMessageTypes: text and binary messages keep their type both
// ways, including a message the client streams in several fragments.
func TestRelayMessageTypes(t *testing.T) {
	backend := startWSBackend(t, nil, func(c *websocket.Conn) { echoUntilError(c) })
	p := startProxy(t, wsRoute(testUpstream(backend)))
	d := websocket.Dialer{WriteBufferSize: 1024} // messages over 1 KiB leave the client fragmented
	c, _, err := d.Dial("ws://"+p.addr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for _, m := range []struct {
		typ  int
		data []byte
	}{
		{websocket.TextMessage, []byte("hello")},
		{websocket.BinaryMessage, []byte{0, 1, 2, 255}},
		{websocket.TextMessage, nil},
		{websocket.BinaryMessage, nil},
		{websocket.TextMessage, bytes.Repeat([]byte("é"), 3000)},
		{websocket.BinaryMessage, bytes.Repeat([]byte{0, 0xFF}, 40000)},
	} {
		// Three explicit parts through one writer.
		w, err := c.NextWriter(m.typ)
		if err != nil {
			t.Fatal(err)
		}
		third := len(m.data) / 3
		for _, part := range [][]byte{m.data[:third], m.data[third : 2*third], m.data[2*third:]} {
			if _, err := w.Write(part); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		typ, got, err := c.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		if typ != m.typ || !bytes.Equal(got, m.data) {
			t.Errorf("echo of %d bytes type %d = %d bytes type %d", len(m.data), m.typ, len(got), typ)
		}
	}
}

// reflectedFrame is a frame as the reflecting backend received it.
type reflectedFrame struct {
	rawFrame
	err error
}

// reflectBackend is a raw backend that sends every frame it receives
// back unchanged except for the mask (none: it is the server), and
// reports each received frame on got.
func reflectBackend(t testing.TB, got chan<- reflectedFrame) string {
	return startWSRawBackend(t, func(c net.Conn, br *bufio.Reader, req *http.Request) {
		if write101(c, req, "", nil) != nil {
			return
		}
		for range 1000 {
			f, err := readRawFrame(br)
			got <- reflectedFrame{f, err}
			if err != nil {
				return
			}
			b0 := f.opcode | f.rsv
			if f.fin {
				b0 |= 0x80
			}
			if _, err := c.Write(makeFrame(b0, nil, f.payload)); err != nil || f.opcode == 0x8 {
				return
			}
		}
	})
}

// TestRelayFrameBoundaries: frames pass one for one in both directions —
// three fragments stay three frames with their FIN bits and opcodes, a
// 100000-byte frame stays one frame — and frames toward the backend are
// masked with wsgate's own key.
func TestRelayFrameBoundaries(t *testing.T) {
	got := make(chan reflectedFrame, 100)
	p := startProxy(t, wsRoute(testUpstream(reflectBackend(t, got))))
	w := dialRaw(t, p.addr, "/", nil)

	big := make([]byte, 100000)
	for i := range big {
		big[i] = byte(i * 31)
	}
	sent := []struct {
		b0      byte
		payload []byte
	}{
		{0x01, []byte("frag1-")}, // text, FIN=0
		{0x00, []byte("frag2-")}, // continuation, FIN=0
		{0x89, []byte("ping in the middle")},
		{0x80, []byte("frag3")}, // continuation, FIN=1
		{0x82, big},             // one 100000-byte binary frame
		{0x02, big[:70000]},     // and a fragmented big one
		{0x80, big[:5000]},
	}
	for _, f := range sent {
		w.send(f.b0, f.payload)
	}
	for i, want := range sent {
		back := <-got
		if back.err != nil {
			t.Fatalf("backend frame %d: %v", i, back.err)
		}
		if !back.masked {
			t.Errorf("frame %d reached the backend unmasked", i)
		}
		if back.key == w.key {
			t.Errorf("frame %d reached the backend with the client's masking key", i)
		}
		f, err := w.read(10 * time.Second)
		if err != nil {
			t.Fatalf("client frame %d: %v", i, err)
		}
		for side, f := range map[string]rawFrame{"backend": back.rawFrame, "client": f} {
			b0 := f.opcode | f.rsv
			if f.fin {
				b0 |= 0x80
			}
			if b0 != want.b0 || !bytes.Equal(f.payload, want.payload) {
				t.Errorf("%s frame %d: first byte %#x, %d bytes; want %#x, %d bytes", side, i, b0, len(f.payload), want.b0, len(want.payload))
			}
		}
		if f.masked {
			t.Errorf("frame %d reached the client masked", i)
		}
	}
	w.send(0x88, closeBody(1000, "done"))
	if code, _ := w.readClose(5 * time.Second); code != 1000 {
		t.Errorf("close reply %d, want 1000", code)
	}
}

// relayHeapWatch samples HeapInuse every few milliseconds and keeps the
// peak.
type relayHeapWatch struct {
	stop, done chan struct{}
	base, peak atomic.Uint64
}

func startRelayHeapWatch() *relayHeapWatch {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	w := &relayHeapWatch{stop: make(chan struct{}), done: make(chan struct{})}
	w.base.Store(m.HeapInuse)
	w.peak.Store(m.HeapInuse)
	go func() {
		defer close(w.done)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-tick.C:
				runtime.ReadMemStats(&m)
				if m.HeapInuse > w.peak.Load() {
					w.peak.Store(m.HeapInuse)
				}
			}
		}
	}()
	return w
}

// growth stops the watch and returns the peak growth of HeapInuse.
func (w *relayHeapWatch) growth() uint64 {
	close(w.stop)
	<-w.done
	return w.peak.Load() - w.base.Load()
}

// TestRelay64MiBFlatMemory streams a 64 MiB message from a generator
// through the proxy; the backend hashes it as it arrives and answers with
// the hash. The whole test process (client, proxy and backend) must stay
// far below 64 MiB of heap growth: nothing may buffer the message.
func TestRelay64MiBFlatMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("64 MiB transfer")
	}
	const size = 64 << 20
	backend := startWSBackend(t, nil, func(c *websocket.Conn) {
		for range 10 {
			_, r, err := c.NextReader()
			if err != nil {
				return
			}
			h := sha256.New()
			n, err := io.Copy(h, r)
			if err != nil {
				return
			}
			c.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, "%d %x", n, h.Sum(nil)))
		}
	})
	p := startProxy(t, wsRoute(testUpstream(backend)))
	// 32 KiB frames exercise the streaming path (frames larger than the
	// relay's read buffer); the default 4 KiB the in-buffer path.
	for _, frame := range []int{32 << 10, 4 << 10} {
		t.Run(fmt.Sprintf("frames=%dKiB", frame>>10), func(t *testing.T) {
			d := websocket.Dialer{WriteBufferSize: frame}
			c, _, err := d.Dial("ws://"+p.addr+"/", nil)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			watch := startRelayHeapWatch()
			w, err := c.NextWriter(websocket.BinaryMessage)
			if err != nil {
				t.Fatal(err)
			}
			gen := rand.NewChaCha8([32]byte{1})
			h := sha256.New()
			chunk := make([]byte, 48<<10) // not a multiple of the frame size
			for sent := 0; sent < size; sent += len(chunk) {
				chunk = chunk[:min(len(chunk), size-sent)]
				gen.Read(chunk)
				h.Write(chunk)
				if _, err := w.Write(chunk); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(60 * time.Second))
			_, reply, err := c.ReadMessage()
			growth := watch.growth()
			if err != nil {
				t.Fatal(err)
			}
			if want := fmt.Sprintf("%d %x", size, h.Sum(nil)); string(reply) != want {
				t.Fatalf("backend got %q, want %q", reply, want)
			}
			t.Logf("peak heap growth while relaying 64 MiB: %.1f MiB", float64(growth)/(1<<20))
			if growth > 24<<20 {
				t.Errorf("peak heap growth %.1f MiB while relaying 64 MiB, want < 24 MiB", float64(growth)/(1<<20))
			}
		})
	}
}

// TestRelayPings: pings and pongs travel end to end. The client's ping is
// answered by the backend (its pong carries the backend's mark), and the
// backend's ping by the client.
func TestRelayPings(t *testing.T) {
	backendPong := make(chan string, 1)
	backend := startWSBackend(t, nil, func(c *websocket.Conn) {
		c.SetPingHandler(func(data string) error {
			return c.WriteControl(websocket.PongMessage, []byte("backend saw "+data), time.Now().Add(5*time.Second))
		})
		c.SetPongHandler(func(data string) error {
			backendPong <- data
			return nil
		})
		for range 100 {
			_, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if string(msg) == "ping me" {
				c.WriteControl(websocket.PingMessage, []byte("from backend"), time.Now().Add(5*time.Second))
			}
		}
	})
	p := startProxy(t, wsRoute(testUpstream(backend)))
	c, _ := dialWS(t, p.addr, "/", nil)
	clientPong := make(chan string, 1)
	c.SetPongHandler(func(data string) error {
		clientPong <- data
		return nil
	})
	readErr := make(chan error, 1)
	go func() { readErr <- readUntilError(c) }() // runs the control handlers; the default ping handler answers pong

	if err := c.WriteControl(websocket.PingMessage, []byte("hello"), time.Now().Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-clientPong:
		if got != "backend saw hello" {
			t.Errorf("client got pong %q, want %q", got, "backend saw hello")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("client got no pong")
	}
	if err := c.WriteMessage(websocket.TextMessage, []byte("ping me")); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-backendPong:
		if got != "from backend" {
			t.Errorf("backend got pong %q, want %q", got, "from backend")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("backend got no pong")
	}
	c.Close()
	recvErr(t, "the client reader to end", readErr, 5*time.Second)
}

// TestRelayCloseCodes: close codes and reasons pass unchanged both ways
// for every code a peer may send, 1014 arrives as 1011, and a close with
// no payload arrives as 1005 (no status).
func TestRelayCloseCodes(t *testing.T) {
	fromClient := make(chan error, 1)
	backend := startWSBackend(t, nil, func(c *websocket.Conn) {
		_, msg, err := c.ReadMessage()
		if err != nil {
			fromClient <- err // the client's close
			return
		}
		// "close N": the backend closes with N.
		code, _ := strconv.Atoi(strings.TrimPrefix(string(msg), "close "))
		c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, "bye from backend"), time.Now().Add(5*time.Second))
		readUntilError(c)
	})
	p := startProxy(t, wsRoute(testUpstream(backend)))

	var codes []int
	for c := 1000; c <= 1003; c++ {
		codes = append(codes, c)
	}
	for c := 1007; c <= 1013; c++ {
		codes = append(codes, c)
	}
	codes = append(codes, 1014, 3000, 3001, 3999, 4000, 4001, 4999)
	for _, code := range codes {
		want := code
		if code == 1014 {
			want = 1011 // many client libraries reject 1014
		}
		t.Run(fmt.Sprintf("client %d", code), func(t *testing.T) {
			c, _ := dialWS(t, p.addr, "/", nil)
			c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, "bye from client"), time.Now().Add(5*time.Second))
			err := recvErr(t, "the backend's close", fromClient, 5*time.Second)
			if got, text := closeCode(err); got != want || text != "bye from client" {
				t.Errorf("backend got %v, want close %d %q", err, want, "bye from client")
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if got, _ := closeCode(readUntilError(c)); got != want {
				t.Errorf("client got close reply %d, want the backend's echo %d", got, want)
			}
		})
		t.Run(fmt.Sprintf("backend %d", code), func(t *testing.T) {
			c, _ := dialWS(t, p.addr, "/", nil)
			c.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, "close %d", code))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			err := readUntilError(c)
			if got, text := closeCode(err); got != want || text != "bye from backend" {
				t.Errorf("client got %v, want close %d %q", err, want, "bye from backend")
			}
		})
	}
	t.Run("client no status", func(t *testing.T) {
		c, _ := dialWS(t, p.addr, "/", nil)
		c.WriteControl(websocket.CloseMessage, nil, time.Now().Add(5*time.Second))
		err := recvErr(t, "the backend's close", fromClient, 5*time.Second)
		if got, _ := closeCode(err); got != websocket.CloseNoStatusReceived {
			t.Errorf("backend got %v, want close 1005", err)
		}
	})
}

// TestRelayBackendGone: a backend that drops TCP (right after its 101, or
// after one frame) gives the client close 1011 at once — the idle timeout
// is an hour and the close budget a minute, so only the real path can
// pass.
func TestRelayBackendGone(t *testing.T) {
	for _, tc := range []struct {
		name string
		tail []byte
		want []string
	}{
		{"after 101", nil, nil},
		{"after one frame", makeFrame(0x81, nil, []byte("one")), []string{"one"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			backend := startWSRawBackend(t, func(c net.Conn, br *bufio.Reader, req *http.Request) {
				write101(c, req, "", tc.tail)
			})
			p := startProxyWith(t, slowCloses(), wsRoute(testUpstream(backend)))
			c, _ := dialWS(t, p.addr, "/", nil)
			c.SetReadDeadline(time.Now().Add(hangGuard))
			var got []string
			var err error
			for range 10 {
				var msg []byte
				if _, msg, err = c.ReadMessage(); err != nil {
					break
				}
				got = append(got, string(msg))
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("client got messages %q, want %q", got, tc.want)
			}
			if code, _ := closeCode(err); code != 1011 {
				t.Errorf("client got %v, want close 1011", err)
			}
		})
	}
}

// TestRelayClientGone: a client that drops TCP gives the backend close
// 1001 at once (within hangGuard, with an idle timeout of an hour).
func TestRelayClientGone(t *testing.T) {
	backendErr := make(chan error, 1)
	backend := startWSBackend(t, nil, func(c *websocket.Conn) { backendErr <- echoUntilError(c) })
	p := startProxyWith(t, slowCloses(), wsRoute(testUpstream(backend)))
	w := dialRaw(t, p.addr, "/", nil)
	w.send(0x81, []byte("hi"))
	if f, err := w.read(5 * time.Second); err != nil || string(f.payload) != "hi" {
		t.Fatalf("echo: %q, %v", f.payload, err)
	}
	w.c.Close()
	err := recvErr(t, "the backend's close", backendErr, hangGuard)
	if code, _ := closeCode(err); code != 1001 {
		t.Errorf("backend got %v, want close 1001", err)
	}
}

// TestRelayPeerGoneMidFrame: when a peer drops TCP in the middle of a
// large frame, part of which already went out, no close frame can follow
// on the other leg; wsgate must cut that connection at once instead of
// leaving the other peer waiting for the rest of the frame (the close
// budget, a minute here, would cut it only after hangGuard).
func TestRelayPeerGoneMidFrame(t *testing.T) {
	const frameLen = 200000
	t.Run("client", func(t *testing.T) {
		backendErr := make(chan error, 1)
		backend := startWSBackend(t, nil, func(c *websocket.Conn) { backendErr <- readUntilError(c) })
		p := startProxyWith(t, slowCloses(), wsRoute(testUpstream(backend)))
		w := dialRaw(t, p.addr, "/", nil)
		frame := makeFrame(0x82, &w.key, make([]byte, frameLen))
		w.write(frame[:len(frame)/2])
		waitFor(t, "the session to relay half the frame", 5*time.Second, func() bool {
			return strings.Contains(p.logs.String(), "websocket opened")
		})
		w.c.Close()
		err := recvErr(t, "the backend's read to fail", backendErr, hangGuard)
		if err == nil {
			t.Fatal("backend read ended without error")
		}
	})
	t.Run("backend", func(t *testing.T) {
		half := makeFrame(0x82, nil, make([]byte, frameLen))
		half = half[:len(half)/2]
		backend := startWSRawBackend(t, func(c net.Conn, br *bufio.Reader, req *http.Request) {
			write101(c, req, "", half)
		})
		p := startProxyWith(t, slowCloses(), wsRoute(testUpstream(backend)))
		w := dialRaw(t, p.addr, "/", nil)
		w.c.SetReadDeadline(time.Now().Add(hangGuard))
		n, err := io.Copy(io.Discard, w.br)
		if err != nil {
			t.Errorf("client connection not ended: %v (after %d bytes)", err, n)
		}
	})
}

// sizeReport is what a counting backend saw on one connection.
type sizeReport struct {
	complete int   // whole messages received
	bytes    int64 // payload bytes received
	err      error // what ended the connection
}

// countingWS reads messages, answers "got N" for each complete one and
// reports what it saw when the connection ends.
func countingWS(out chan<- sizeReport) func(c *websocket.Conn) {
	return func(c *websocket.Conn) {
		var r sizeReport
		defer func() { out <- r }()
		for range 100 {
			_, rd, err := c.NextReader()
			if err != nil {
				r.err = err
				return
			}
			n, err := io.Copy(io.Discard, rd)
			r.bytes += n
			if err != nil {
				r.err = err
				return
			}
			r.complete++
			c.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, "got %d", n))
		}
	}
}

// TestRelayMaxMessageSize: with max_message_size 1000 a message of 1001
// bytes — one frame or fragments — never reaches the other side: its
// sender gets close 1009 and the other side 1001.
func TestRelayMaxMessageSize(t *testing.T) {
	const limit = 1000
	fromClient := make(chan sizeReport, 1)
	countingBackend := startWSBackend(t, nil, countingWS(fromClient))

	// A raw backend that sends what the client asks for and reports the
	// close frame it gets.
	backendClose := make(chan rawFrame, 1)
	sendingBackend := startWSRawBackend(t, func(c net.Conn, br *bufio.Reader, req *http.Request) {
		if write101(c, req, "", nil) != nil {
			return
		}
		f, err := readRawFrame(br)
		if err != nil {
			return
		}
		var out []byte
		switch string(f.payload) {
		case "send 1000":
			out = makeFrame(0x82, nil, make([]byte, limit))
		case "send 1001":
			out = makeFrame(0x82, nil, make([]byte, limit+1))
		case "send fragments":
			out = append(makeFrame(0x02, nil, make([]byte, 400)), makeFrame(0x00, nil, make([]byte, 400))...)
			out = append(out, makeFrame(0x80, nil, make([]byte, 201))...)
		}
		if _, err := c.Write(out); err != nil {
			return
		}
		for range 100 {
			f, err := readRawFrame(br)
			if err != nil {
				return
			}
			if f.opcode == 0x8 {
				backendClose <- f
				c.Write(makeFrame(0x88, nil, f.payload))
				return
			}
		}
	})
	countingRoute := wsRoute(testUpstream(countingBackend))
	countingRoute.WebSocket.MaxMessageSize = limit
	sendingRoute := pathRoute("/send", wsRoute(testUpstream(sendingBackend)))
	sendingRoute.WebSocket.MaxMessageSize = limit
	p := startProxy(t, countingRoute, sendingRoute)

	t.Run("client exactly at the limit", func(t *testing.T) {
		c, _ := dialWS(t, p.addr, "/", nil)
		c.WriteMessage(websocket.BinaryMessage, make([]byte, limit))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, msg, err := c.ReadMessage(); err != nil || string(msg) != "got 1000" {
			t.Errorf("reply %q, %v; want %q", msg, err, "got 1000")
		}
		c.Close()
		<-fromClient
	})
	for _, tc := range []struct {
		name   string
		frames [][]byte // payloads; the last has FIN
	}{
		{"client one frame", [][]byte{make([]byte, limit+1)}},
		{"client fragments", [][]byte{make([]byte, 400), make([]byte, 400), make([]byte, 201)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := dialRaw(t, p.addr, "/", nil)
			for i, f := range tc.frames {
				var b0 byte = 0x02
				if i > 0 {
					b0 = 0x00
				}
				if i == len(tc.frames)-1 {
					b0 |= 0x80
				}
				w.send(b0, f)
			}
			if code, _ := w.readClose(5 * time.Second); code != 1009 {
				t.Errorf("client got close %d, want 1009", code)
			}
			w.send(0x88, closeBody(1009, ""))
			var r sizeReport
			select {
			case r = <-fromClient:
			case <-time.After(5 * time.Second):
				t.Fatal("backend did not finish")
			}
			if code, _ := closeCode(r.err); code != 1001 {
				t.Errorf("backend got %v, want close 1001", r.err)
			}
			if r.complete != 0 || r.bytes > 800 {
				t.Errorf("backend received %d whole messages, %d bytes; want none of the over-limit frame", r.complete, r.bytes)
			}
		})
	}
	t.Run("backend exactly at the limit", func(t *testing.T) {
		c, _ := dialWS(t, p.addr, "/send", nil)
		c.WriteMessage(websocket.TextMessage, []byte("send 1000"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, msg, err := c.ReadMessage(); err != nil || len(msg) != limit {
			t.Errorf("got %d bytes, %v; want %d", len(msg), err, limit)
		}
		c.Close()
		select {
		case f := <-backendClose: // this session's: the client went away
			if code, _ := f.closeCode(); code != 1001 {
				t.Errorf("backend got close %d after the client left, want 1001", code)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("backend got no close")
		}
	})
	for _, ask := range []string{"send 1001", "send fragments"} {
		t.Run("backend "+ask, func(t *testing.T) {
			c, _ := dialWS(t, p.addr, "/send", nil)
			c.WriteMessage(websocket.TextMessage, []byte(ask))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, msg, err := c.ReadMessage()
			if code, _ := closeCode(err); code != 1001 {
				t.Errorf("client got %d bytes, %v; want close 1001 and no message", len(msg), err)
			}
			select {
			case f := <-backendClose:
				if code, _ := f.closeCode(); code != 1009 {
					t.Errorf("backend got close %d, want 1009", code)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("backend got no close")
			}
		})
	}
}

// TestRelayIdleTimeout: a silent session is closed with 1001 on both legs
// after the route's idle timeout; traffic in only one direction keeps it
// open.
func TestRelayIdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	backendErr := make(chan error, 1)
	backend := startWSBackend(t, nil, func(c *websocket.Conn) {
		_, msg, err := c.ReadMessage()
		if err == nil && string(msg) == "tick" {
			tick := time.NewTicker(100 * time.Millisecond) // pacing, not a wait
			for i := range 10 {
				<-tick.C
				c.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, "tick %d", i))
			}
			tick.Stop()
		}
		backendErr <- readUntilError(c)
	})
	r := wsRoute(testUpstream(backend))
	r.WebSocket.IdleTimeout = idle
	p := startProxy(t, r)

	t.Run("silent", func(t *testing.T) {
		// From before the dial: the session's idle clock starts when its
		// relay does, which may be before dialWS returns on a busy
		// machine (CI saw 299.5ms measured from after it).
		start := time.Now()
		c, _ := dialWS(t, p.addr, "/", nil)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		err := readUntilError(c)
		elapsed := time.Since(start)
		if code, _ := closeCode(err); code != 1001 {
			t.Errorf("client got %v, want close 1001", err)
		}
		if elapsed < idle {
			t.Errorf("closed after %v, before the %v idle timeout", elapsed, idle)
		}
		if code, _ := closeCode(recvErr(t, "the backend's close", backendErr, 5*time.Second)); code != 1001 {
			t.Errorf("backend got close %d, want 1001", code)
		}
	})
	t.Run("backend sends", func(t *testing.T) {
		c, _ := dialWS(t, p.addr, "/", nil)
		c.WriteMessage(websocket.TextMessage, []byte("tick"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		for i := range 10 {
			_, msg, err := c.ReadMessage()
			if err != nil {
				t.Fatalf("after %d ticks (~%v of one-way traffic): %v", i, time.Duration(i)*100*time.Millisecond, err)
			}
			if want := fmt.Sprintf("tick %d", i); string(msg) != want {
				t.Fatalf("got %q, want %q", msg, want)
			}
		}
		// Silence from here on: now the idle timeout applies.
		if code, _ := closeCode(readUntilError(c)); code != 1001 {
			t.Errorf("client got close %d after the ticks, want 1001", code)
		}
		recvErr(t, "the backend's close", backendErr, 5*time.Second)
	})
	t.Run("client sends", func(t *testing.T) {
		c, _ := dialWS(t, p.addr, "/", nil)
		tick := time.NewTicker(100 * time.Millisecond) // pacing, not a wait
		defer tick.Stop()
		for i := range 10 {
			<-tick.C
			if err := c.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, "msg %d", i)); err != nil {
				t.Fatalf("write %d: %v", i, err)
			}
		}
		select {
		case err := <-backendErr:
			t.Fatalf("backend closed during one-way traffic: %v", err)
		default:
		}
		c.Close()
		recvErr(t, "the backend's close", backendErr, 5*time.Second)
	})
}

// TestRelayEarlyBytes: a frame the backend writes together with its 101
// reaches the client; a frame the client writes together with its
// handshake reaches the backend, and only after the backend's 101.
func TestRelayEarlyBytes(t *testing.T) {
	t.Run("backend", func(t *testing.T) {
		backend := startWSRawBackend(t, func(c net.Conn, br *bufio.Reader, req *http.Request) {
			if write101(c, req, "", makeFrame(0x81, nil, []byte("early from backend"))) != nil {
				return
			}
			readRawFrame(br) // until the client closes
		})
		p := startProxy(t, wsRoute(testUpstream(backend)))
		c, _ := dialWS(t, p.addr, "/", nil)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		typ, msg, err := c.ReadMessage()
		if err != nil || typ != websocket.TextMessage || string(msg) != "early from backend" {
			t.Errorf("got %d %q %v, want the early text frame", typ, msg, err)
		}
	})
	t.Run("client", func(t *testing.T) {
		type result struct {
			before int // bytes available before the backend's 101
			frame  rawFrame
			err    error
		}
		got := make(chan result, 1)
		backend := startWSRawBackend(t, func(c net.Conn, br *bufio.Reader, req *http.Request) {
			var r result
			defer func() { got <- r }()
			// Nothing may arrive before the 101: check the buffer and
			// the socket for a moment.
			r.before = br.Buffered()
			c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			if b, err := br.Peek(1); len(b) > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
				r.before += len(b)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if r.err = write101(c, req, "", nil); r.err != nil {
				return
			}
			r.frame, r.err = readRawFrame(br)
			if r.err == nil {
				c.Write(makeFrame(0x81, nil, r.frame.payload))
			}
		})
		p := startProxy(t, wsRoute(testUpstream(backend)))
		key := [4]byte{0x37, 0xfa, 0x21, 0x3d}
		w := dialRaw(t, p.addr, "/", makeFrame(0x81, &key, []byte("early from client")))
		r := <-got
		if r.before != 0 {
			t.Errorf("backend had %d bytes before it answered 101", r.before)
		}
		if r.err != nil || r.frame.opcode != 0x1 || string(r.frame.payload) != "early from client" {
			t.Errorf("backend got %+v, %v; want the early text frame", r.frame, r.err)
		}
		if f, err := w.read(5 * time.Second); err != nil || string(f.payload) != "early from client" {
			t.Errorf("client got echo %q, %v", f.payload, err)
		}
	})
}

// sessionLogLine waits for the "websocket closed" line and returns it.
func sessionLogLine(t testing.TB, p *testProxy) string {
	t.Helper()
	var line string
	waitFor(t, "the session log line", 5*time.Second, func() bool {
		for l := range strings.Lines(p.logs.String()) {
			if strings.Contains(l, `msg="websocket closed"`) {
				line = l
				return true
			}
		}
		return false
	})
	return line
}

// logInt returns the integer attribute key of a text log line, or -1.
func logInt(line, key string) int64 {
	m := regexp.MustCompile(`\b` + key + `=(-?\d+)`).FindStringSubmatch(line)
	if m == nil {
		return -1
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n
}

// TestRelayPermessageDeflate: permessage-deflate is negotiated end to end
// and compressed frames (RSV1) pass through intact.
func TestRelayPermessageDeflate(t *testing.T) {
	var offered atomic.Value
	up := websocket.Upgrader{EnableCompression: true, CheckOrigin: func(*http.Request) bool { return true }}
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		offered.Store(r.Header.Get("Sec-WebSocket-Extensions"))
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		echoUntilError(c)
	}))
	p := startProxy(t, wsRoute(testUpstream(backend)))
	d := websocket.Dialer{EnableCompression: true}
	c, resp, err := d.Dial("ws://"+p.addr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); !strings.HasPrefix(ext, "permessage-deflate") {
		t.Errorf("client's 101 has Sec-WebSocket-Extensions %q, want permessage-deflate", ext)
	}
	if ext, _ := offered.Load().(string); !strings.HasPrefix(ext, "permessage-deflate") {
		t.Errorf("backend was offered %q, want permessage-deflate", ext)
	}
	big := bytes.Repeat([]byte("compress me "), 10000) // 120000 bytes
	noise := make([]byte, 20000)
	rand.NewChaCha8([32]byte{2}).Read(noise)
	msgs := []struct {
		typ  int
		data []byte
	}{
		{websocket.TextMessage, big},
		{websocket.TextMessage, []byte("small")},
		{websocket.BinaryMessage, noise},
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for _, m := range msgs {
		if err := c.WriteMessage(m.typ, m.data); err != nil {
			t.Fatal(err)
		}
		typ, got, err := c.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		if typ != m.typ || !bytes.Equal(got, m.data) {
			t.Errorf("echo of %d bytes type %d = %d bytes type %d", len(m.data), m.typ, len(got), typ)
		}
	}
	c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(5*time.Second))
	readUntilError(c)
	c.Close()
	// The relay counts payload bytes as they are on the wire: far less
	// than the 140005 uncompressed bytes proves the frames stayed
	// compressed end to end.
	line := sessionLogLine(t, p)
	if n := logInt(line, "client_bytes"); n < 0 || n > 40000 {
		t.Errorf("client_bytes = %d, want the compressed size (< 40000 of 140005)", n)
	}
}

// TestRelayExtensionNotOffered: a backend that accepts an extension the
// client did not offer (or one wsgate does not relay) gets 502.
func TestRelayExtensionNotOffered(t *testing.T) {
	for _, tc := range []struct {
		name, clientExt, backendExt string
	}{
		{"deflate not offered", "", "permessage-deflate"},
		{"unknown extension", "permessage-deflate", "x-webkit-deflate-frame"},
		{"two extensions", "permessage-deflate", "permessage-deflate, permessage-deflate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			backend := startWSRawBackend(t, func(c net.Conn, br *bufio.Reader, req *http.Request) {
				write101(c, req, "Sec-WebSocket-Extensions: "+tc.backendExt+"\r\n", nil)
				readRawFrame(br)
			})
			p := startProxy(t, wsRoute(testUpstream(backend)))
			ext := ""
			if tc.clientExt != "" {
				ext = "Sec-WebSocket-Extensions: " + tc.clientExt + "\r\n"
			}
			resp, _ := rawStatus(t, p.addr, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
				"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"+ext+"\r\n")
			if resp.StatusCode != http.StatusBadGateway {
				t.Errorf("status %d, want 502", resp.StatusCode)
			}
		})
	}
}

// TestRelaySessionLog: the "websocket closed" line carries both close
// codes and the message counts of each side.
func TestRelaySessionLog(t *testing.T) {
	backend := startWSBackend(t, nil, func(c *websocket.Conn) {
		for range 3 {
			mt, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			c.WriteMessage(mt, msg)
		}
		c.WriteMessage(websocket.TextMessage, []byte("extra"))
		readUntilError(c) // echoes the client's close
	})
	p := startProxy(t, wsRoute(testUpstream(backend)))
	c, _ := dialWS(t, p.addr, "/", nil)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i := range 3 {
		c.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, "m%d", i))
		c.ReadMessage()
	}
	c.ReadMessage() // "extra"
	c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4000, "done"), time.Now().Add(5*time.Second))
	if code, _ := closeCode(readUntilError(c)); code != 4000 {
		t.Errorf("close reply %d, want 4000", code)
	}
	line := sessionLogLine(t, p)
	for key, want := range map[string]int64{
		"client_close":     4000,
		"backend_close":    4000,
		"client_messages":  3,
		"backend_messages": 4,
		"client_bytes":     6,
		"backend_bytes":    11,
	} {
		if got := logInt(line, key); got != want {
			t.Errorf("%s = %d, want %d in %q", key, got, want, line)
		}
	}
	if !strings.Contains(line, "route=test") || logInt(line, "duration_ms") < 0 {
		t.Errorf("log line lacks route or duration: %q", line)
	}
}

// BenchmarkRelay measures one echo round trip through the proxy per
// iteration, client and backend using fasthttp/websocket over loopback.
// Allocations are the whole process's: client, proxy and backend.
func BenchmarkRelay(b *testing.B) {
	backend := startWSBackend(b, &websocket.Upgrader{ReadBufferSize: 64 << 10, WriteBufferSize: 64 << 10}, func(c *websocket.Conn) {
		buf := make([]byte, 1<<20)
		for {
			mt, r, err := c.NextReader()
			if err != nil {
				return
			}
			n, err := io.ReadFull(r, buf)
			if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
				return
			}
			if c.WriteMessage(mt, buf[:n]) != nil {
				return
			}
		}
	})
	p := startProxy(b, wsRoute(testUpstream(backend)))
	for _, size := range []struct {
		name string
		n    int
	}{{"128B", 128}, {"4KiB", 4 << 10}, {"64KiB", 64 << 10}, {"1MiB", 1 << 20}} {
		b.Run("size="+size.name, func(b *testing.B) {
			d := websocket.Dialer{ReadBufferSize: 64 << 10, WriteBufferSize: 64 << 10}
			c, _, err := d.Dial("ws://"+p.addr+"/", nil)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			msg := make([]byte, size.n)
			back := make([]byte, size.n)
			b.SetBytes(int64(size.n))
			b.ReportAllocs()
			for b.Loop() {
				if err := c.WriteMessage(websocket.BinaryMessage, msg); err != nil {
					b.Fatal(err)
				}
				_, r, err := c.NextReader()
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(r, back); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestRelaySlowClient: a client that stops reading makes the proxy's
// writes time out (WriteTimeout); the client leg is then dead, so the
// backend must get close 1001 promptly instead of streaming into a void.
func TestRelaySlowClient(t *testing.T) {
	backendErr := make(chan error, 1)
	backend := startWSBackend(t, nil, func(c *websocket.Conn) {
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			msg := make([]byte, 64<<10)
			for range 4000 { // 256 MiB at most: far more than any socket buffers
				select {
				case <-stop:
					return
				default:
				}
				if c.WriteMessage(websocket.BinaryMessage, msg) != nil {
					return
				}
			}
		}()
		backendErr <- readUntilError(c)
	})
	p := startProxyWith(t, proxySetup{Options: Options{WriteTimeout: 300 * time.Millisecond}}, wsRoute(testUpstream(backend)))
	dialRaw(t, p.addr, "/", nil) // never reads
	err := recvErr(t, "the backend's close", backendErr, 10*time.Second)
	if code, _ := closeCode(err); code != 1001 {
		t.Errorf("backend got %v, want close 1001", err)
	}
}

// TestRelayHugeDeclaredLength: a frame may declare up to 2^63-1 bytes.
// Without a limit it streams to the backend; with max_message_size it is
// refused from its header (1009) and nothing of it is forwarded.
func TestRelayHugeDeclaredLength(t *testing.T) {
	type seen struct {
		f      rawFrame // header only
		length uint64
		first  []byte
		err    error
	}
	got := make(chan seen, 1)
	backend := startWSRawBackend(t, func(c net.Conn, br *bufio.Reader, req *http.Request) {
		var s seen
		defer func() { got <- s }()
		if s.err = write101(c, req, "", nil); s.err != nil {
			return
		}
		var hdr [14]byte
		if _, s.err = io.ReadFull(br, hdr[:2]); s.err != nil {
			return
		}
		s.f.opcode = hdr[0] & 0xF
		s.f.masked = hdr[1]&0x80 != 0
		if s.f.opcode == 0x8 {
			return // a close, not the frame
		}
		if _, s.err = io.ReadFull(br, hdr[2:14]); s.err != nil {
			return
		}
		s.length = binary.BigEndian.Uint64(hdr[2:10])
		copy(s.f.key[:], hdr[10:14])
		s.first = make([]byte, 1000)
		if _, s.err = io.ReadFull(br, s.first); s.err != nil {
			return
		}
		for i := range s.first {
			s.first[i] ^= s.f.key[i&3]
		}
	})
	limited := pathRoute("/limited", wsRoute(testUpstream(backend)))
	limited.WebSocket.MaxMessageSize = 1000
	p := startProxy(t, wsRoute(testUpstream(backend)), limited)
	const huge = 1<<63 - 1
	header := func(w *rawWS) []byte {
		b := []byte{0x82, 0x80 | 127}
		b = binary.BigEndian.AppendUint64(b, huge)
		return append(b, w.key[:]...)
	}
	payload := bytes.Repeat([]byte("0123456789"), 100)

	t.Run("unlimited", func(t *testing.T) {
		w := dialRaw(t, p.addr, "/", nil)
		masked := bytes.Clone(payload)
		for i := range masked {
			masked[i] ^= w.key[i&3]
		}
		w.write(append(header(w), masked...))
		s := <-got
		if s.err != nil || s.length != huge || !s.f.masked || !bytes.Equal(s.first, payload) {
			t.Errorf("backend got length %d masked %v first bytes %q, %v; want the frame streaming", s.length, s.f.masked, s.first, s.err)
		}
	})
	t.Run("limited", func(t *testing.T) {
		w := dialRaw(t, p.addr, "/limited", nil)
		w.write(append(header(w), payload...))
		if code, _ := w.readClose(5 * time.Second); code != 1009 {
			t.Errorf("client got close %d, want 1009", code)
		}
		s := <-got
		if s.f.opcode != 0x8 {
			t.Errorf("backend got opcode %#x, want only a close", s.f.opcode)
		}
	})
}

// Shared with the other packages' tests.
var tcpPair = testnet.TCPPair
