//go:build unix

package integration

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// Live reconfiguration end to end: the test rewrites the config file by
// rename (as editors and config managers do) and sends SIGHUP. The file
// watcher may reload as well, so one rewrite gives one or two reload
// lines: every wait is for a log line after the rewrite that shows the
// effect wanted (or for what a client sees), never a count of reload
// lines, and every rewrite means the same whichever reload reads it.

// reloadGateway is a running wsgate whose config file the test rewrites.
type reloadGateway struct {
	*gw
	path string
}

// startReloadGateway writes yamlText to a file of its own and starts
// wsgate on it.
func startReloadGateway(t *testing.T, yamlText string) *reloadGateway {
	t.Helper()
	path := filepath.Join(t.TempDir(), "wsgate.yaml")
	writeFile(t, path, []byte(yamlText))
	return &reloadGateway{gw: startGatewayFile(t, path, nil), path: path}
}

// reload renames yamlText over the config file, sends SIGHUP and waits
// (at most logGuard) for a log line after the rewrite that want accepts;
// it returns that line.
func (g *reloadGateway) reload(yamlText, what string, want func(map[string]any) bool) map[string]any {
	g.t.Helper()
	before, _ := g.logs.snapshot()
	replaceByRename(g.t, g.path, []byte(yamlText))
	g.signal(syscall.SIGHUP)
	deadline := time.After(logGuard)
	for {
		entries, changed := g.logs.snapshot()
		for _, e := range entries[len(before):] {
			if want(e) {
				return e
			}
		}
		select {
		case <-changed:
		case <-deadline:
			g.t.Fatalf("no log line %s within %v of the rewrite", what, logGuard)
			return nil
		}
	}
}

// reloadedLine matches any "config reloaded" line.
func reloadedLine(e map[string]any) bool { return e["msg"] == "config reloaded" }

// reloadFailedLine matches any "config reload failed" line.
func reloadFailedLine(e map[string]any) bool {
	return e["msg"] == "config reload failed; keeping the running config"
}

// reloadListHas reports whether the list field key of e (a JSON array of
// strings) holds s.
func reloadListHas(e map[string]any, key, s string) bool {
	l, _ := e[key].([]any)
	return slices.Contains(l, any(s))
}

// reloadCount returns the number field key of e, -1 when it is missing.
func reloadCount(e map[string]any, key string) int {
	f, ok := e[key].(float64)
	if !ok {
		return -1
	}
	return int(f)
}

// reloadLineTime returns the time a log line was written (slog's JSON
// handler: RFC 3339 with milliseconds).
func reloadLineTime(t *testing.T, e map[string]any) time.Time {
	t.Helper()
	s, _ := e["time"].(string)
	at, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("log line %v: time %q: %v", e["msg"], s, err)
	}
	return at
}

// checkReloadSpread checks that close moments, measured from the reload
// that decided them, are spread over the drain window rather than sent in
// one herd: not all of them in its first tenth, and at least an eighth of
// them after its middle. For n uniform moments (n >= 20) the chance of
// either failing by bad luck is below 1e-6. There is no upper bound: a
// slow machine only delays the closes, which makes more of them late.
func checkReloadSpread(t *testing.T, what string, at []time.Duration, window time.Duration) {
	t.Helper()
	early, late := 0, 0
	for _, d := range at {
		if d < window/10 {
			early++
		}
		if d > window/2 {
			late++
		}
	}
	if early == len(at) || late < len(at)/8 {
		t.Errorf("%s: close moments not spread over the %v drain window: %d of %d in its first 10%%, %d after its middle (moments %v)",
			what, window, early, len(at), late, at)
	}
}

// reloadEchoFor echoes on every session, round after round, until
// window has passed since from (at least one round, at most 1000):
// sessions that a drain or a close would have ended within window are
// still open.
func reloadEchoFor(t *testing.T, conns []*websocket.Conn, from time.Time, window time.Duration) {
	t.Helper()
	for round := 0; round < 1000; round++ {
		for i, c := range conns {
			echoOnce(t, c, websocket.TextMessage, fmt.Appendf(nil, "round %d session %d", round, i))
		}
		if time.Since(from) >= window {
			return
		}
	}
}

// zeroLossConfig is one state of TestReloadZeroLoss's config file.
type zeroLossConfig struct {
	version int  // route x answers "v<version>"
	withY   bool // route y exists
	withC   bool // route c and its upstream exist
	bothB   bool // upstream b has both targets (else only b1)
}

// yaml renders c with the backends be by name (a1 … c2, and h1 for
// the HTTP route h).
func (c zeroLossConfig) yaml(be map[string]*namedBackend) string {
	var b strings.Builder
	b.WriteString("listeners:\n  - addr: 127.0.0.1:0\n")
	b.WriteString("timeouts: {reload_drain: 3s}\n")
	b.WriteString("upstreams:\n")
	fmt.Fprintf(&b, "  a: {targets: [%q, %q]}\n", be["a1"].url, be["a2"].url)
	if c.bothB {
		fmt.Fprintf(&b, "  b: {targets: [%q, %q], balance: round_robin}\n", be["b1"].url, be["b2"].url)
	} else {
		fmt.Fprintf(&b, "  b: {targets: [%q], balance: round_robin}\n", be["b1"].url)
	}
	if c.withC {
		fmt.Fprintf(&b, "  c: {targets: [%q, %q]}\n", be["c1"].url, be["c2"].url)
	}
	fmt.Fprintf(&b, "  h: {targets: [%q]}\n", be["h1"].url)
	// routes last: an invalid variant appends a route.
	b.WriteString("routes:\n")
	for _, r := range []string{"a", "b", "c"} {
		if r == "c" && !c.withC {
			continue
		}
		fmt.Fprintf(&b, "  - name: %s\n    match: {path_prefix: /%s}\n    upstream: %s\n    websocket: {on_change: drain}\n", r, r, r)
	}
	b.WriteString("  - name: h\n    match: {path_prefix: /h}\n    upstream: h\n")
	fmt.Fprintf(&b, "  - name: x\n    match: {path: /x}\n    respond: {status: 200, body: \"v%d\"}\n", c.version)
	if c.withY {
		b.WriteString("  - name: y\n    match: {path: /y}\n    respond: {body: \"y\"}\n")
	}
	return b.String()
}

// zeroLossSession is one WebSocket of TestReloadZeroLoss. Its exchange
// loop owns every field but echoed until done is closed.
type zeroLossSession struct {
	route   string // a, b or c
	backend string // the target's name, as the backend said on connect
	c       *websocket.Conn
	done    chan struct{}

	echoed   atomic.Int64 // messages echoed, all in order
	closed   *websocket.CloseError
	closedAt time.Time
	err      error // anything but a close frame, or an echo out of order
}

// exchange sends "1", "2", … one every pace and checks that each comes
// back before the next goes, until stop is closed, the peer closes, or
// maxMessages.
func (s *zeroLossSession) exchange(stop <-chan struct{}, pace time.Duration, maxMessages int) {
	defer close(s.done)
	tick := time.NewTicker(pace)
	defer tick.Stop()
	for n := 1; n <= maxMessages; n++ {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		msg := strconv.Itoa(n)
		_ = s.c.SetWriteDeadline(time.Now().Add(ioTimeout))
		if err := s.c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			// A close frame may be waiting behind the failure.
			_ = s.c.SetReadDeadline(time.Now().Add(ioTimeout))
			if _, _, rerr := s.c.ReadMessage(); reloadIsClose(rerr) {
				err = rerr
			}
			s.ended(fmt.Errorf("write message %d: %w", n, err))
			return
		}
		_ = s.c.SetReadDeadline(time.Now().Add(ioTimeout))
		mt, p, err := s.c.ReadMessage()
		if err != nil {
			s.ended(fmt.Errorf("read echo %d: %w", n, err))
			return
		}
		if mt != websocket.TextMessage || string(p) != msg {
			s.err = fmt.Errorf("echo of message %d: type %d %.40q, want text %q", n, mt, p, msg)
			return
		}
		s.echoed.Add(1)
	}
}

// reloadIsClose reports whether err is a close frame from the peer.
func reloadIsClose(err error) bool {
	var ce *websocket.CloseError
	return errors.As(err, &ce)
}

// ended records how the exchange stopped: a close frame or an error.
func (s *zeroLossSession) ended(err error) {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		s.closed, s.closedAt = ce, time.Now()
		return
	}
	s.err = err
}

// reloadHTTPLoad counts GETs through wsgate and their failures.
type reloadHTTPLoad struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string // guarded by mu: the first few failures
}

// run GETs url over one keep-alive client, one every pace, until stop is
// closed or maxRequests. A failure is a transport error, a status
// other than 200 or a body other than want.
func (l *reloadHTTPLoad) run(url, want string, stop <-chan struct{}, pace time.Duration, maxRequests int) {
	c := httpClient()
	defer c.CloseIdleConnections()
	tick := time.NewTicker(pace)
	defer tick.Stop()
	for range maxRequests {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		err := func() error {
			resp, err := c.Get(url)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				return fmt.Errorf("read body: %w", err)
			}
			if resp.StatusCode != http.StatusOK || string(body) != want {
				return fmt.Errorf("status %d, body %.40q; want 200 %q", resp.StatusCode, body, want)
			}
			return nil
		}()
		if err == nil {
			l.ok.Add(1)
			continue
		}
		l.failed.Add(1)
		l.mu.Lock()
		if len(l.errs) < 5 {
			l.errs = append(l.errs, fmt.Sprintf("GET %s: %v", url, err))
		}
		l.mu.Unlock()
	}
}

// reloadGet GETs url and returns status and body; a transport error fails
// the test.
func reloadGet(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, body := get(t, c, url, nil)
	return resp.StatusCode, body
}

// TestReloadZeroLoss is issue 11's proof: 200 WebSocket sessions on three
// routes (two targets each) exchange numbered messages continuously and
// an HTTP load runs while the config is reloaded 20 times: unrelated
// routes changed, added and removed, invalid files (a YAML syntax error,
// an unknown upstream), route c removed, and target b2 removed from
// route b's upstream. Sessions on a and on b1 see every echo in order and
// no close; sessions of c and of b2 get 1012 "service restart" at moments
// spread over reload_drain (3s) from the reload that removed them; no
// HTTP request fails; invalid files change nothing.
func TestReloadZeroLoss(t *testing.T) {
	needBinary(t)
	const (
		sessions    = 200
		drain       = 3 * time.Second
		msgPace     = 50 * time.Millisecond // per session: 4000 messages/s in all
		maxMessages = 100000
		httpWorkers = 2
		httpPace    = 5 * time.Millisecond
		maxRequests = 100000
	)
	be := map[string]*namedBackend{}
	for _, name := range []string{"a1", "a2", "b1", "b2", "c1", "c2", "h1"} {
		be[name] = startNamed(t, name)
	}
	cfg := zeroLossConfig{withC: true, bothB: true}
	g := startReloadGateway(t, cfg.yaml(be))
	hc := httpClient()
	defer hc.CloseIdleConnections()

	all := make([]*zeroLossSession, sessions)
	count := map[string]int{} // by route, and by backend name
	for i := range all {
		route := string("abc"[i%3])
		c := dialWS(t, nil, fmt.Sprintf("ws://%s/%s/%d", g.Addr, route, i), nil)
		s := &zeroLossSession{route: route, backend: readName(t, c), c: c, done: make(chan struct{})}
		if !strings.HasPrefix(s.backend, route) {
			t.Fatalf("session %d on /%s landed on backend %q", i, route, s.backend)
		}
		all[i] = s
		count[route]++
		count[s.backend]++
	}
	if count["b1"] < 20 || count["b2"] < 20 {
		t.Fatalf("round robin on /b: %d sessions on b1, %d on b2; want at least 20 each", count["b1"], count["b2"])
	}
	t.Logf("sessions by backend: %v", count)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	stopAll := sync.OnceFunc(func() {
		close(stop)
		wg.Wait()
	})
	t.Cleanup(stopAll) // on an early failure
	for _, s := range all {
		wg.Go(func() { s.exchange(stop, msgPace, maxMessages) })
	}
	load := &reloadHTTPLoad{}
	for range httpWorkers {
		wg.Go(func() { load.run("http://"+g.Addr+"/h/load", "h1", stop, httpPace, maxRequests) })
	}

	// The 20 reloads. A valid one bumps x's version, and waits until /x
	// answers with it; an invalid one must leave /x as it was.
	const (
		syntaxError     = "  - name: broken\n    match: {path: /broken\n"
		unknownUpstream = "  - name: z\n    match: {path: /z}\n    upstream: nope\n"
	)
	type step struct {
		change  func(*zeroLossConfig) // nil: an invalid file
		invalid string                // appended to the current config
	}
	addY := func(c *zeroLossConfig) { c.withY = true }
	removeY := func(c *zeroLossConfig) { c.withY = false }
	bumpX := func(*zeroLossConfig) {}
	removeC := func(c *zeroLossConfig) { c.withC = false }
	removeB2 := func(c *zeroLossConfig) { c.bothB = false }
	steps := []step{
		{change: bumpX}, {invalid: syntaxError}, {change: addY}, {invalid: unknownUpstream},
		{change: removeY}, {change: removeC}, {change: addY}, {invalid: syntaxError},
		{change: bumpX}, {change: removeB2}, {invalid: unknownUpstream}, {change: removeY},
		{change: bumpX}, {invalid: syntaxError}, {change: addY}, {change: bumpX},
		{invalid: unknownUpstream}, {change: removeY}, {change: bumpX}, {invalid: syntaxError},
	}
	// progressed waits until every session still exchanging has echoed
	// more than it had at the call, and the HTTP load has made more
	// requests: both went on through the reload just made.
	progressed := func(step int) {
		t.Helper()
		base := make([]int64, len(all))
		for i, s := range all {
			base[i] = s.echoed.Load()
		}
		baseHTTP := load.ok.Load() + load.failed.Load()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		deadline := time.After(logGuard)
		for {
			behind := 0
			for i, s := range all {
				select {
				case <-s.done:
					continue // closed or failed: checked at the end
				default:
				}
				if s.echoed.Load() <= base[i] {
					behind++
				}
			}
			httpMoved := load.ok.Load()+load.failed.Load() > baseHTTP
			if behind == 0 && httpMoved {
				return
			}
			select {
			case <-tick.C:
			case <-deadline:
				t.Fatalf("reload %d: %d sessions echoed nothing more within %v (HTTP load moved: %v)", step, behind, logGuard, httpMoved)
			}
		}
	}
	var (
		removedCAt, removedB2At     time.Time // just before the rewrite
		removedCLine, removedB2Line map[string]any
		invalids                    int
	)
	for i, st := range steps {
		if st.change == nil {
			invalids++
			g.reload(cfg.yaml(be)+st.invalid, "config reload failed", reloadFailedLine)
			if status, body := reloadGet(t, hc, "http://"+g.Addr+"/x"); status != 200 || body != fmt.Sprintf("v%d", cfg.version) {
				t.Fatalf("reload %d (invalid): GET /x = %d %q, want the running config's 200 \"v%d\"", i+1, status, body, cfg.version)
			}
			progressed(i + 1)
			continue
		}
		st.change(&cfg)
		cfg.version++
		want, what := reloadedLine, "config reloaded"
		switch {
		case removedCLine == nil && !cfg.withC:
			removedCAt = time.Now()
			what = "config reloaded with route c removed"
			want = func(e map[string]any) bool { return reloadedLine(e) && reloadListHas(e, "routes_removed", "c") }
		case removedB2Line == nil && !cfg.bothB:
			removedB2At = time.Now()
			what = "config reloaded with target b2 removed"
			want = func(e map[string]any) bool {
				return reloadedLine(e) && reloadListHas(e, "targets_removed", "b "+be["b2"].url)
			}
		}
		e := g.reload(cfg.yaml(be), what, want)
		switch {
		case removedCLine == nil && !cfg.withC:
			removedCLine = e
		case removedB2Line == nil && !cfg.bothB:
			removedB2Line = e
		}
		wantX := fmt.Sprintf("v%d", cfg.version)
		for try := 0; ; try++ {
			status, body := reloadGet(t, hc, "http://"+g.Addr+"/x")
			if status == 200 && body == wantX {
				break
			}
			if try == 100 {
				t.Fatalf("reload %d: GET /x = %d %q after the reload line, want 200 %q", i+1, status, body, wantX)
			}
		}
		progressed(i + 1)
	}
	if status, _ := reloadGet(t, hc, "http://"+g.Addr+"/c/after"); status != http.StatusNotFound {
		t.Errorf("GET /c/after the removal of route c: status %d, want 404", status)
	}

	// What the two removals decided.
	nUnchanged := count["a"] + count["b1"]
	if got := reloadCount(removedCLine, "sessions_draining"); got != count["c"] {
		t.Errorf("reload removing route c: sessions_draining = %d, want %d", got, count["c"])
	}
	if got := reloadCount(removedCLine, "sessions_unchanged"); got != sessions-count["c"] {
		t.Errorf("reload removing route c: sessions_unchanged = %d, want %d", got, sessions-count["c"])
	}
	if got := reloadCount(removedB2Line, "sessions_draining"); got != count["b2"] {
		t.Errorf("reload removing target b2: sessions_draining = %d, want %d", got, count["b2"])
	}
	if got := reloadCount(removedB2Line, "sessions_unchanged"); got != nUnchanged {
		t.Errorf("reload removing target b2: sessions_unchanged = %d, want %d", got, nUnchanged)
	}

	// The sessions of c and b2 end with their close; then stop the rest.
	guard := time.After(logGuard)
	for i, s := range all {
		if s.route == "c" || s.backend == "b2" {
			select {
			case <-s.done:
			case <-guard:
				t.Fatalf("session %d (/%s on %s): not closed within %v of the last reload", i, s.route, s.backend, logGuard)
			}
		}
	}
	stopAll()

	var atC, atB2 []time.Duration
	cLine, b2Line := reloadLineTime(t, removedCLine), reloadLineTime(t, removedB2Line)
	for i, s := range all {
		removed := s.route == "c" || s.backend == "b2"
		switch {
		case s.err != nil:
			t.Errorf("session %d (/%s on %s): %v after %d echoes", i, s.route, s.backend, s.err, s.echoed.Load())
		case !removed && s.closed != nil:
			t.Errorf("session %d (/%s on %s, unchanged): closed %d %q after %d echoes", i, s.route, s.backend, s.closed.Code, s.closed.Text, s.echoed.Load())
		case !removed && s.echoed.Load() < int64(len(steps)):
			t.Errorf("session %d (/%s on %s): %d echoes, fewer than the %d reloads it went on through", i, s.route, s.backend, s.echoed.Load(), len(steps))
		case removed && s.closed == nil:
			t.Errorf("session %d (/%s on %s): no close frame", i, s.route, s.backend)
		case removed && (s.closed.Code != 1012 || s.closed.Text != "service restart"):
			t.Errorf("session %d (/%s on %s): close %d %q, want 1012 \"service restart\"", i, s.route, s.backend, s.closed.Code, s.closed.Text)
		case s.route == "c":
			if s.closedAt.Before(removedCAt) {
				t.Errorf("session %d (/c): closed before route c was removed", i)
			}
			atC = append(atC, s.closedAt.Sub(cLine))
		case s.backend == "b2":
			if s.closedAt.Before(removedB2At) {
				t.Errorf("session %d (/b on b2): closed before b2 was removed", i)
			}
			atB2 = append(atB2, s.closedAt.Sub(b2Line))
		}
	}
	if len(atC) == count["c"] {
		checkReloadSpread(t, "route c removed", atC, drain)
	}
	if len(atB2) == count["b2"] {
		checkReloadSpread(t, "target b2 removed", atB2, drain)
	}
	// Still open after every reload: one more echo each.
	for _, s := range all {
		if s.route != "c" && s.backend != "b2" && s.err == nil && s.closed == nil {
			echoOnce(t, s.c, websocket.TextMessage, []byte("after the reloads"))
		}
	}

	if n := load.failed.Load(); n != 0 {
		t.Errorf("%d of %d HTTP requests failed during the reloads; first: %v", n, n+load.ok.Load(), load.errs)
	}
	if load.ok.Load() < int64(len(steps)) {
		t.Errorf("%d HTTP requests succeeded, fewer than the %d reloads the load went on through", load.ok.Load(), len(steps))
	}
	if n := g.countLogs("config reload failed; keeping the running config"); n < invalids {
		t.Errorf("%d reload-failed lines for %d invalid files", n, invalids)
	}
	if logsWhere(g.gw, func(e map[string]any) bool { return e["msg"] == "config error" && fieldHas(e, "error", `"nope"`) }) == nil {
		t.Errorf("no config error line names the unknown upstream \"nope\"")
	}
	t.Logf("%d HTTP requests; messages echoed on a session of /a: %d", load.ok.Load(), all[0].echoed.Load())
}

// onChangeConfig is TestReloadOnChange's config: route ws to backend
// with the websocket settings ws, and route x answering xBody.
func onChangeConfig(backend, ws, xBody, drain string) string {
	return fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  u: {targets: ["http://%s"]}
routes:
  - name: ws
    match: {path_prefix: /ws}
    upstream: u
    websocket: {%s}
  - name: x
    match: {path: /x}
    respond: {body: %q}
timeouts: {reload_drain: %s}
`, backend, ws, xBody, drain)
}

// onChangeFixture is a wsgate with sessions open on route ws.
type onChangeFixture struct {
	g       *reloadGateway
	backend *wsBackend
	addr    string // the backend's
	conns   []*websocket.Conn
}

func startOnChange(t *testing.T, ws, drain string, sessions int) *onChangeFixture {
	t.Helper()
	f := &onChangeFixture{backend: newWSBackend()}
	f.addr = f.backend.start(t)
	f.g = startReloadGateway(t, onChangeConfig(f.addr, ws, "v1", drain))
	for i := range sessions {
		c := dialWS(t, nil, fmt.Sprintf("ws://%s/ws/%d", f.g.Addr, i), nil)
		echoOnce(t, c, websocket.TextMessage, fmt.Appendf(nil, "session %d", i))
		f.conns = append(f.conns, c)
	}
	return f
}

// closesAfter reads every session until its close frame, in parallel,
// from now on; wait returns each close and when it came.
func (f *onChangeFixture) closesAfter() (wait func(t *testing.T) ([]*websocket.CloseError, []time.Time)) {
	n := len(f.conns)
	codes := make([]*websocket.CloseError, n)
	errs := make([]error, n)
	at := make([]time.Time, n)
	var wg sync.WaitGroup
	for i, c := range f.conns {
		_ = c.SetReadDeadline(time.Now().Add(logGuard))
		wg.Go(func() {
			for {
				_, _, err := c.ReadMessage()
				if err == nil {
					continue
				}
				at[i] = time.Now()
				var ce *websocket.CloseError
				if errors.As(err, &ce) {
					codes[i] = ce
				} else {
					errs[i] = err
				}
				return
			}
		})
	}
	return func(t *testing.T) ([]*websocket.CloseError, []time.Time) {
		t.Helper()
		wg.Wait() // each read ends by logGuard
		for i, err := range errs {
			if err != nil {
				t.Fatalf("session %d: %v, want a close frame", i, err)
			}
		}
		return codes, at
	}
}

// checkBackendGoingAway checks that the backend leg of every session got
// 1001.
func (f *onChangeFixture) checkBackendGoingAway(t *testing.T) {
	t.Helper()
	for i := range f.conns {
		if ce := f.backend.nextClose(t, fmt.Sprintf("/ws/%d", i)); ce.Code != websocket.CloseGoingAway {
			t.Errorf("backend leg of session %d: close %d %q, want 1001", i, ce.Code, ce.Text)
		}
	}
}

// TestReloadOnChange: a reload that changes max_message_size of a route
// does to its open sessions what websocket.on_change says: drain closes
// each with on_change_code and on_change_reason (default 1012 "service
// restart") at moments spread over reload_drain, keep leaves them
// running, close closes them at once; the backend leg gets 1001. A
// reload that changes another route, or what does not govern a live
// session, leaves them untouched.
func TestReloadOnChange(t *testing.T) {
	needBinary(t)
	const spreadSessions = 30

	drainCases := []struct {
		name, ws   string
		wantCode   int
		wantReason string
	}{
		{"drain by default", `max_message_size: %s`, 1012, "service restart"},
		{"drain with a custom code", `on_change: drain, on_change_code: 4001, on_change_reason: "moved", max_message_size: %s`, 4001, "moved"},
	}
	for _, tc := range drainCases {
		t.Run(tc.name, func(t *testing.T) {
			const drain = 2 * time.Second
			f := startOnChange(t, fmt.Sprintf(tc.ws, "1MiB"), drain.String(), spreadSessions)
			wait := f.closesAfter()
			e := f.g.reload(onChangeConfig(f.addr, fmt.Sprintf(tc.ws, "2MiB"), "v1", drain.String()),
				"config reloaded with the sessions draining", func(e map[string]any) bool {
					return reloadedLine(e) && reloadListHas(e, "routes_changed", "ws")
				})
			if got := reloadCount(e, "sessions_draining"); got != spreadSessions {
				t.Errorf("sessions_draining = %d, want %d", got, spreadSessions)
			}
			from := reloadLineTime(t, e)
			codes, at := wait(t)
			var moments []time.Duration
			for i, ce := range codes {
				if ce.Code != tc.wantCode || ce.Text != tc.wantReason {
					t.Errorf("session %d: close %d %q, want %d %q", i, ce.Code, ce.Text, tc.wantCode, tc.wantReason)
				}
				moments = append(moments, at[i].Sub(from))
			}
			checkReloadSpread(t, tc.name, moments, drain)
			f.checkBackendGoingAway(t)
		})
	}

	t.Run("keep", func(t *testing.T) {
		// A drain would close them within 500ms, a close at once; they
		// must still echo a second after the reload.
		const ws = `on_change: keep, max_message_size: %s`
		f := startOnChange(t, fmt.Sprintf(ws, "1MiB"), "500ms", 10)
		e := f.g.reload(onChangeConfig(f.addr, fmt.Sprintf(ws, "2MiB"), "v1", "500ms"),
			"config reloaded with the sessions kept", func(e map[string]any) bool {
				return reloadedLine(e) && reloadListHas(e, "routes_changed", "ws")
			})
		if got := reloadCount(e, "sessions_kept"); got != len(f.conns) {
			t.Errorf("sessions_kept = %d, want %d", got, len(f.conns))
		}
		reloadEchoFor(t, f.conns, reloadLineTime(t, e), time.Second)
	})

	t.Run("close", func(t *testing.T) {
		// reload_drain is 10 minutes: a drain instead of a close would
		// outlast the test's guard.
		const ws = `on_change: close, max_message_size: %s`
		f := startOnChange(t, fmt.Sprintf(ws, "1MiB"), "10m", 10)
		wait := f.closesAfter()
		e := f.g.reload(onChangeConfig(f.addr, fmt.Sprintf(ws, "2MiB"), "v1", "10m"),
			"config reloaded with the sessions closed", func(e map[string]any) bool {
				return reloadedLine(e) && reloadListHas(e, "routes_changed", "ws")
			})
		if got := reloadCount(e, "sessions_closed"); got != len(f.conns) {
			t.Errorf("sessions_closed = %d, want %d", got, len(f.conns))
		}
		codes, _ := wait(t)
		for i, ce := range codes {
			if ce.Code != 1012 || ce.Text != "service restart" {
				t.Errorf("session %d: close %d %q, want 1012 \"service restart\"", i, ce.Code, ce.Text)
			}
		}
		f.checkBackendGoingAway(t)
	})

	t.Run("unchanged", func(t *testing.T) {
		// on_change: close, so that a session wrongly taken as changed
		// is closed at once.
		const drain = "500ms"
		f := startOnChange(t, `on_change: close`, drain, 10)
		for _, st := range []struct {
			what, ws, xBody, changed string
		}{
			{"another route changed", `on_change: close`, "v2", "x"},
			{"a setting of the route that no session depends on", `on_change: close, handshake_timeout: 5s`, "v2", "ws"},
		} {
			e := f.g.reload(onChangeConfig(f.addr, st.ws, st.xBody, drain), "config reloaded: "+st.what, func(e map[string]any) bool {
				return reloadedLine(e) && reloadListHas(e, "routes_changed", st.changed)
			})
			if got := reloadCount(e, "sessions_unchanged"); got != len(f.conns) {
				t.Errorf("%s: sessions_unchanged = %d, want %d", st.what, got, len(f.conns))
			}
			reloadEchoFor(t, f.conns, reloadLineTime(t, e), time.Second)
		}
	})
}

// TestReloadTargetRemoved: sessions on both targets of an upstream
// (round robin); a reload removes T2. With on_target_removed: close, T2's
// sessions get 1012 at once and T1's go on; with keep, all go on. New
// sessions land on T1 only.
func TestReloadTargetRemoved(t *testing.T) {
	needBinary(t)
	config := func(onRemoved, drain string, targets ...*namedBackend) string {
		var urls []string
		for _, b := range targets {
			urls = append(urls, strconv.Quote(b.url))
		}
		return fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  u: {targets: [%s], balance: round_robin, on_target_removed: %s}
routes:
  - name: ws
    match: {path_prefix: /ws}
    upstream: u
timeouts: {reload_drain: %s}
`, strings.Join(urls, ", "), onRemoved, drain)
	}
	for _, tc := range []struct {
		onRemoved string
		// drain: 10 minutes for close (a drain would outlast the guard),
		// 500ms for keep (a drain would close within the second watched).
		drain string
	}{
		{"close", "10m"},
		{"keep", "500ms"},
	} {
		t.Run(tc.onRemoved, func(t *testing.T) {
			t1, t2 := startNamed(t, "t1"), startNamed(t, "t2")
			g := startReloadGateway(t, config(tc.onRemoved, tc.drain, t1, t2))
			on := map[string][]*websocket.Conn{}
			for i := range 10 {
				c := dialWS(t, nil, fmt.Sprintf("ws://%s/ws/%d", g.Addr, i), nil)
				name := readName(t, c)
				on[name] = append(on[name], c)
			}
			if len(on["t1"]) == 0 || len(on["t2"]) == 0 {
				t.Fatalf("round robin: %d sessions on t1, %d on t2; want some on each", len(on["t1"]), len(on["t2"]))
			}
			e := g.reload(config(tc.onRemoved, tc.drain, t1), "config reloaded with t2 removed", func(e map[string]any) bool {
				return reloadedLine(e) && reloadListHas(e, "targets_removed", "u "+t2.url)
			})
			affected := "sessions_kept"
			if tc.onRemoved == "close" {
				affected = "sessions_closed"
			}
			if got := reloadCount(e, affected); got != len(on["t2"]) {
				t.Errorf("%s = %d, want %d (the sessions on t2)", affected, got, len(on["t2"]))
			}
			if got := reloadCount(e, "sessions_unchanged"); got != len(on["t1"]) {
				t.Errorf("sessions_unchanged = %d, want %d (the sessions on t1)", got, len(on["t1"]))
			}

			switch tc.onRemoved {
			case "close":
				for i, c := range on["t2"] {
					if ce := readClose(t, c); ce.Code != 1012 || ce.Text != "service restart" {
						t.Errorf("session %d on t2: close %d %q, want 1012 \"service restart\"", i, ce.Code, ce.Text)
					}
				}
				reloadEchoFor(t, on["t1"], reloadLineTime(t, e), 500*time.Millisecond)
			case "keep":
				reloadEchoFor(t, append(on["t1"], on["t2"]...), reloadLineTime(t, e), time.Second)
			}
			for i := range 4 {
				c := dialWS(t, nil, fmt.Sprintf("ws://%s/ws/new%d", g.Addr, i), nil)
				if name := readName(t, c); name != "t1" {
					t.Errorf("new session %d after the reload landed on %q, want t1", i, name)
				}
			}
		})
	}
}
