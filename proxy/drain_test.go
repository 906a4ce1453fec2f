package proxy

// Session lifecycle tests: no goroutine outlives its session, and Drain
// closes every session with 1001 (or cuts it when its budget runs out).

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// TestSessionsEndWithoutLeaks opens and closes 1,000 sessions through the
// proxy, half closed by the client and half by the backend, and checks
// that the goroutine count returns to where it started.
func TestSessionsEndWithoutLeaks(t *testing.T) {
	const sessions, batch = 1000, 4
	backend := startWSBackend(t, nil, func(c *websocket.Conn) {
		for range 10 {
			mt, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if string(msg) == "close me" {
				c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4000, "backend closes"), time.Now().Add(5*time.Second))
				readUntilError(c) // the client's echo
				return
			}
			if c.WriteMessage(mt, msg) != nil {
				return
			}
		}
	})
	p := startProxy(t, wsRoute(testUpstream(backend)))
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	session := func(i int) error {
		c, _, err := d.Dial("ws://"+p.addr+"/", nil)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if err := c.WriteMessage(websocket.TextMessage, []byte("hello")); err != nil {
			return err
		}
		if _, msg, err := c.ReadMessage(); err != nil || string(msg) != "hello" {
			return fmt.Errorf("echo %q: %v", msg, err)
		}
		want := 4000
		if i%2 == 0 {
			want = 1000
			err = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, "client closes"), time.Now().Add(5*time.Second))
		} else {
			err = c.WriteMessage(websocket.TextMessage, []byte("close me"))
		}
		if err != nil {
			return err
		}
		if code, _ := closeCode(readUntilError(c)); code != want {
			return fmt.Errorf("session %d ended with close %d, want %d", i, code, want)
		}
		return nil
	}
	run := func(from, to int) {
		t.Helper()
		for start := from; start < to; start += batch {
			var wg sync.WaitGroup
			errs := make(chan error, batch)
			for i := start; i < min(start+batch, to); i++ {
				wg.Go(func() {
					if err := session(i); err != nil {
						errs <- err
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
		}
	}
	run(0, batch) // warm-up: worker pools, timers, buffers
	waitFor(t, "the warm-up sessions to end", 10*time.Second, func() bool { return p.h.Sessions() == 0 })
	base := runtime.NumGoroutine()

	run(0, sessions)
	// A client sees the close reply a moment before the proxy has torn
	// the session down: poll.
	deadline := time.Now().Add(10 * time.Second)
	n, live := runtime.NumGoroutine(), p.h.Sessions()
	for (n > base+5 || live != 0) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond) // polling interval, not a wait for an event
		n, live = runtime.NumGoroutine(), p.h.Sessions()
	}
	if n > base+5 {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines 10s after %d sessions, %d before\n%s", n, sessions, base, buf[:runtime.Stack(buf, true)])
	}
	if live != 0 {
		t.Errorf("Sessions() = %d 10s after every session ended, want 0", live)
	}
	t.Logf("goroutines: %d before, %d after %d sessions", base, n, sessions)
}

// upgradeStatus sends a WebSocket handshake to p and returns the status.
func upgradeStatus(t testing.TB, addr string) int {
	t.Helper()
	resp, _ := rawStatus(t, addr, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	return resp.StatusCode
}

// isDraining reports whether Drain has started on h.
func isDraining(h *Handler) bool { return h.reg.Draining() }

// TestDrain: Drain sends 1001 "going away" to both legs of every session,
// waits for the close handshakes and returns nil; afterwards upgrades are
// refused with 503.
func TestDrain(t *testing.T) {
	const n = 20
	backendErrs := make(chan error, n)
	backend := startWSBackend(t, nil, func(c *websocket.Conn) { backendErrs <- echoUntilError(c) })
	p := startProxy(t, wsRoute(testUpstream(backend)))
	clientErrs := make(chan error, n)
	for i := range n {
		c, _ := dialWS(t, p.addr, "/", nil)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		msg := fmt.Appendf(nil, "session %d", i)
		c.WriteMessage(websocket.TextMessage, msg)
		if _, got, err := c.ReadMessage(); err != nil || string(got) != string(msg) {
			t.Fatalf("session %d echo: %q, %v", i, got, err)
		}
		go func() { clientErrs <- readUntilError(c) }() // answers the close
	}
	if got := p.h.Sessions(); got != n {
		t.Fatalf("Sessions() = %d, want %d", got, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := drainErr(p.h, ctx); err != nil {
		t.Errorf("Drain = %v, want nil", err)
	}
	t.Logf("Drain of %d sessions took %v", n, time.Since(start))
	if got := p.h.Sessions(); got != 0 {
		t.Errorf("Sessions() = %d after Drain, want 0", got)
	}
	for i := range n {
		err := recvErr(t, "a client's close", clientErrs, 5*time.Second)
		if code, text := closeCode(err); code != 1001 || text != "going away" {
			t.Errorf("client %d got %v, want close 1001 %q", i, err, "going away")
		}
		err = recvErr(t, "a backend's close", backendErrs, 5*time.Second)
		if code, text := closeCode(err); code != 1001 || text != "going away" {
			t.Errorf("backend %d got %v, want close 1001 %q", i, err, "going away")
		}
	}
	if status := upgradeStatus(t, p.addr); status != http.StatusServiceUnavailable {
		t.Errorf("upgrade after Drain: status %d, want 503", status)
	}
}

// TestDrainForced: a client that never answers the close keeps Drain
// waiting only until its context ends; then Drain cuts the connections
// and returns ctx.Err(). Upgrades during the drain get 503.
func TestDrainForced(t *testing.T) {
	backendErrs := make(chan error, 2)
	backend := startWSBackend(t, nil, func(c *websocket.Conn) { backendErrs <- echoUntilError(c) })
	p := startProxyWith(t, slowCloses(), wsRoute(testUpstream(backend)))
	mute := dialRaw(t, p.addr, "/", nil) // stops reading after the handshake
	polite, _ := dialWS(t, p.addr, "/", nil)
	politeErr := make(chan error, 1)
	go func() { politeErr <- readUntilError(polite) }()
	waitFor(t, "two sessions", 5*time.Second, func() bool { return p.h.Sessions() == 2 })

	const budget = time.Second
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	drained := make(chan error, 1)
	start := time.Now()
	go func() { drained <- drainErr(p.h, ctx) }()
	waitFor(t, "Drain to start", 5*time.Second, func() bool { return isDraining(p.h) })
	if status := upgradeStatus(t, p.addr); status != http.StatusServiceUnavailable {
		t.Errorf("upgrade during Drain: status %d, want 503", status)
	}

	// The close budget is a minute: only the drain budget's cut makes
	// Drain return within hangGuard.
	err := recvErr(t, "Drain to return", drained, budget+hangGuard)
	if elapsed := time.Since(start); elapsed < budget {
		t.Errorf("Drain returned after %v, before its %v budget", elapsed, budget)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Drain = %v, want %v", err, context.DeadlineExceeded)
	}
	if logs := p.logs.String(); strings.Contains(logs, "did not end after their connections were closed") {
		t.Errorf("forced Drain waited for sessions after cutting them:\n%s", logs)
	}
	if got := p.h.Sessions(); got != 0 {
		t.Errorf("Sessions() = %d after a forced Drain, want 0", got)
	}
	// The polite session ended cleanly before the budget ran out.
	if code, _ := closeCode(recvErr(t, "the polite client's close", politeErr, time.Second)); code != 1001 {
		t.Errorf("polite client got close %d, want 1001", code)
	}
	// The mute client finds the close frame in its buffer, then the
	// connection is gone.
	if code, reason := mute.readClose(time.Second); code != 1001 || reason != "going away" {
		t.Errorf("mute client got close %d %q, want 1001 %q", code, reason, "going away")
	}
	mute.c.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := mute.br.ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("mute client's connection still open after Drain: %v", err)
	}
	for range 2 {
		if code, _ := closeCode(recvErr(t, "a backend's close", backendErrs, 5*time.Second)); code != 1001 {
			t.Errorf("backend got close %d, want 1001", code)
		}
	}
}

// TestDrainWaitsForFrameInFlight: a close is only ever injected between
// frames. Drain during a large frame that the backend is still sending
// delivers the whole frame to the client, then close 1001.
func TestDrainWaitsForFrameInFlight(t *testing.T) {
	const size = 200000
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(i % 251)
	}
	frame := makeFrame(0x82, nil, payload)
	rest := make(chan struct{})
	backendClose := make(chan rawFrame, 1)
	backend := startWSRawBackend(t, func(c net.Conn, br *bufio.Reader, req *http.Request) {
		if write101(c, req, "", frame[:len(frame)/2]) != nil {
			return
		}
		<-rest
		if _, err := c.Write(frame[len(frame)/2:]); err != nil {
			return
		}
		if f, err := readRawFrame(br); err == nil {
			backendClose <- f
			c.Write(makeFrame(0x88, nil, f.payload))
		}
	})
	p := startProxy(t, wsRoute(testUpstream(backend)))
	w := dialRaw(t, p.addr, "/", nil)
	// Read the first half: the relay is now inside the frame.
	w.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	head := make([]byte, len(frame)/2)
	if _, err := io.ReadFull(w.br, head); err != nil {
		t.Fatal(err)
	}
	s := p.h.reg.List()[0]

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	drained := make(chan error, 1)
	go func() { drained <- drainErr(p.h, ctx) }()
	// closeBoth starts the closing, then waits for the frame to finish.
	waitFor(t, "Drain to reach the session", 5*time.Second, func() bool { return s.Closing() })
	close(rest)

	tail := make([]byte, len(frame)-len(head))
	if _, err := io.ReadFull(w.br, tail); err != nil {
		t.Fatalf("rest of the frame: %v", err)
	}
	if got := append(head, tail...); !bytes.Equal(got, frame) {
		t.Fatal("the frame in flight was altered")
	}
	if code, reason := w.readClose(5 * time.Second); code != 1001 || reason != "going away" {
		t.Errorf("client got close %d %q after the frame, want 1001", code, reason)
	}
	w.send(0x88, closeBody(1001, ""))
	if err := recvErr(t, "Drain to return", drained, 5*time.Second); err != nil {
		t.Errorf("Drain = %v, want nil", err)
	}
	select {
	case f := <-backendClose:
		if code, _ := f.closeCode(); code != 1001 {
			t.Errorf("backend got close %d, want 1001", code)
		}
	default:
		t.Error("backend got no close")
	}
}
