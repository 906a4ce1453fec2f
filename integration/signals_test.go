//go:build linux

package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/fasthttp/websocket"
)

// Signals, issue 11: SIGTERM, SIGINT, SIGHUP and SIGUSR2 are caught from
// before the first listening line until the process exits. This file is
// Linux only: the hand-over tests make this process the subreaper of the
// process wsgate hands over to (PR_SET_CHILD_SUBREAPER).

// TestSIGHUPAtEveryStage: no SIGHUP kills wsgate, whatever the stage of
// its start or shutdown. Each start gets SIGHUP in a tight loop from
// before its first listening line (from its first DNS lookup, which the
// test holds: the earliest moment that can be seen from outside after
// signal.Notify; a SIGHUP before it, while the Go runtime starts or the
// config loads, kills any Go program) through the reloads, the SIGTERM,
// the shutdown of a WebSocket session spread over timeouts.drain, the
// stopped line, until the process has exited. Every fourth start writes
// a CPU profile, which keeps the process alive after its stopped line
// (the deferred StopCPUProfile waits for the profile writer), so that
// SIGHUPs land after it too: a signal.Stop on the way out would let one
// kill the process. Each start must exit 0, its session closed with 1001.
// A SIGTERM lost among the SIGHUPs (see TestSIGTERMAmidSIGHUPs) is sent
// again, and counted: any fails the test.
func TestSIGHUPAtEveryStage(t *testing.T) {
	needBinary(t)
	dns := startSigHeldDNS(t, "backend.test.")
	demo := freeAddr(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "wsgate.yaml")
	cfg := fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
  - addr: %s
    builtin: demo
upstreams:
  demo: {targets: ["http://%s"]}
  named:
    targets: ["http://backend.test:1"]
    resolve: true
    resolvers: [%q]
routes:
  - match: {path: /}
    respond: {body: ok}
  - match: {path: /echo}
    upstream: demo
  - match: {path_prefix: /named}
    upstream: named
timeouts: {drain: 1s}
`, demo, demo, dns.Addr())
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	const (
		starts    = 20
		minStarts = 4
		budget    = 30 * time.Second // no new start after this, past minStarts
	)
	var (
		sent, afterStopped, profiled, lost, reloads, ignored int64
		ran                                                  int
	)
	began := time.Now()
	for i := range starts {
		if i >= minStarts && time.Since(began) > budget {
			break
		}
		ran++
		args := []string{"-config", path}
		profile := i%4 == 3
		if profile {
			args = append(args, "-cpuprofile", filepath.Join(dir, fmt.Sprintf("cpu%d.prof", i)))
		}
		t.Run(fmt.Sprintf("start%02d", i), func(t *testing.T) {
			var r sighupResult
			defer func() {
				sent += r.sent
				lost += int64(r.lost)
				reloads += int64(r.reloads)
				ignored += int64(r.ignored)
				if profile {
					profiled++
					afterStopped += r.afterStopped
				}
			}()
			sighupRun(t, dns, args, &r)
		})
		if t.Failed() {
			break
		}
	}
	t.Logf("%d starts: %d SIGHUPs sent, %d reloads, %d SIGHUPs logged as ignored while shutting down, %d after a stopped line (%d profiled starts), %d SIGTERMs lost among the SIGHUPs and sent again",
		ran, sent, reloads, ignored, afterStopped, profiled, lost)
	if lost > 0 {
		t.Errorf("%d SIGTERMs were lost among SIGHUPs, want none (TestSIGTERMAmidSIGHUPs)", lost)
	}
	if profiled > 0 && afterStopped == 0 && !t.Failed() {
		t.Errorf("no SIGHUP reached a process after its stopped line in %d profiled starts: the test lost its reach", profiled)
	}
}

// sighupResult is what one start of TestSIGHUPAtEveryStage counted.
type sighupResult struct {
	sent, afterStopped int64
	lost               int // SIGTERMs that the SIGHUPs crowded out (sent again)
	reloads, ignored   int
}

// sighupRun is one start of TestSIGHUPAtEveryStage; it fills r as it
// goes, also when it fails.
func sighupRun(t *testing.T, dns *sigHeldDNS, args []string, r *sighupResult) {
	gate := dns.arm()
	defer gate.open()
	p := launchSigFlood(t, args...)
	select {
	case <-gate.queried:
	case <-p.exited:
		t.Fatalf("wsgate ended (%s) before its first DNS lookup\n%s", p.status(), p.log.report())
	case <-time.After(startTimeout):
		t.Fatalf("no DNS lookup from wsgate within %v\n%s", startTimeout, p.log.report())
	}
	// Past signal.Notify and before any listener: the storm starts.
	s := startSigStorm(t, p)
	defer func() { r.sent, r.afterStopped = s.sent.Load(), s.afterStopped.Load() }()
	select {
	case <-s.warm:
	case <-p.exited:
		t.Fatalf("wsgate ended (%s) during the first %d SIGHUPs, before listening\n%s", p.status(), sigWarmSignals, p.log.report())
	}
	gate.open()

	var listening []int
	i := 0
	if !p.await(startTimeout, func(msgs []string) bool {
		for ; i < len(msgs); i++ {
			if msgs[i] == "listening" {
				listening = append(listening, i)
			}
		}
		return len(listening) == 2
	}) {
		t.Fatalf("wsgate (%s) logged %d of 2 listening lines\n%s", p.status(), len(listening), p.log.report())
	}
	addr := ""
	for _, li := range listening {
		if e := p.log.entry(li); e["builtin"] == "" {
			addr, _ = e["addr"].(string)
		}
	}
	// A session through the proxy to the demo echo: the drain has one
	// close to send, at a random moment of its 500ms spread.
	ws := dialWS(t, nil, "ws://"+addr+"/echo", nil)
	echoOnce(t, ws, websocket.TextMessage, []byte("through the storm"))
	closed := make(chan error, 1)
	go func() {
		_ = ws.SetReadDeadline(time.Now().Add(stopTimeout))
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				closed <- err
				return
			}
		}
	}()
	if !p.await(ioTimeout, sigSeen(listening[1], "config reloaded", 1)) {
		t.Fatalf("no config reloaded line after listening, with SIGHUPs arriving (%s)\n%s", p.status(), p.log.report())
	}

	lost, ok := p.terminate(t)
	r.lost = lost
	if !ok {
		t.Fatalf("wsgate did not log shutting down after SIGTERM (%d lost among the SIGHUPs)\n%s", lost, p.log.report())
	}
	select {
	case <-p.exited:
	case <-time.After(stopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.exited
		t.Fatalf("wsgate did not exit within %v after shutting down; killed\n%s", stopTimeout, p.log.report())
	}
	s.stop()
	if p.err != nil {
		t.Fatalf("wsgate ended with %s, want exit code 0 (a SIGHUP must never kill it)\n%s", p.status(), p.log.report())
	}
	msgs, _ := p.log.view()
	stopped := -1
	for i, m := range msgs {
		switch m {
		case "config reloaded":
			r.reloads++
		case "signal ignored while shutting down":
			r.ignored++
		case "stopped":
			stopped = i
		}
	}
	if stopped < 0 {
		t.Errorf("no stopped line\n%s", p.log.report())
	} else if e := p.log.entry(stopped); e["exit_code"] != float64(0) {
		t.Errorf("stopped line with exit_code %v, want 0", e["exit_code"])
	}
	var ce *websocket.CloseError
	switch err := <-closed; {
	case !errors.As(err, &ce):
		t.Errorf("session: %v, want close 1001", err)
	case ce.Code != websocket.CloseGoingAway || ce.Text != "going away":
		t.Errorf("session: close %d %q, want 1001 \"going away\" (the reloads changed nothing)", ce.Code, ce.Text)
	}
	if strings.Contains(p.log.String(), "WARNING: DATA RACE") {
		t.Errorf("the race detector found a data race in wsgate\n%s", p.log.report())
	}
}

// TestSIGTERMAmidSIGHUPs: a SIGTERM that arrives while SIGHUPs keep
// coming is never lost. (It was, when main.go took the four signals on
// one channel of 8: os/signal drops a signal when the channel is full,
// and reloads emptied it slower than a burst of SIGHUPs filled it.) A
// SIGTERM counts as lost when sigLostAfterReloads reloads are logged
// after it without a shutting down line.
func TestSIGTERMAmidSIGHUPs(t *testing.T) {
	needBinary(t)
	path := filepath.Join(t.TempDir(), "wsgate.yaml")
	if err := os.WriteFile(path, []byte(`listeners:
  - addr: 127.0.0.1:0
routes:
  - match: {path: /}
    respond: {body: ok}
timeouts: {drain: 1s}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		p := launchSigFlood(t, "-config", path)
		if !p.await(startTimeout, sigSeen(0, "listening", 1)) {
			t.Fatalf("start %d: not listening (%s)\n%s", i, p.status(), p.log.report())
		}
		s := startSigStorm(t, p)
		if !p.await(ioTimeout, sigSeen(0, "config reloaded", 2*sigChanCap)) {
			t.Fatalf("start %d: no reloads (%s)\n%s", i, p.status(), p.log.report())
		}
		shut, ok := p.sigterm()
		switch {
		case !ok:
			t.Errorf("start %d: wsgate ended (%s) or went quiet after SIGTERM\n%s", i, p.status(), p.log.report())
		case !shut:
			t.Errorf("start %d: SIGTERM lost: %d reloads logged after it, no shutting down line", i, sigLostAfterReloads)
		}
		s.stop()
		if !shut {
			if _, ok := p.terminate(t); !ok {
				t.Fatalf("start %d: no shutting down after the SIGHUPs stopped", i)
			}
		}
		select {
		case <-p.exited:
		case <-time.After(stopTimeout):
			_ = p.cmd.Process.Kill()
			<-p.exited
			t.Fatalf("start %d: no exit within %v; killed", i, stopTimeout)
		}
	}
}

// TestSecondSIGTERMHurriesDrain: a second SIGTERM during the drain sends
// every remaining 1001 at once. The drain spreads its closes over 55s
// (timeouts.drain 60s less 5s for the close handshakes), so without the
// hurry nearly every session would get its close after the 20s guard;
// with it, all of them get it before, and the process exits 0.
func TestSecondSIGTERMHurriesDrain(t *testing.T) {
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
timeouts: {drain: 60s}
`, addr))
	const (
		sessions = 20
		guard    = 20 * time.Second // against 55s of spread: P(all 20 before it) < 2e-9
	)
	clients := make([]*websocket.Conn, sessions)
	for i := range clients {
		clients[i] = dialWS(t, nil, fmt.Sprintf("ws://%s/hurry/%d", g.Addr, i), nil)
		echoOnce(t, clients[i], websocket.TextMessage, fmt.Appendf(nil, "session %d", i))
	}

	g.signal(syscall.SIGTERM)
	dr := g.waitLog(ioTimeout, "draining", func(e map[string]any) bool { return e["msg"] == "draining" })
	if dr["spread_ms"] != float64(55000) || dr["sessions"] != float64(sessions) {
		t.Fatalf("draining line: spread_ms %v, sessions %v; want 55000 and %d", dr["spread_ms"], dr["sessions"], sessions)
	}
	// The readers start before the second SIGTERM, with the guard as
	// their deadline.
	var wg sync.WaitGroup
	errs := make([]error, sessions)
	deadline := time.Now().Add(guard)
	for i, c := range clients {
		wg.Go(func() {
			_ = c.SetReadDeadline(deadline)
			for {
				if _, _, err := c.ReadMessage(); err != nil {
					errs[i] = err
					return
				}
			}
		})
	}
	g.signal(syscall.SIGTERM)
	wg.Wait()
	late := 0
	for i, err := range errs {
		var ce *websocket.CloseError
		switch {
		case isTimeoutErr(err):
			late++
		case !errors.As(err, &ce):
			t.Errorf("session %d: %v, want close 1001", i, err)
		case ce.Code != websocket.CloseGoingAway || ce.Text != "going away":
			t.Errorf("session %d: close %d %q, want 1001 \"going away\"", i, ce.Code, ce.Text)
		}
	}
	if late > 0 {
		t.Errorf("%d of %d sessions got no close within %v of the second SIGTERM: the drain was not hurried", late, sessions, guard)
	}
	g.stopped = true
	if code := g.wait(stopTimeout); code != 0 {
		t.Errorf("exit code %d after a hurried drain, want 0", code)
	}
	if n := g.countLogs("second shutdown signal: closing every session now"); n != 1 {
		t.Errorf("%d second shutdown signal lines, want 1", n)
	}
	if n := g.countLogs("drain budget exceeded; remaining connections were cut"); n != 0 {
		t.Errorf("drain was forced")
	}
	drained := g.waitLog(ioTimeout, "drained", func(e map[string]any) bool { return e["msg"] == "drained" })
	if drained["sessions_closed"] != float64(sessions) || drained["sessions_cut"] != float64(0) {
		t.Errorf("drained line: %v sessions closed, %v cut; want %d and 0", drained["sessions_closed"], drained["sessions_cut"], sessions)
	}
	sigLogOrder(t, g, "shutting down", "draining", "second shutdown signal: closing every session now", "drained", "stopped")
	for i := range sessions {
		if ce := backend.nextClose(t, fmt.Sprintf("/hurry/%d", i)); ce.Code != websocket.CloseGoingAway {
			t.Errorf("backend session %d: close %d %q, want 1001", i, ce.Code, ce.Text)
		}
	}
}

// TestShutdownDelayReadiness: during timeouts.shutdown_delay the
// listeners still accept and serve, a second SIGTERM cuts the delay
// short, and a delay left alone ends by itself.
func TestShutdownDelayReadiness(t *testing.T) {
	needBinary(t)
	const cfg = `listeners:
  - addr: 127.0.0.1:0
routes:
  - match: {path: /}
    respond: {body: ok}
timeouts: {shutdown_delay: %s, drain: 1s}
`
	// A client that opens a new connection per request: each request
	// proves that the listener accepts.
	fresh := &http.Client{Timeout: ioTimeout, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	defer fresh.CloseIdleConnections()

	t.Run("cut short", func(t *testing.T) {
		// 60s: a draining line within the 20s guard can only come from
		// the second SIGTERM, and the requests have the whole minute.
		g := startGateway(t, fmt.Sprintf(cfg, "60s"))
		g.signal(syscall.SIGTERM)
		d := g.waitLog(ioTimeout, "shutdown delayed", func(e map[string]any) bool { return e["msg"] == "shutdown delayed" })
		if d["delay_ms"] != float64(60000) {
			t.Errorf("shutdown delayed line: delay_ms %v, want 60000", d["delay_ms"])
		}
		for i := range 5 {
			resp, body := get(t, fresh, "http://"+g.Addr+"/", nil)
			if resp.StatusCode != http.StatusOK || body != "ok" {
				t.Errorf("request %d during the delay: %d %q, want 200 \"ok\"", i, resp.StatusCode, body)
			}
		}
		if n := g.countLogs("draining"); n != 0 {
			t.Fatalf("draining before the second SIGTERM, inside a 60s delay")
		}
		g.signal(syscall.SIGTERM)
		g.waitLog(stopTimeout, "draining", func(e map[string]any) bool { return e["msg"] == "draining" })
		g.stopped = true
		if code := g.wait(stopTimeout); code != 0 {
			t.Errorf("exit code %d, want 0", code)
		}
		sigLogOrder(t, g, "shutting down", "shutdown delayed", "second shutdown signal: closing every session now", "draining", "drained", "stopped")
	})

	t.Run("expires", func(t *testing.T) {
		g := startGateway(t, fmt.Sprintf(cfg, "2s"))
		sent := time.Now()
		g.signal(syscall.SIGTERM)
		g.waitLog(stopTimeout, "draining", func(e map[string]any) bool { return e["msg"] == "draining" })
		if waited := time.Since(sent); waited < 2*time.Second {
			t.Errorf("draining %v after SIGTERM, before the 2s shutdown_delay", waited)
		}
		g.stopped = true
		if code := g.wait(stopTimeout); code != 0 {
			t.Errorf("exit code %d, want 0", code)
		}
		if n := g.countLogs("second shutdown signal: closing every session now"); n != 0 {
			t.Errorf("a second shutdown signal line after one SIGTERM")
		}
		sigLogOrder(t, g, "shutting down", "shutdown delayed", "draining", "drained", "stopped")
	})
}

// TestHandOver: on SIGUSR2 a new process takes the listening sockets and
// the old one drains and exits 0, and a client opening a new connection
// per request all along sees neither a refused connection nor any other
// failure. The old process's session gets its 1001; the new process
// serves new sessions. timeouts.shutdown_delay is 60s: the hand-over
// skips it (the new process accepts already), so the old process exits
// well within the 20s guard.
func TestHandOver(t *testing.T) {
	needBinary(t)
	backend := newWSBackend()
	baddr := backend.start(t)
	path := filepath.Join(t.TempDir(), "wsgate.yaml")
	if err := os.WriteFile(path, fmt.Appendf(nil, `listeners:
  - addr: 127.0.0.1:0
upstreams:
  app: {targets: ["http://%s"]}
routes:
  - match: {path: /}
    respond: {body: ok}
  - match: {path_prefix: /}
    upstream: app
timeouts: {drain: 2s, shutdown_delay: 60s}
admin: {addr: 127.0.0.1:0}
`, baddr), 0o600); err != nil {
		t.Fatal(err)
	}
	h := startHandOverGateway(t, path)
	oldListeners := slices.Clone(h.Listeners)

	old := dialWS(t, nil, "ws://"+h.Addr+"/ws/old", nil)
	echoOnce(t, old, websocket.TextMessage, []byte("before the hand-over"))
	oldClosed := sigReadClose(old)

	load := startHandOverLoad(t, "http://"+h.Addr, 2)
	if !load.waitFor(200, ioTimeout) {
		t.Fatalf("load: %d requests within %v, want 200", load.total(), ioTimeout)
	}
	atUSR2 := load.total()
	h.signal(syscall.SIGUSR2)
	started := h.waitLog(ioTimeout, "hand-over: new process started", func(e map[string]any) bool {
		return e["msg"] == "hand-over: new process started"
	})
	child := h.child(started)
	h.waitLog(startTimeout, "took over the listening sockets", func(e map[string]any) bool {
		return e["msg"] == "took over the listening sockets"
	})
	h.waitLog(startTimeout, "hand-over: new process ready; draining", func(e map[string]any) bool {
		return e["msg"] == "hand-over: new process ready; draining"
	})
	select {
	case err := <-oldClosed:
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway || ce.Text != "going away" {
			t.Errorf("session on the old process: %v, want close 1001 \"going away\"", err)
		}
	case <-time.After(stopTimeout):
		t.Errorf("session on the old process: no close within %v of the hand-over", stopTimeout)
	}
	h.stopped = true
	if code := h.wait(stopTimeout); code != 0 {
		t.Errorf("old process: exit code %d after the hand-over, want 0", code)
	}
	atExit := load.total()
	if !load.waitFor(atExit+300, ioTimeout) {
		t.Errorf("load: %d requests within %v after the old process exited, want 300", load.total()-atExit, ioTimeout)
	}
	load.halt()
	ok, refused, failed := load.ok.Load(), load.refused.Load(), load.failed.Load()
	t.Logf("load: %d requests, %d during the hand-over (SIGUSR2 to the old process's exit), %d refused, %d other failures", ok+refused+failed, atExit-atUSR2, refused, failed)
	if refused != 0 || failed != 0 {
		t.Errorf("load: %d connections refused and %d other failures, want none; first: %q", refused, failed, load.firstErrors())
	}
	if atExit == atUSR2 {
		t.Errorf("load: no request completed during the hand-over")
	}

	// The old process's own lines: its drain, without shutdown_delay.
	if n := h.countLogs("shutdown delayed"); n != 0 {
		t.Errorf("the old process waited for shutdown_delay")
	}
	drained := h.waitLog(ioTimeout, "drained", func(e map[string]any) bool { return e["msg"] == "drained" })
	if drained["sessions_closed"] != float64(1) || drained["sessions_cut"] != float64(0) {
		t.Errorf("old process drained line: %v sessions closed, %v cut; want 1 and 0", drained["sessions_closed"], drained["sessions_cut"])
	}
	if e := h.waitLog(ioTimeout, "stopped", func(e map[string]any) bool { return e["msg"] == "stopped" }); e["exit_code"] != float64(0) {
		t.Errorf("old process stopped line: exit_code %v, want 0", e["exit_code"])
	}
	if ce := backend.nextClose(t, "/ws/old"); ce.Code != websocket.CloseGoingAway {
		t.Errorf("backend of the old session: close %d %q, want 1001", ce.Code, ce.Text)
	}
	// The new process listens on the same sockets.
	entries, _ := h.logs.snapshot()
	var addrs []string
	for _, e := range entries {
		if e["msg"] == "listening" {
			a, _ := e["addr"].(string)
			addrs = append(addrs, a)
		}
	}
	if want := len(oldListeners); len(addrs) != 2*want || !slices.Equal(addrs[:want], addrs[want:]) {
		t.Errorf("listening lines %q: want the old process's then the same from the new one", addrs)
	}
	// The admin listener too: the new process answers on the old one's
	// address (port 0 in the config), the old one has exited.
	var admins []string
	for _, e := range entries {
		if e["msg"] == "admin listening" {
			a, _ := e["addr"].(string)
			admins = append(admins, a)
		}
	}
	if n := h.countLogs("admin server failed"); n != 0 {
		t.Errorf("%d \"admin server failed\" lines: closing the old process's admin listener is not a failure", n)
	}
	if len(admins) != 2 || admins[0] != admins[1] {
		t.Errorf("admin listening lines %q: want the old process's address, then the same from the new one", admins)
	} else if resp, err := httpClient().Get("http://" + admins[1] + "/readyz"); err != nil {
		t.Errorf("admin API after the hand-over: %v", err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET /readyz after the hand-over: %d, want 200 from the new process", resp.StatusCode)
		}
	}

	// The new process serves sessions, and stops cleanly.
	fresh := dialWS(t, nil, "ws://"+h.Addr+"/ws/new", nil)
	echoOnce(t, fresh, websocket.TextMessage, []byte("after the hand-over"))
	freshClosed := sigReadClose(fresh)
	code, err := h.stopChild(child)
	if err != nil || code != 0 {
		t.Errorf("new process: exit code %d (%v) after SIGTERM, want 0", code, err)
	}
	if err := <-freshClosed; !websocket.IsCloseError(err, websocket.CloseGoingAway) {
		t.Errorf("session on the new process: %v, want close 1001", err)
	}
	if n := h.countLogs("stopped"); n != 2 {
		t.Errorf("%d stopped lines, want 2 (old and new process)", n)
	}
}

// TestHandOverFailedChild: a new process that cannot start (the config
// file turned invalid, so it exits 2 before it is ready) leaves the old
// one serving, ready for another hand-over attempt, its listening socket
// still non-blocking, and a later SIGTERM exits it 0.
func TestHandOverFailedChild(t *testing.T) {
	needBinary(t)
	path := filepath.Join(t.TempDir(), "wsgate.yaml")
	const valid = `listeners:
  - addr: 127.0.0.1:0
routes:
  - match: {path: /}
    respond: {body: ok}
timeouts: {drain: 1s}
`
	if err := os.WriteFile(path, []byte(valid), 0o600); err != nil {
		t.Fatal(err)
	}
	h := startHandOverGateway(t, path)
	fresh := &http.Client{Timeout: ioTimeout, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	defer fresh.CloseIdleConnections()
	check := func(when string) {
		t.Helper()
		resp, body := get(t, fresh, "http://"+h.Addr+"/", nil)
		if resp.StatusCode != http.StatusOK || body != "ok" {
			t.Errorf("%s: %d %q, want 200 \"ok\"", when, resp.StatusCode, body)
		}
	}
	check("before the hand-over")
	if err := os.WriteFile(path, []byte(valid+"tiemouts: {drain: 1s}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const failedMsg = "hand-over failed: the new process exited before it was ready; still serving"
	for attempt := 1; attempt <= 2; attempt++ {
		h.signal(syscall.SIGUSR2)
		e := sigWaitNth(h.gw, startTimeout, failedMsg, attempt)
		if e["error"] != "exit status 2" {
			t.Errorf("attempt %d: hand-over failed with error %v, want \"exit status 2\" (a config error)", attempt, e["error"])
		}
		check(fmt.Sprintf("after failed hand-over %d", attempt))
	}
	if !strings.Contains(h.logs.String(), `unknown key "tiemouts"`) {
		t.Errorf("the new process did not report the config error")
	}
	for _, msg := range []string{"hand-over: new process ready; draining", "hand-over already in progress or shutting down; SIGUSR2 ignored", "took over the listening sockets"} {
		if n := h.countLogs(msg); n != 0 {
			t.Errorf("%d lines %q, want none", n, msg)
		}
	}
	// A blocking socket would hold the shutdown: the accept(2) that the
	// requests above left running blocks in the kernel, and closing the
	// listener waits for it.
	if sigListenerBlocking(t, h.cmd.Process.Pid, h.Addr) {
		const msg = "after a failed hand-over the old process's listening socket is in blocking mode: " + sigBlockingBug
		h.stopped = true
		_ = h.cmd.Process.Kill()
		t.Fatal(msg)
	}
	if code := h.stop(); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
}

// TestHandOverRequestDuringStart: a request that the old process serves
// while the new one starts does not keep the old one from exiting after
// the hand-over, nor costs the next client its request. The new process
// is held at its first DNS lookup (an upstream with resolve), after it
// got the sockets and before it takes them.
func TestHandOverRequestDuringStart(t *testing.T) {
	needBinary(t)
	dns := startSigHeldDNS(t, "backend.test.")
	path := filepath.Join(t.TempDir(), "wsgate.yaml")
	if err := os.WriteFile(path, fmt.Appendf(nil, `listeners:
  - addr: 127.0.0.1:0
upstreams:
  named:
    targets: ["http://backend.test:1"]
    resolve: true
    resolve_every: 1h
    resolvers: [%q]
routes:
  - match: {path: /}
    respond: {body: ok}
  - match: {path_prefix: /named}
    upstream: named
timeouts: {drain: 1s}
`, dns.Addr()), 0o600); err != nil {
		t.Fatal(err)
	}
	h := startHandOverGateway(t, path)
	fresh := &http.Client{Timeout: ioTimeout, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	defer fresh.CloseIdleConnections()

	gate := dns.arm()
	defer gate.open()
	h.signal(syscall.SIGUSR2)
	h.child(h.waitLog(ioTimeout, "hand-over: new process started", func(e map[string]any) bool {
		return e["msg"] == "hand-over: new process started"
	}))
	select {
	case <-gate.queried:
	case <-time.After(startTimeout):
		t.Fatalf("no DNS lookup from the new process within %v", startTimeout)
	}
	if sigListenerBlocking(t, h.cmd.Process.Pid, h.Addr) {
		const msg = "while the new process of a hand-over starts, the old process's listening socket is in blocking mode: " + sigBlockingBug
		// The old process may hang in its drain even without a request,
		// if its accept loop had not yet called accept(2) when the
		// socket turned blocking: kill it once the new process is
		// ready. Cleanup stops the new process.
		gate.open()
		h.waitLog(startTimeout, "hand-over: new process ready; draining", func(e map[string]any) bool {
			return e["msg"] == "hand-over: new process ready; draining"
		})
		h.stopped = true
		_ = h.cmd.Process.Kill()
		h.wait(stopTimeout)
		t.Fatal(msg)
	}
	resp, body := get(t, fresh, "http://"+h.Addr+"/", nil)
	if resp.StatusCode != http.StatusOK || body != "ok" {
		t.Errorf("request during the new process's start: %d %q, want 200 \"ok\"", resp.StatusCode, body)
	}
	gate.open()
	h.waitLog(startTimeout, "hand-over: new process ready; draining", func(e map[string]any) bool {
		return e["msg"] == "hand-over: new process ready; draining"
	})
	// A 1s drain with nothing to drain: the 20s guard is generous.
	h.stopped = true
	stuck := false
	select {
	case <-h.exited:
	case <-time.After(stopTimeout):
		stuck = true
		t.Errorf("the old process did not exit within %v of the hand-over", stopTimeout)
	}
	resp, body = get(t, fresh, "http://"+h.Addr+"/", nil)
	if resp.StatusCode != http.StatusOK || body != "ok" {
		t.Errorf("request after the hand-over: %d %q, want 200 \"ok\"", resp.StatusCode, body)
	}
	if stuck {
		_ = h.cmd.Process.Kill()
	}
	if code := h.wait(stopTimeout); !stuck && code != 0 {
		t.Errorf("old process: exit code %d, want 0", code)
	}
}

// sigBlockingBug explains what sigListenerBlocking guards against.
const sigBlockingBug = "a listening socket the old process shares with the new one is in blocking mode (as when os/exec's Fd() " +
	"on ExtraFiles clears O_NONBLOCK on the shared file description): every accept(2) of the old process then blocks in " +
	"the kernel, and closing the listener waits for it, beyond timeouts.drain and a second SIGTERM, until some client " +
	"connects; that client is accepted by the stopping server and dropped unanswered"

// sigListenerBlocking reports whether the TCP listening socket on addr
// (127.0.0.1:port) of process pid is in blocking mode: O_NONBLOCK clear in
// the flags of /proc/PID/fdinfo/FD, for the descriptor whose socket inode
// /proc/net/tcp lists in state LISTEN on that port.
func sigListenerBlocking(t *testing.T, pid int, addr string) bool {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	var portNum int
	if _, err := fmt.Sscan(port, &portNum); err != nil {
		t.Fatal(err)
	}
	tcp, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	local := fmt.Sprintf("0100007F:%04X", portNum)
	inode := ""
	for _, line := range lines(string(tcp)) {
		f := strings.Fields(line)
		if len(f) > 9 && f[1] == local && f[3] == "0A" {
			inode = f[9]
		}
	}
	if inode == "" {
		t.Fatalf("no listening socket on %s in /proc/net/tcp", addr)
	}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		if link, _ := os.Readlink(filepath.Join(dir, fd.Name())); link != "socket:["+inode+"]" {
			continue
		}
		info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range lines(string(info)) {
			if v, ok := strings.CutPrefix(line, "flags:"); ok {
				var flags int
				if _, err := fmt.Sscanf(strings.TrimSpace(v), "%o", &flags); err != nil {
					t.Fatalf("fdinfo flags %q: %v", v, err)
				}
				return flags&syscall.O_NONBLOCK == 0
			}
		}
	}
	t.Fatalf("process %d has no descriptor for the socket listening on %s", pid, addr)
	return false
}

// sigWaitNth waits for the nth line with msg and returns it.
func sigWaitNth(g *gw, timeout time.Duration, msg string, n int) map[string]any {
	g.t.Helper()
	deadline := time.After(timeout)
	for {
		entries, changed := g.logs.snapshot()
		seen := 0
		for _, e := range entries {
			if e["msg"] == msg {
				if seen++; seen == n {
					return e
				}
			}
		}
		select {
		case <-changed:
		case <-deadline:
			g.t.Fatalf("%d of %d lines %q within %v", seen, n, msg, timeout)
			return nil
		}
	}
}

// sigLogOrder checks that the first line of each msg is there, in this
// order.
func sigLogOrder(t *testing.T, g *gw, msgs ...string) {
	t.Helper()
	entries, _ := g.logs.snapshot()
	prev := -1
	for _, msg := range msgs {
		at := slices.IndexFunc(entries, func(e map[string]any) bool { return e["msg"] == msg })
		switch {
		case at < 0:
			t.Errorf("no %q line", msg)
			return
		case at < prev:
			t.Errorf("%q logged before %q, want after (order %q)", msg, msgs[slices.Index(msgs, msg)-1], msgs)
			return
		}
		prev = at
	}
}

// sigReadClose reads c until an error (the peer's close frame, normally)
// and sends it on the returned channel; stopTimeout bounds the wait.
func sigReadClose(c *websocket.Conn) <-chan error {
	ch := make(chan error, 1)
	go func() {
		_ = c.SetReadDeadline(time.Now().Add(stopTimeout))
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				ch <- err
				return
			}
		}
	}()
	return ch
}

// sigFloodLog collects the output of a wsgate process that logs a line
// per SIGHUP: the msg of every line in order, readable without copying
// (logBuffer's snapshot copies every entry on every line, quadratic in a
// flood), and the raw lines for failure reports.
type sigFloodLog struct {
	mu      sync.Mutex
	partial []byte        // guarded by mu
	raw     []string      // guarded by mu
	msgs    []string      // guarded by mu: each line's msg, "" if it is not JSON
	changed chan struct{} // guarded by mu: closed and replaced on every new line
	stopped atomic.Bool   // a stopped line was written
}

func (f *sigFloodLog) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.partial = append(f.partial, p...)
	added := false
	for {
		i := bytes.IndexByte(f.partial, '\n')
		if i < 0 {
			break
		}
		line := string(f.partial[:i])
		f.partial = f.partial[i+1:]
		var e struct {
			Msg string `json:"msg"`
		}
		_ = json.Unmarshal([]byte(line), &e)
		f.raw = append(f.raw, line)
		f.msgs = append(f.msgs, e.Msg)
		if e.Msg == "stopped" {
			f.stopped.Store(true)
		}
		added = true
	}
	if added {
		close(f.changed)
		f.changed = make(chan struct{})
	}
	return len(p), nil
}

// view returns the msgs so far and a channel closed when another line
// arrives. Elements below the returned length are never written again,
// so the caller reads them without the lock.
func (f *sigFloodLog) view() ([]string, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(f.msgs)
	return f.msgs[:n:n], f.changed
}

// entry returns line i decoded.
func (f *sigFloodLog) entry(i int) map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	var e map[string]any
	_ = json.Unmarshal([]byte(f.raw[i]), &e)
	return e
}

func (f *sigFloodLog) String() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.raw, "\n") + "\n" + string(f.partial)
}

// report returns the count of each msg and the first and last lines.
func (f *sigFloodLog) report() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	counts := map[string]int{}
	for _, m := range f.msgs {
		counts[m]++
	}
	var b strings.Builder
	fmt.Fprintf(&b, "wsgate stderr: %d lines; by msg: %v\n", len(f.raw), counts)
	const head, tail = 30, 60
	for i, l := range f.raw {
		switch {
		case i < head || i >= len(f.raw)-tail:
			b.WriteString(l + "\n")
		case i == head:
			fmt.Fprintf(&b, "[... %d lines ...]\n", len(f.raw)-head-tail)
		}
	}
	b.Write(f.partial)
	return b.String()
}

// sigFloodProc is a wsgate process started without waiting for it to
// listen, its output in a sigFloodLog.
type sigFloodProc struct {
	cmd    *exec.Cmd
	log    *sigFloodLog
	exited chan struct{}
	err    error // Wait's; set before exited is closed
}

// launchSigFlood starts wsgate with args. Cleanup ends it if the test
// did not (SIGTERM until it shuts down, then SIGKILL after stopTimeout).
func launchSigFlood(t *testing.T, args ...string) *sigFloodProc {
	t.Helper()
	p := &sigFloodProc{log: &sigFloodLog{changed: make(chan struct{})}, exited: make(chan struct{})}
	p.cmd = exec.Command(needBinary(t), args...)
	p.cmd.Env = processEnv()
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait() // returns after the output is copied
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
			return
		default:
		}
		p.terminate(t)
		select {
		case <-p.exited:
		case <-time.After(stopTimeout):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

// status describes how the process ended, or that it has not.
func (p *sigFloodProc) status() string {
	select {
	case <-p.exited:
	default:
		return "running"
	}
	var ee *exec.ExitError
	switch {
	case p.err == nil:
		return "exit code 0"
	case errors.As(p.err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return "killed by " + ws.Signal().String()
		}
		return fmt.Sprintf("exit code %d", ee.ExitCode())
	}
	return p.err.Error()
}

// await waits until done, given the msgs so far, reports true; false if
// the process exits first (its whole output read) or timeout passes.
// done is called with ever longer views of the same lines: it keeps its
// own cursor.
func (p *sigFloodProc) await(timeout time.Duration, done func(msgs []string) bool) bool {
	deadline := time.After(timeout)
	for {
		msgs, changed := p.log.view()
		if done(msgs) {
			return true
		}
		select {
		case <-changed:
		case <-p.exited:
			msgs, _ := p.log.view()
			return done(msgs)
		case <-deadline:
			return false
		}
	}
}

// sigSeen returns an await condition: msg seen n times from index from.
func sigSeen(from int, msg string, n int) func([]string) bool {
	i, seen := from, 0
	return func(msgs []string) bool {
		for ; i < len(msgs); i++ {
			if msgs[i] == msg {
				seen++
			}
		}
		return seen >= n
	}
}

const (
	// sigChanCap bounds the SIGHUPs wsgate may hold when a SIGTERM comes
	// (main.go: its own channel of 1, and the SIGTERM goes first; 8 was
	// the one channel all four signals once shared).
	sigChanCap = 8
	// sigLostAfterReloads reloads logged after a SIGTERM, without a
	// shutting down line, prove it lost: had it entered its channel, at
	// most sigChanCap reloads were queued before it, and one running.
	sigLostAfterReloads = sigChanCap + 4
)

// sigterm sends one SIGTERM and reports whether wsgate logged shutting
// down (shut) or instead sigLostAfterReloads reloads, which prove the
// SIGTERM lost; ok is false if neither happened within stopTimeout or
// the process ended.
func (p *sigFloodProc) sigterm() (shut, ok bool) {
	msgs, _ := p.log.view()
	i, reloads := len(msgs), 0
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return false, false
	}
	ok = p.await(stopTimeout, func(msgs []string) bool {
		for ; i < len(msgs); i++ {
			switch msgs[i] {
			case "shutting down":
				shut = true
				return true
			case "config reloaded", "config reload failed; keeping the running config":
				reloads++
			}
		}
		return reloads >= sigLostAfterReloads
	})
	return shut, ok
}

// terminate sends SIGTERM until wsgate logs shutting down, and returns
// how many were lost among SIGHUPs (see TestSIGTERMAmidSIGHUPs) and
// whether it got there.
func (p *sigFloodProc) terminate(t *testing.T) (lost int, ok bool) {
	for lost < 1000 {
		shut, ok := p.sigterm()
		if !ok {
			return lost, false
		}
		if shut {
			return lost, true
		}
		lost++
	}
	return lost, false
}

// sigWarmSignals SIGHUPs are sent before the storm reports itself warm.
const sigWarmSignals = 100

// sigStorm sends SIGHUP to a process in a tight loop until it has exited
// (through its pidfd: never to another process that reuses the pid).
type sigStorm struct {
	sent         atomic.Int64
	afterStopped atomic.Int64  // sent after the process wrote its stopped line
	warm         chan struct{} // closed once sigWarmSignals were sent
	quit         chan struct{}
	quitOnce     sync.Once
	done         chan struct{}
}

func startSigStorm(t *testing.T, p *sigFloodProc) *sigStorm {
	s := &sigStorm{warm: make(chan struct{}), quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			select {
			case <-s.quit:
				return
			case <-p.exited:
				return
			default:
			}
			if p.cmd.Process.Signal(syscall.SIGHUP) != nil {
				return // reaped
			}
			stopped := p.log.stopped.Load()
			if s.sent.Add(1) == sigWarmSignals {
				close(s.warm)
			}
			if stopped {
				s.afterStopped.Add(1)
			}
		}
	}()
	t.Cleanup(s.stop)
	return s
}

// stop ends the storm and waits for its goroutine.
func (s *sigStorm) stop() {
	s.quitOnce.Do(func() { close(s.quit) })
	<-s.done
}

// sigHeldDNS is a DNS server on UDP 127.0.0.1:0 that answers like
// dnsServer, but while a gate is armed holds the queries until the test
// opens it: a wsgate process that resolves an upstream name at start
// waits there, after signal.Notify and before its first listener.
type sigHeldDNS struct {
	pc   net.PacketConn
	ans  *dnsServer // builds the answers; its own socket is unused
	quit chan struct{}

	mu   sync.Mutex
	gate *sigDNSGate // guarded by mu
}

type sigDNSGate struct {
	queried chan struct{} // closed when the first query arrives
	release chan struct{} // closed by open
	once    sync.Once
}

func startSigHeldDNS(t *testing.T, name string) *sigHeldDNS {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &sigHeldDNS{pc: pc, ans: &dnsServer{name: name, queries: map[string]int{}}, quit: make(chan struct{})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.serve()
	}()
	t.Cleanup(func() {
		close(h.quit)
		pc.Close()
		<-done
	})
	return h
}

func (h *sigHeldDNS) Addr() string { return h.pc.LocalAddr().String() }

// arm holds every query from now until the returned gate is opened.
func (h *sigHeldDNS) arm() *sigDNSGate {
	g := &sigDNSGate{queried: make(chan struct{}), release: make(chan struct{})}
	h.mu.Lock()
	h.gate = g
	h.mu.Unlock()
	return g
}

func (g *sigDNSGate) open() { g.once.Do(func() { close(g.release) }) }

func (h *sigHeldDNS) serve() {
	buf := make([]byte, 1500)
	for {
		n, from, err := h.pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		h.mu.Lock()
		g := h.gate
		h.mu.Unlock()
		if g != nil {
			select {
			case <-g.queried:
			default:
				close(g.queried) // only this goroutine closes it
			}
			select {
			case <-g.release:
			case <-h.quit:
				return
			}
		}
		if resp, ok := h.ans.answer(buf[:n]); ok {
			_, _ = h.pc.WriteTo(resp, from)
		}
	}
}

// Linux prctl options (linux/prctl.h).
const (
	prSetChildSubreaper = 36
	prGetChildSubreaper = 37
)

// sigSubreaper makes this test process the subreaper of its descendants
// until the test ends: a process wsgate starts by a hand-over outlives
// wsgate, and becomes this process's child, to be waited for with its exit
// code (else init would reap it, and it could not be waited for at all).
func sigSubreaper(t *testing.T) {
	t.Helper()
	var was int32
	if _, _, errno := syscall.Syscall(syscall.SYS_PRCTL, prGetChildSubreaper, uintptr(unsafe.Pointer(&was)), 0); errno != 0 {
		t.Fatalf("prctl(PR_GET_CHILD_SUBREAPER): %v", errno)
	}
	if _, _, errno := syscall.Syscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		t.Fatalf("prctl(PR_SET_CHILD_SUBREAPER): %v", errno)
	}
	t.Cleanup(func() {
		if was == 0 {
			_, _, _ = syscall.Syscall(syscall.SYS_PRCTL, prSetChildSubreaper, 0, 0)
		}
	})
}

// handOverGW is a wsgate process for hand-over tests. Its output goes to
// a pipe this test reads, not through exec's copying goroutine: the
// process it hands over to inherits the pipe and outlives it, and
// exec.Cmd.Wait waits for that copy, so it would wait for the new process
// too. Here Wait returns when wsgate itself exits, and the log holds the
// lines of both processes.
type handOverGW struct {
	*gw
	mu       sync.Mutex
	children map[int]*os.Process // guarded by mu: started by hand-over, not yet stopped
}

// startHandOverGateway starts wsgate -config path and waits until every
// listener is logged. Cleanup stops it, then every process it started by
// hand-over (this process's children by then).
func startHandOverGateway(t *testing.T, path string) *handOverGW {
	t.Helper()
	bin := needBinary(t)
	want, err := countListeners(path)
	if err != nil {
		t.Fatalf("count listeners in %s: %v", path, err)
	}
	sigSubreaper(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	g := &gw{t: t, logs: newLogBuffer(), stdout: newLogBuffer(), exited: make(chan struct{})}
	g.cmd = exec.Command(bin, "-config", path)
	g.cmd.Env = processEnv()
	g.cmd.Stdout, g.cmd.Stderr = w, w
	err = g.cmd.Start()
	w.Close()
	if err != nil {
		r.Close()
		t.Fatal(err)
	}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		_, _ = io.Copy(g.logs, r)
	}()
	go func() {
		err := g.cmd.Wait()
		g.exitCode = exitCode(err)
		close(g.exited)
	}()
	h := &handOverGW{gw: g, children: map[int]*os.Process{}}
	t.Cleanup(func() { h.cleanup(r, copied) })
	g.awaitListeners(want)
	return h
}

// child returns the process a "hand-over: new process started" line
// names, by a pidfd taken now, while wsgate (its parent) still runs.
func (h *handOverGW) child(started map[string]any) *os.Process {
	h.t.Helper()
	pid, ok := started["pid"].(float64)
	if !ok || pid <= 0 {
		h.t.Fatalf("hand-over line without a pid: %v", started)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if p := h.children[int(pid)]; p != nil {
		return p
	}
	p, err := os.FindProcess(int(pid))
	if err != nil {
		h.t.Fatalf("find process %d: %v", int(pid), err)
	}
	h.children[int(pid)] = p
	return p
}

// stopChild stops a process started by hand-over, once wsgate has exited
// (the child is this process's then): SIGTERM, and another once it logs
// shutting down, which cuts its shutdown_delay and hurries its drain. It
// returns the exit code, -1 if the process died of a signal.
func (h *handOverGW) stopChild(p *os.Process) (int, error) {
	h.mu.Lock()
	delete(h.children, p.Pid)
	h.mu.Unlock()
	select {
	case <-h.exited:
	default:
		return -1, errors.New("the old process still runs: its child cannot be waited for")
	}
	n := h.countLogs("shutting down")
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return -1, fmt.Errorf("SIGTERM: %w", err)
	}
	var (
		state *os.ProcessState
		err   error
	)
	waited := make(chan struct{})
	go func() {
		defer close(waited)
		state, err = p.Wait()
	}()
	deadline := time.After(stopTimeout)
	for second := false; !second; {
		entries, changed := h.logs.snapshot()
		seen := 0
		for _, e := range entries {
			if e["msg"] == "shutting down" {
				seen++
			}
		}
		if seen > n {
			_ = p.Signal(syscall.SIGTERM)
			second = true
			continue
		}
		select {
		case <-changed:
		case <-waited:
			second = true
		case <-deadline:
			second = true
		}
	}
	select {
	case <-waited:
	case <-deadline:
		_ = p.Kill()
		<-waited
		return -1, fmt.Errorf("no exit within %v of SIGTERM; killed", stopTimeout)
	}
	if err != nil {
		return -1, err
	}
	return state.ExitCode(), nil
}

func (h *handOverGW) cleanup(r *os.File, copied <-chan struct{}) {
	t := h.t
	select {
	case <-h.exited:
	default:
		_ = h.cmd.Process.Signal(syscall.SIGTERM)
		h.hurry()
		if code := h.wait(stopTimeout); !h.stopped && code != 0 {
			t.Errorf("wsgate exited with code %d after SIGTERM, want 0", code)
		}
	}
	// A process named by a started line and by no failed line is this
	// process's child now (alive, or a zombie that keeps its pid): wsgate
	// reaps only those it logs as failed.
	entries, _ := h.logs.snapshot()
	reaped := map[float64]bool{}
	for _, e := range entries {
		if msg, _ := e["msg"].(string); strings.HasPrefix(msg, "hand-over failed") {
			if pid, ok := e["pid"].(float64); ok {
				reaped[pid] = true
			}
		}
	}
	for _, e := range entries {
		if pid, _ := e["pid"].(float64); e["msg"] == "hand-over: new process started" && !reaped[pid] {
			h.child(e)
		}
	}
	h.mu.Lock()
	left := slices.Collect(maps.Values(h.children))
	h.mu.Unlock()
	for _, p := range left {
		if code, err := h.stopChild(p); err != nil && !errors.Is(err, os.ErrProcessDone) {
			t.Errorf("process %d started by hand-over: %v", p.Pid, err)
		} else if err == nil && code != 0 {
			t.Errorf("process %d started by hand-over: exit code %d after SIGTERM, want 0", p.Pid, code)
		}
	}
	// Every writer of the pipe has exited: the copy ends.
	select {
	case <-copied:
	case <-time.After(ioTimeout):
		t.Errorf("output pipe still open %v after every process ended", ioTimeout)
	}
	r.Close()
	<-copied
	if strings.Contains(h.logs.String(), "WARNING: DATA RACE") {
		t.Errorf("the race detector found a data race in wsgate")
	}
	if t.Failed() {
		t.Logf("wsgate stderr (both processes):\n%s", h.logs.String())
	}
}

// handOverLoad sends GET requests from a few goroutines, each on a new
// connection (the transport sends Connection: close), until halted, and
// counts the outcomes: a refused connection would be a moment when no
// process accepted on the socket. Every other request goes to the
// backend, so both answers from wsgate and forwarded ones are counted.
type handOverLoad struct {
	ok, refused, failed atomic.Int64
	progress            chan struct{} // a request ended (capacity 1, sent without blocking)
	stop                chan struct{}
	stopOnce            sync.Once
	wg                  sync.WaitGroup

	mu   sync.Mutex
	errs []string // guarded by mu: the first failures
}

// handOverLoadMax bounds the requests of each goroutine.
const handOverLoadMax = 20000

func startHandOverLoad(t *testing.T, base string, workers int) *handOverLoad {
	l := &handOverLoad{progress: make(chan struct{}, 1), stop: make(chan struct{})}
	for w := range workers {
		l.wg.Go(func() {
			tr := &http.Transport{DisableKeepAlives: true, Proxy: nil}
			defer tr.CloseIdleConnections()
			c := &http.Client{Timeout: ioTimeout, Transport: tr}
			for n := range handOverLoadMax {
				select {
				case <-l.stop:
					return
				default:
				}
				path := "/"
				if n%2 == 1 {
					path = fmt.Sprintf("/api/%d/%d", w, n)
				}
				l.one(c, base, path)
				select {
				case l.progress <- struct{}{}:
				default:
				}
			}
		})
	}
	t.Cleanup(l.halt)
	return l
}

func (l *handOverLoad) one(c *http.Client, base, path string) {
	fail := func(err string) {
		l.failed.Add(1)
		l.note(path + ": " + err)
	}
	resp, err := c.Get(base + path)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			l.refused.Add(1)
			l.note(path + ": " + err.Error())
			return
		}
		fail(err.Error())
		return
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	switch {
	case err != nil:
		fail("read body: " + err.Error())
	case resp.StatusCode != http.StatusOK:
		fail(fmt.Sprintf("status %d %.100q", resp.StatusCode, body))
	case path == "/" && string(body) != "ok":
		fail(fmt.Sprintf("body %.100q, want \"ok\"", body))
	case path != "/" && !bytes.Contains(body, []byte(`"Path":"`+path+`"`)):
		fail(fmt.Sprintf("body %.200q, not the backend's echo of %s", body, path))
	default:
		l.ok.Add(1)
	}
}

func (l *handOverLoad) note(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) < 5 {
		l.errs = append(l.errs, s)
	}
}

func (l *handOverLoad) firstErrors() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.errs)
}

func (l *handOverLoad) total() int64 { return l.ok.Load() + l.refused.Load() + l.failed.Load() }

// waitFor waits until n requests in all have ended; false after timeout.
func (l *handOverLoad) waitFor(n int64, timeout time.Duration) bool {
	deadline := time.After(timeout)
	for l.total() < n {
		select {
		case <-l.progress:
		case <-deadline:
			return false
		}
	}
	return true
}

// halt stops the load and waits for its goroutines.
func (l *handOverLoad) halt() {
	l.stopOnce.Do(func() { close(l.stop) })
	l.wg.Wait()
}
