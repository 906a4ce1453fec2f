package integration

import (
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// TestShutdownDrainsSessions: on SIGTERM every open WebSocket gets a close
// frame 1001 "going away" (never an abnormal closure), at moments spread
// over the drain window rather than all at once, the backends get 1001
// too, and the process exits 0.
func TestShutdownDrainsSessions(t *testing.T) {
	needBinary(t)
	backend := newWSBackend()
	addr := backend.start(t)
	g := startGateway(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  ws: {targets: ["http://%s"]}
routes:
  - match: {path_prefix: /}
    upstream: ws
timeouts: {drain: 5s}
`, addr))

	// drain 5s: the closes are spread over its first 2.5s, the rest is
	// left for the close handshakes.
	const (
		sessions = 100
		spread   = 2500 * time.Millisecond
	)
	clients := make([]*websocket.Conn, sessions)
	for i := range clients {
		clients[i] = dialWS(t, nil, fmt.Sprintf("ws://%s/drain/%d", g.Addr, i), nil)
		echoOnce(t, clients[i], websocket.TextMessage, fmt.Appendf(nil, "session %d", i))
	}

	// Read all clients at once: each must see the close frame, whatever
	// order the drain reaches them in.
	var wg sync.WaitGroup
	codes := make([]*websocket.CloseError, sessions)
	errs := make([]error, sessions)
	at := make([]time.Duration, sessions)
	sent := time.Now()
	g.signal(syscall.SIGTERM)
	for i, c := range clients {
		wg.Go(func() {
			_ = c.SetReadDeadline(time.Now().Add(ioTimeout))
			for {
				_, _, err := c.ReadMessage()
				if err == nil {
					continue
				}
				at[i] = time.Since(sent)
				if ce, ok := err.(*websocket.CloseError); ok {
					codes[i] = ce // the default close handler has replied
				} else {
					errs[i] = err
				}
				return
			}
		})
	}
	wg.Wait()
	// Spread, not a herd: with uniform moments over 2.5s, the chance that
	// 100 of them all fall in the first 10%, or fewer than 20 after the
	// middle, is below 1e-9.
	early, late := 0, 0
	for _, d := range at {
		if d < spread/10 {
			early++
		}
		if d > spread/2 {
			late++
		}
	}
	if early == sessions || late < 20 {
		t.Errorf("close moments not spread over the %v window: %d of %d in its first 10%%, %d after its middle (moments %v)", spread, early, sessions, late, at)
	}
	for i := range clients {
		switch {
		case errs[i] != nil:
			t.Errorf("session %d: %v, want close 1001", i, errs[i])
		case codes[i].Code != websocket.CloseGoingAway || codes[i].Text != "going away":
			t.Errorf("session %d: close %d %q, want 1001 \"going away\"", i, codes[i].Code, codes[i].Text)
		}
	}
	for i := range sessions {
		if ce := backend.nextClose(t, fmt.Sprintf("/drain/%d", i)); ce.Code != websocket.CloseGoingAway {
			t.Errorf("backend session %d: close %d %q, want 1001", i, ce.Code, ce.Text)
		}
	}
	g.stopped = true
	if code := g.wait(stopTimeout); code != 0 {
		t.Errorf("exit code %d after a clean drain, want 0", code)
	}
	if n := g.countLogs("drain budget exceeded; remaining connections were cut"); n != 0 {
		t.Errorf("drain was forced")
	}
	g.waitLog(ioTimeout, "drained", func(e map[string]any) bool {
		if e["msg"] != "drained" {
			return false
		}
		if e["sessions_closed"] != float64(sessions) || e["sessions_cut"] != float64(0) {
			t.Errorf("drained log: %v sessions closed, %v cut, want %d and 0", e["sessions_closed"], e["sessions_cut"], sessions)
		}
		return true
	})
}

// TestShutdownForcedDrain: a client that never answers the close frame
// cannot hold the process past timeouts.drain; the forced drain exits 1.
func TestShutdownForcedDrain(t *testing.T) {
	needBinary(t)
	backend := newWSBackend()
	addr := backend.start(t)
	g := startGateway(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  ws: {targets: ["http://%s"]}
routes:
  - match: {path_prefix: /}
    upstream: ws
timeouts: {drain: 1s}
`, addr))

	// A raw client completes the handshake, then neither reads nor
	// answers: the 1001 lands in its socket buffer and no reply comes.
	rc := dialRaw(t, g.Addr)
	rc.wsHandshake(g.Addr, "/stuck")
	g.waitLog(ioTimeout, "websocket opened", func(e map[string]any) bool { return e["msg"] == "websocket opened" })

	start := time.Now()
	code := g.stop()
	if elapsed := time.Since(start); elapsed < time.Second {
		t.Errorf("exited %v after SIGTERM, before the 1s drain budget", elapsed)
	}
	// Had the stuck session ended by wsgate's own close-handshake wait
	// (5s) instead, Drain would have returned without error: exit 0 and
	// no "drain budget exceeded" line.
	if code != 1 {
		t.Errorf("exit code %d after a forced drain, want 1", code)
	}
	if n := g.countLogs("drain budget exceeded; remaining connections were cut"); n != 1 {
		t.Errorf("no log line about the forced drain")
	}
	if n := g.countLogs("sessions did not end after their connections were closed"); n != 0 {
		t.Errorf("the forced drain waited for sessions after cutting them")
	}
}

// TestSignalsRightAfterStart: SIGHUP and SIGTERM that arrive just after
// the listening lines neither kill the process by default action nor
// leave it hanging: it exits 0. Both happened once, when wsgate took the
// signals only after logging, and when a Serve goroutine started after
// the shutdown had closed the listeners it knew of.
func TestSignalsRightAfterStart(t *testing.T) {
	needBinary(t)
	const cfg = `listeners:
  - addr: 127.0.0.1:0
  - addr: 127.0.0.1:0
    builtin: demo
routes:
  - match: {path: /}
    respond: {body: ok}
`
	for i := range 10 {
		g := startGateway(t, cfg)
		g.signal(syscall.SIGHUP)
		if code := g.stop(); code != 0 {
			t.Fatalf("start %d: exit code %d after SIGHUP and SIGTERM right after startup, want 0 (-1: killed by the signal)", i, code)
		}
	}
}
