//go:build linux

package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// parkedLegs counts the legs of h's sessions waiting in the shared poller.
func parkedLegs(h *Handler) int {
	p := getPoller()
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, pp := range p.parked {
		if pp.s.h == h {
			n++
		}
	}
	return n
}

// TestParkedSessionsRelay: idle legs park in the poller (no goroutine),
// and data on a parked leg resumes it in either direction; then a drain
// reaches parked sessions too.
func TestParkedSessionsRelay(t *testing.T) {
	backend := startBackend(t, echoWS(t))
	p := startProxy(t, wsRoute(upstream(backend)))
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
	go func() { drained <- p.h.Drain(ctx) }()
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
	p := startProxy(t, wsRoute(upstream(backend)))
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
	r := wsRoute(upstream(backend))
	r.WebSocket.IdleTimeout = parkMargin + 500*time.Millisecond // long enough to park
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
	p := startProxy(t, wsRoute(upstream(backend)))
	c, _ := dialWS(t, p.addr, "/", nil)
	waitFor(t, "legs parked", 5*time.Second, func() bool { return parkedLegs(p.h) == 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := p.h.Drain(ctx); !errors.Is(err, context.DeadlineExceeded) {
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
