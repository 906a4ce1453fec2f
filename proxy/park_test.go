//go:build linux

package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// parkedLegs counts the legs of h's sessions waiting in the shared poller.
func parkedLegs(h *Handler) int { return h.reg.Parked() }

// TestParkedSessionsRelay: idle legs park in the poller (no goroutine),
// and data on a parked leg resumes it in either direction; then a drain
// reaches parked sessions too.
func TestParkedSessionsRelay(t *testing.T) {
	backend := startBackend(t, echoWS(t))
	p := startProxy(t, wsRoute(testUpstream(backend)))
	const n = 20
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		conns[i], _ = dialWS(t, p.addr, "/", nil)
	}
	waitFor(t, "every leg parked", 10*time.Second, func() bool { return parkedLegs(p.h) == 2*n })

	for round := range 2 {
		for i, c := range conns {
			msg := fmt.Sprintf("round %d conn %d", round, i)
			if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, got, err := c.ReadMessage()
			if err != nil || string(got) != msg {
				t.Fatalf("echo from a parked session: %q, %v; want %q", got, err, msg)
			}
		}
		waitFor(t, "legs parked again", 10*time.Second, func() bool { return parkedLegs(p.h) == 2*n })
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	drained := make(chan error, 1)
	go func() { drained <- drainErr(p.h, ctx) }()
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _, err := c.ReadMessage()
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway {
			t.Fatalf("parked session on drain: %v, want close 1001", err)
		}
		c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, ""))
	}
	if err := <-drained; err != nil {
		t.Fatalf("Drain = %v, want nil", err)
	}
	if got := p.h.Sessions(); got != 0 {
		t.Errorf("Sessions() = %d after drain", got)
	}
}

// TestParkedSessionsCostNoGoroutine: once parked, a session holds no
// goroutine of the proxy (the net/http backend keeps one per connection).
func TestParkedSessionsCostNoGoroutine(t *testing.T) {
	backend := startBackend(t, echoWS(t))
	p := startProxy(t, wsRoute(testUpstream(backend)))
	// Warm the fasthttp worker pool so its goroutines are not counted.
	for range 4 {
		c, _ := dialWS(t, p.addr, "/", nil)
		c.Close()
	}
	waitFor(t, "warm-up sessions ended", 10*time.Second, func() bool { return p.h.Sessions() == 0 })
	before := runtime.NumGoroutine()
	const n = 200
	for range n {
		dialWS(t, p.addr, "/", nil)
	}
	waitFor(t, "every leg parked", 15*time.Second, func() bool { return parkedLegs(p.h) == 2*n })
	// Allow the backend's one goroutine per connection and a little slack
	// for fasthttp workers that have not retired yet.
	if grown := runtime.NumGoroutine() - before; grown > n+16 {
		t.Errorf("goroutines grew by %d for %d parked sessions, want ≤ %d (backend only)", grown, n, n+16)
	}
}

// TestParkedSessionIdleTimeout: a parked session still meets its idle
// timeout (the sweep hands it back to a goroutine before the deadline).
func TestParkedSessionIdleTimeout(t *testing.T) {
	backend := startBackend(t, echoWS(t))
	r := wsRoute(testUpstream(backend))
	r.WebSocket.IdleTimeout = 2500 * time.Millisecond // long enough to park: more than wsrelay's parkMargin (2s)
	p := startProxy(t, r)
	c, _ := dialWS(t, p.addr, "/", nil)
	waitFor(t, "legs parked", 5*time.Second, func() bool { return parkedLegs(p.h) == 2 })
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err := c.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway || ce.Text != "idle timeout" {
		t.Fatalf("parked idle session: %v, want close 1001 idle timeout", err)
	}
}

// TestParkedSessionForcedDrain: a parked session whose client never
// answers the close is cut when the drain budget ends, and ends.
func TestParkedSessionForcedDrain(t *testing.T) {
	backend := startBackend(t, echoWS(t))
	p := startProxy(t, wsRoute(testUpstream(backend)))
	c, _ := dialWS(t, p.addr, "/", nil)
	waitFor(t, "legs parked", 5*time.Second, func() bool { return parkedLegs(p.h) == 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := drainErr(p.h, ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Drain = %v, want deadline exceeded (the client never answers)", err)
	}
	waitFor(t, "session removed", 5*time.Second, func() bool { return p.h.Sessions() == 0 })
	// The client sees the close frame, then the cut.
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := c.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseGoingAway) {
		t.Errorf("client read %v, want close 1001", err)
	}
	if _, err := c.NetConn().Read(make([]byte, 1)); err == nil || errors.Is(err, net.ErrClosed) {
		t.Errorf("client connection after the cut: %v, want EOF or reset", err)
	}
}

// TestPollerRelaysFrames: once parked, both legs of a plain-TCP session
// are relayed by the poller itself: messages in both directions arrive,
// are counted, and no leg goes back to a pump goroutine.
func TestPollerRelaysFrames(t *testing.T) {
	backend := startBackend(t, echoWS(t))
	p := startProxy(t, wsRoute(testUpstream(backend)))
	const n, rounds = 20, 5
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		conns[i], _ = dialWS(t, p.addr, "/", nil)
	}
	waitFor(t, "every leg parked", 10*time.Second, func() bool { return parkedLegs(p.h) == 2*n })
	before := p.h.reg.HandOffs()
	for round := range rounds {
		for i, c := range conns {
			msg := bytes.Repeat([]byte{byte(i), byte(round)}, 1+(i*97+round*31)%1000)
			if err := c.WriteMessage(websocket.BinaryMessage, msg); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			mt, got, err := c.ReadMessage()
			if err != nil || mt != websocket.BinaryMessage || !bytes.Equal(got, msg) {
				t.Fatalf("round %d conn %d: echo %d bytes type %d, %v; want %d bytes back", round, i, len(got), mt, err, len(msg))
			}
		}
	}
	if got := p.h.reg.HandOffs() - before; got != 0 {
		t.Errorf("%d legs went back to a goroutine while the poller relayed small messages, want 0", got)
	}
	for _, c := range conns {
		c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := c.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
			t.Errorf("close through the poller: %v, want the backend's 1000 echoed", err)
		}
		c.Close()
	}
	waitFor(t, "sessions ended", 10*time.Second, func() bool { return p.h.Sessions() == 0 })
	want := fmt.Sprintf("client_messages=%d", rounds)
	if got := strings.Count(p.logs.String(), want); got != n {
		t.Errorf("%d session logs say %s, want %d:\n%s", got, want, n, p.logs.String())
	}
}

// TestPollerSeesEndAfterData: a client that sends a frame and at once
// half-closes (no close frame) is noticed although its data and its FIN
// come in one readiness event: the backend gets the frame, then 1001.
func TestPollerSeesEndAfterData(t *testing.T) {
	const n = 20
	results := make(chan error, 2*n)
	backend := startWSBackend(t, nil, func(c *websocket.Conn) {
		_, msg, err := c.ReadMessage()
		if err == nil && string(msg) != "last words" {
			err = fmt.Errorf("message %q", msg)
		}
		results <- err
		results <- readUntilError(c)
	})
	p := startProxy(t, wsRoute(testUpstream(backend)))
	clients := make([]*rawWS, n)
	for i := range clients {
		clients[i] = dialRaw(t, p.addr, "/", nil)
	}
	waitFor(t, "every leg parked", 10*time.Second, func() bool { return parkedLegs(p.h) == 2*n })
	for _, w := range clients {
		w.send(0x81, []byte("last words"))
		if err := w.c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
	}
	// The idle timeout is an hour: only noticing each FIN ends the wait.
	frames, away := 0, 0
	for range 2 * n {
		err := recvErr(t, "the frames and the ends", results, 10*time.Second)
		switch code, _ := closeCode(err); {
		case err == nil:
			frames++
		case code == websocket.CloseGoingAway:
			away++
		default:
			t.Errorf("backend read %v, want the frame, then close 1001", err)
		}
	}
	if frames != n || away != n {
		t.Errorf("backends read %d frames and %d closes 1001, want %d of each", frames, away, n)
	}
}
