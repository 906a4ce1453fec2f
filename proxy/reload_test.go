package proxy

// Reload and Drain tests: a reload swaps the route table and decides the
// fate of each open WebSocket session (unchanged, keep, close, drain);
// Drain spreads its closes, Hurry sends the rest at once, and a reload
// during a drain leaves the sessions to the drain.

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/wsgate/wsgate/routes"
	"github.com/wsgate/wsgate/upstream"
)

// reload swaps p's config for the routes rs, with drain as the reload
// drain window. Each upstream a route names gets a new set, built from
// the config of that name in ups or else the one testUpstream made, with
// the set it replaces as Previous; it is started now and closed when the
// test ends, and p.sets holds the new sets from now on.
func (p *testProxy) reload(t testing.TB, drain time.Duration, ups []*upstream.Config, rs ...*routes.Route) ReloadResult {
	t.Helper()
	table, err := routes.New(rs)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*upstream.Config{}
	for _, u := range ups {
		byName[u.Name] = u
	}
	logger := slog.New(slog.NewTextHandler(p.logs, nil))
	next := map[string]*upstream.Set{}
	var sets []*upstream.Set
	for _, r := range rs {
		if r.Upstream == nil || next[r.Upstream.Name] != nil {
			continue
		}
		cfg := byName[r.Upstream.Name]
		if cfg == nil {
			v, ok := testUpstreams.Load(r.Upstream.Name)
			if !ok {
				t.Fatalf("route %q: upstream %q was not made by testUpstream", r.Name, r.Upstream.Name)
			}
			cfg = v.(*upstream.Config)
		}
		set := upstream.New(cfg, upstream.Options{Logger: logger, Previous: p.sets[cfg.Name]})
		set.Start()
		t.Cleanup(set.Close)
		next[cfg.Name] = set
		sets = append(sets, set)
	}
	p.sets = next
	return p.h.Reload(Options{Routes: table, Upstreams: sets}, drain)
}

// liveRoute is wsRoute named name (its ID "name:" and name), with what a
// reload does to its sessions and the close it sends them.
func liveRoute(up *upstream.Config, name string, action routes.ChangeAction, code uint16, reason string) *routes.Route {
	r := wsRoute(up)
	r.Name, r.ID = name, "name:"+name
	r.WebSocket.OnChange = action
	r.WebSocket.CloseCode, r.WebSocket.CloseReason = code, reason
	return r
}

// reportingEcho is an echo backend that sends the error that ended each
// of its sessions (a *websocket.CloseError after a close) on the channel
// it returns, which holds up to 64 of them.
func reportingEcho(t testing.TB) (string, <-chan error) {
	t.Helper()
	errs := make(chan error, 64)
	addr := startWSBackend(t, nil, func(c *websocket.Conn) {
		err := echoUntilError(c)
		select {
		case errs <- err:
		default:
		}
	})
	return addr, errs
}

// echo sends msg on c and checks that the same message comes back.
func echo(t testing.TB, c *websocket.Conn, msg string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(hangGuard))
	defer c.SetReadDeadline(time.Time{})
	if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
	_, got, err := c.ReadMessage()
	if err != nil || string(got) != msg {
		t.Fatalf("echo of %q: got %q, %v", msg, got, err)
	}
}

// closeOf reads c until its session ends, for at most d, and returns the
// close code and reason the client got (-1 when there was no close).
func closeOf(c *websocket.Conn, d time.Duration) (int, string) {
	c.SetReadDeadline(time.Now().Add(d))
	return closeCode(readUntilError(c))
}

// checkBackendGoingAway checks that each of n backend sessions ended with
// 1001 "going away".
func checkBackendGoingAway(t testing.TB, errs <-chan error, n int) {
	t.Helper()
	for i := range n {
		err := recvErr(t, "a backend session to end", errs, hangGuard)
		if code, reason := closeCode(err); code != websocket.CloseGoingAway || reason != "going away" {
			t.Errorf("backend session %d ended with %v, want close 1001 %q", i, err, "going away")
		}
	}
}

// TestReloadSwapsRoutes: a request after Reload is served from the new
// route table: a changed body, a removed route's 404, an added route.
func TestReloadSwapsRoutes(t *testing.T) {
	respond := func(name, path, body string) *routes.Route {
		return &routes.Route{Name: name, Path: path, Respond: &routes.Respond{Status: http.StatusOK, Body: body}}
	}
	p := startProxy(t, respond("a", "/a", "old a"), respond("gone", "/gone", "still here"))
	c := httpClient(t)
	get := func(c *http.Client, path string) (int, string) {
		t.Helper()
		resp, body := do(t, c, newRequest(t, "GET", "http://"+p.addr+path, nil))
		return resp.StatusCode, body
	}
	for _, tt := range []struct {
		path   string
		status int
		body   string
	}{
		{"/a", 200, "old a"},
		{"/gone", 200, "still here"},
		{"/added", 404, "no route\n"},
	} {
		if status, body := get(c, tt.path); status != tt.status || body != tt.body {
			t.Errorf("before Reload: GET %s = %d %q, want %d %q", tt.path, status, body, tt.status, tt.body)
		}
	}

	res := p.reload(t, 0, nil, respond("a", "/a", "new a"), respond("added", "/added", "fresh"))
	if res != (ReloadResult{}) {
		t.Errorf("Reload with no session = %+v, want zero", res)
	}
	// The same client, whose keep-alive connection was accepted before
	// the reload, and a new connection, see the new table alike.
	for _, c := range []*http.Client{c, httpClient(t)} {
		for _, tt := range []struct {
			path   string
			status int
			body   string
		}{
			{"/a", 200, "new a"},
			{"/gone", 404, "no route\n"},
			{"/added", 200, "fresh"},
		} {
			if status, body := get(c, tt.path); status != tt.status || body != tt.body {
				t.Errorf("after Reload: GET %s = %d %q, want %d %q", tt.path, status, body, tt.status, tt.body)
			}
		}
	}
}

// TestReloadSessionFate: one session on route "chat" (on_change close,
// 4001 "old route"), then a reload with a changed route. A change to what
// governs a live session closes it at once with the new route's code and
// reason (the backend gets 1001); any other change leaves it running; a
// route that is gone applies the old route's on_change and close.
func TestReloadSessionFate(t *testing.T) {
	const (
		oldCode, newCode     = 4001, 4002
		oldReason, newReason = "old route", "new route"
	)
	tests := []struct {
		name string
		// change edits the new route "chat" (on_change close, 4002
		// "new route", the upstream of the session's route) or
		// returns another one in its place.
		change    func(r *routes.Route, up *upstream.Config) *routes.Route
		want      ReloadResult
		wantCode  int // 0: the session goes on
		wantCause string
	}{
		{
			name:   "nothing changed",
			change: func(r *routes.Route, _ *upstream.Config) *routes.Route { return r },
			want:   ReloadResult{Unchanged: 1},
		},
		{
			name: "what applies to new sessions only",
			change: func(r *routes.Route, _ *upstream.Config) *routes.Route {
				r.PathPrefix = "/other" // the match of a named route
				r.WebSocket.HandshakeTimeout = time.Minute
				r.MaxRequestBody = 1
				r.StripPrefix = true
				r.RequestHeaders.Set = []routes.Header{{Name: "X-New", Value: "1"}}
				r.ResponseHeaders.Remove = []string{"Server"}
				return r
			},
			want: ReloadResult{Unchanged: 1},
		},
		{
			name: "max_message_size",
			change: func(r *routes.Route, _ *upstream.Config) *routes.Route {
				r.WebSocket.MaxMessageSize = 1 << 20
				return r
			},
			want: ReloadResult{Closed: 1}, wantCode: newCode, wantCause: newReason,
		},
		{
			name: "idle_timeout",
			change: func(r *routes.Route, _ *upstream.Config) *routes.Route {
				r.WebSocket.IdleTimeout = 2 * time.Hour
				return r
			},
			want: ReloadResult{Closed: 1}, wantCode: newCode, wantCause: newReason,
		},
		{
			name: "origins",
			change: func(r *routes.Route, _ *upstream.Config) *routes.Route {
				r.WebSocket.Origins = []string{"https://app.example.com"}
				return r
			},
			want: ReloadResult{Closed: 1}, wantCode: newCode, wantCause: newReason,
		},
		{
			name: "websocket disabled",
			change: func(r *routes.Route, _ *upstream.Config) *routes.Route {
				r.WebSocket.Enabled = false
				return r
			},
			want: ReloadResult{Closed: 1}, wantCode: newCode, wantCause: newReason,
		},
		{
			name: "upstream name",
			change: func(r *routes.Route, up *upstream.Config) *routes.Route {
				same := testUpstream(up.Targets[0].Addr()) // the same target under another name
				r.Upstream = &routes.Upstream{Name: same.Name}
				return r
			},
			want: ReloadResult{Closed: 1}, wantCode: newCode, wantCause: newReason,
		},
		{
			name: "route now responds itself",
			change: func(r *routes.Route, _ *upstream.Config) *routes.Route {
				r.Upstream = nil
				r.Respond = &routes.Respond{Status: 200, Body: "moved"}
				return r
			},
			want: ReloadResult{Closed: 1}, wantCode: newCode, wantCause: newReason,
		},
		{
			// A route renamed is another route: the old one is gone,
			// and its on_change (close) and code apply, not those of the
			// route now at its path (keep).
			name: "route gone",
			change: func(r *routes.Route, _ *upstream.Config) *routes.Route {
				r.Name, r.ID = "chat2", "name:chat2"
				r.WebSocket.OnChange = routes.Keep
				return r
			},
			want: ReloadResult{Closed: 1}, wantCode: oldCode, wantCause: oldReason,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			backend, backendErrs := reportingEcho(t)
			up := testUpstream(backend)
			p := startProxyWith(t, slowCloses(), liveRoute(up, "chat", routes.Close, oldCode, oldReason))
			c, _ := dialWS(t, p.addr, "/", nil)
			echo(t, c, "before")

			r := tt.change(liveRoute(up, "chat", routes.Close, newCode, newReason), up)
			// A day of drain window: a close seen within hangGuard was
			// sent at once.
			if got := p.reload(t, 24*time.Hour, nil, r); got != tt.want {
				t.Errorf("Reload = %+v, want %+v", got, tt.want)
			}
			if tt.wantCode == 0 {
				echo(t, c, "after")
				return
			}
			if code, reason := closeOf(c, hangGuard); code != tt.wantCode || reason != tt.wantCause {
				t.Errorf("client got close %d %q, want %d %q", code, reason, tt.wantCode, tt.wantCause)
			}
			checkBackendGoingAway(t, backendErrs, 1)
		})
	}
}

// TestReloadRouteGone: when a session's route is gone, the old route's
// on_change decides, whatever the route now at its path says.
func TestReloadRouteGone(t *testing.T) {
	for _, tt := range []struct {
		old, now routes.ChangeAction
		want     ReloadResult
	}{
		{routes.Keep, routes.Close, ReloadResult{Kept: 1}},
		{routes.Close, routes.Keep, ReloadResult{Closed: 1}},
		{routes.Drain, routes.Keep, ReloadResult{Draining: 1}},
	} {
		t.Run(tt.old.String(), func(t *testing.T) {
			backend, _ := reportingEcho(t)
			up := testUpstream(backend)
			p := startProxyWith(t, slowCloses(), liveRoute(up, "chat", tt.old, 4001, "old route"))
			c, _ := dialWS(t, p.addr, "/", nil)
			echo(t, c, "before")
			got := p.reload(t, 100*time.Millisecond, nil, liveRoute(up, "other", tt.now, 4002, "other route"))
			if got != tt.want {
				t.Errorf("Reload = %+v, want %+v", got, tt.want)
			}
			if tt.old == routes.Keep {
				echo(t, c, "after")
				return
			}
			if code, reason := closeOf(c, hangGuard); code != 4001 || reason != "old route" {
				t.Errorf("client got close %d %q, want 4001 %q", code, reason, "old route")
			}
		})
	}
}

// TestReloadRouteGoneLastVersion: a removed route decides by its version
// in the config the reload replaces, not by the one the session started
// under: here an unchanged reload turned close into keep, and the
// removal then keeps the session.
func TestReloadRouteGoneLastVersion(t *testing.T) {
	backend, _ := reportingEcho(t)
	up := testUpstream(backend)
	p := startProxyWith(t, slowCloses(), liveRoute(up, "chat", routes.Close, 4001, "as started"))
	c, _ := dialWS(t, p.addr, "/", nil)
	echo(t, c, "before")
	if got, want := p.reload(t, 0, nil, liveRoute(up, "chat", routes.Keep, 4002, "last version")), (ReloadResult{Unchanged: 1}); got != want {
		t.Errorf("first Reload = %+v, want %+v", got, want)
	}
	if got, want := p.reload(t, 0, nil, liveRoute(up, "other", routes.Close, 4003, "other route")), (ReloadResult{Kept: 1}); got != want {
		t.Errorf("Reload removing the route = %+v, want %+v (its last version says keep)", got, want)
	}
	echo(t, c, "after")
}

// TestReloadKeep: a session whose route changed, on on_change keep, runs
// on with the settings it started with (here no message size limit),
// while a new session gets the new ones (a 16-byte limit: 1009).
func TestReloadKeep(t *testing.T) {
	backend, backendErrs := reportingEcho(t)
	up := testUpstream(backend)
	p := startProxyWith(t, slowCloses(), liveRoute(up, "chat", routes.Keep, 4001, "changed"))
	c, _ := dialWS(t, p.addr, "/", nil)
	echo(t, c, "before")

	r := liveRoute(up, "chat", routes.Keep, 4001, "changed")
	r.WebSocket.MaxMessageSize = 16
	if got, want := p.reload(t, 0, nil, r), (ReloadResult{Kept: 1}); got != want {
		t.Errorf("Reload = %+v, want %+v", got, want)
	}
	big := strings.Repeat("x", 100)
	echo(t, c, big)

	fresh, _ := dialWS(t, p.addr, "/", nil)
	if err := fresh.WriteMessage(websocket.TextMessage, []byte(big)); err != nil {
		t.Fatal(err)
	}
	if code, _ := closeOf(fresh, hangGuard); code != websocket.CloseMessageTooBig {
		t.Errorf("new session sending %d bytes got close %d, want %d (the new limit of 16)", len(big), code, websocket.CloseMessageTooBig)
	}
	echo(t, c, "still here")
	// The new session's backend leg ends; the kept one must not.
	err := recvErr(t, "the new session's backend leg to end", backendErrs, hangGuard)
	if code, reason := closeCode(err); code != websocket.CloseGoingAway || reason != "client message too big" {
		t.Errorf("a backend session ended with %v, want only the new session's 1001 %q", err, "client message too big")
	}
	echo(t, c, "and still")
}

// TestReloadDrainWindow: sessions on a changed route with on_change drain
// are counted as draining and each gets its close within the window.
func TestReloadDrainWindow(t *testing.T) {
	const n, window = 5, 500 * time.Millisecond
	backend, backendErrs := reportingEcho(t)
	up := testUpstream(backend)
	p := startProxyWith(t, slowCloses(), liveRoute(up, "chat", routes.Drain, 4001, "old"))
	clients := make([]*websocket.Conn, n)
	for i := range clients {
		clients[i], _ = dialWS(t, p.addr, "/", nil)
		echo(t, clients[i], fmt.Sprint("session ", i))
	}
	r := liveRoute(up, "chat", routes.Drain, 4000, "please reconnect")
	r.WebSocket.MaxMessageSize = 1 << 20
	if got, want := p.reload(t, window, nil, r), (ReloadResult{Draining: n}); got != want {
		t.Errorf("Reload = %+v, want %+v", got, want)
	}
	type closed struct {
		code   int
		reason string
	}
	got := make(chan closed, n)
	for _, c := range clients {
		go func() {
			code, reason := closeOf(c, window+hangGuard)
			got <- closed{code, reason}
		}()
	}
	for i := range n {
		select {
		case g := <-got:
			if g.code != 4000 || g.reason != "please reconnect" {
				t.Errorf("client got close %d %q, want 4000 %q", g.code, g.reason, "please reconnect")
			}
		case <-time.After(window + 2*hangGuard):
			t.Fatalf("%d of %d clients got no close", n-i, n)
		}
	}
	checkBackendGoingAway(t, backendErrs, n)
	waitFor(t, "the sessions to end", hangGuard, func() bool { return p.h.Sessions() == 0 })
}

// TestReloadTargetRemoved: when only the session's target left its
// upstream, the upstream's on_target_removed decides (not the route's
// on_change), with the route's close code; the session on the target that
// stays is unchanged, and new sessions go to the target that stays.
func TestReloadTargetRemoved(t *testing.T) {
	for _, tt := range []struct {
		removed string
		route   routes.ChangeAction // the opposite of what must happen
		want    ReloadResult
	}{
		{"close", routes.Keep, ReloadResult{Unchanged: 1, Closed: 1}},
		{"keep", routes.Close, ReloadResult{Unchanged: 1, Kept: 1}},
		{"drain", routes.Keep, ReloadResult{Unchanged: 1, Draining: 1}},
	} {
		t.Run(tt.removed, func(t *testing.T) {
			a, _ := namedBackend(t, "a")
			b, _ := namedBackend(t, "b")
			up := testUpstream(a, b)
			p := startProxyWith(t, slowCloses(), liveRoute(up, "chat", tt.route, 4001, "moved"))
			on := map[string]*websocket.Conn{}
			for range 2 { // round robin: one session on each target
				c, _, name := dialNamed(t, p.addr, nil)
				on[name] = c
			}
			if on["a"] == nil || on["b"] == nil {
				t.Fatalf("sessions on %v, want one on a and one on b", on)
			}

			next := *up
			next.Targets = []upstream.TargetConfig{up.Targets[1]} // b stays
			next.OnTargetRemoved = tt.removed
			got := p.reload(t, 100*time.Millisecond, []*upstream.Config{&next}, liveRoute(up, "chat", tt.route, 4001, "moved"))
			if got != tt.want {
				t.Errorf("Reload = %+v, want %+v", got, tt.want)
			}
			echo(t, on["b"], "b stays")
			if tt.removed == "keep" {
				echo(t, on["a"], "a is kept")
			} else if code, reason := closeOf(on["a"], hangGuard); code != 4001 || reason != "moved" {
				t.Errorf("session on the removed target got close %d %q, want 4001 %q", code, reason, "moved")
			}
			for i := range 2 {
				if _, _, name := dialNamed(t, p.addr, nil); name != "b" {
					t.Errorf("new session %d went to %q, want b (a was removed)", i, name)
				}
			}
		})
	}
}

// TestReloadDecidesOnce: a session a reload scheduled to close (drain,
// an hour's window) is left alone by the next reload, even one whose
// on_change is close; that reload still decides for the other sessions.
func TestReloadDecidesOnce(t *testing.T) {
	backend, _ := reportingEcho(t)
	up := testUpstream(backend)
	p := startProxyWith(t, slowCloses(), liveRoute(up, "chat", routes.Drain, 4001, "first"))
	scheduled, _ := dialWS(t, p.addr, "/", nil)
	echo(t, scheduled, "one")

	r1 := liveRoute(up, "chat", routes.Drain, 4001, "first")
	r1.WebSocket.MaxMessageSize = 1 << 20
	if got, want := p.reload(t, time.Hour, nil, r1), (ReloadResult{Draining: 1}); got != want {
		t.Fatalf("first Reload = %+v, want %+v", got, want)
	}
	later, _ := dialWS(t, p.addr, "/", nil) // on the first reload's route
	echo(t, later, "two")

	r2 := liveRoute(up, "chat", routes.Close, 4002, "second")
	r2.WebSocket.MaxMessageSize = 2 << 20
	if got, want := p.reload(t, time.Hour, nil, r2), (ReloadResult{Closed: 1}); got != want {
		t.Errorf("second Reload = %+v, want %+v (the session already scheduled is not decided again)", got, want)
	}
	if code, reason := closeOf(later, hangGuard); code != 4002 || reason != "second" {
		t.Errorf("session of the first reload's route got close %d %q, want 4002 %q", code, reason, "second")
	}
	// The second reload's close goroutine had its chance while the other
	// session closed; the scheduled one still waits for its moment.
	echo(t, scheduled, "still scheduled, not closed")
}

// TestReloadDuringHandshake: a session whose handshake matched its route
// before a reload and finished after it is decided by the config it ends
// up under: here its route's max_message_size changed with on_change
// close, so it gets the new route's close at once.
func TestReloadDuringHandshake(t *testing.T) {
	arrived, release := make(chan struct{}), make(chan struct{})
	var released bool
	t.Cleanup(func() {
		if !released {
			close(release)
		}
	})
	echoH := echoWS(t)
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived) // one handshake only
		<-release
		echoH.ServeHTTP(w, r)
	}))
	up := testUpstream(backend)
	p := startProxyWith(t, slowCloses(), liveRoute(up, "chat", routes.Close, 4001, "old"))

	type dialed struct {
		c   *websocket.Conn
		err error
	}
	done := make(chan dialed, 1)
	go func() {
		d := websocket.Dialer{HandshakeTimeout: hangGuard}
		c, _, err := d.Dial("ws://"+p.addr+"/", nil)
		done <- dialed{c, err}
	}()
	select {
	case <-arrived:
	case <-time.After(hangGuard):
		t.Fatal("the handshake did not reach the backend")
	}
	r := liveRoute(up, "chat", routes.Close, 4002, "new")
	r.WebSocket.MaxMessageSize = 1 << 20
	if got := p.reload(t, time.Hour, nil, r); got != (ReloadResult{}) {
		t.Errorf("Reload during the only handshake = %+v, want zero", got)
	}
	close(release)
	released = true
	var d dialed
	select {
	case d = <-done:
	case <-time.After(hangGuard):
		t.Fatal("the handshake did not finish")
	}
	if d.err != nil {
		t.Fatalf("dial: %v", d.err)
	}
	t.Cleanup(func() { d.c.Close() })
	if code, reason := closeOf(d.c, hangGuard); code != 4002 || reason != "new" {
		t.Errorf("session whose handshake straddled the reload got close %d %q, want 4002 %q", code, reason, "new")
	}
}

// TestDrainSpread: Drain with a spread sends the 1001s at moments spread
// over it, not all at the start, and counts every session it closed.
func TestDrainSpread(t *testing.T) {
	const n, spread = 20, 2 * time.Second
	backend, backendErrs := reportingEcho(t)
	p := startProxyWith(t, slowCloses(), wsRoute(testUpstream(backend)))
	type closed struct {
		at   time.Time
		code int
	}
	got := make(chan closed, n)
	for i := range n {
		c, _ := dialWS(t, p.addr, "/", nil)
		echo(t, c, fmt.Sprint("session ", i))
		go func() {
			code, _ := closeOf(c, spread+hangGuard)
			got <- closed{time.Now(), code}
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), spread+hangGuard)
	defer cancel()
	start := time.Now()
	res, err := p.h.Drain(ctx, spread)
	if err != nil || res != (DrainResult{Closed: n}) {
		t.Errorf("Drain = %+v, %v; want %+v, nil", res, err, DrainResult{Closed: n})
	}
	// A close is sent no earlier than its moment: with moments uniform
	// over the spread, about 90% arrive after its first tenth, and fewer
	// than half (p < 1e-5) only if the closes were not spread.
	late := 0
	for range n {
		g := <-got // Drain returned: every client has its close
		if g.code != websocket.CloseGoingAway {
			t.Errorf("client got close %d, want 1001", g.code)
		}
		if g.at.Sub(start) >= spread/10 {
			late++
		}
	}
	if late < n/2 {
		t.Errorf("%d of %d closes arrived after the first tenth of a %v spread, want at least %d", late, n, spread, n/2)
	}
	t.Logf("%d of %d closes after %v", late, n, spread/10)
	checkBackendGoingAway(t, backendErrs, n)
}

// TestDrainHurry: Hurry during a drain spread over ten minutes sends every
// close left at once; Drain then returns as soon as the sessions ended.
func TestDrainHurry(t *testing.T) {
	const n, spread = 10, 10 * time.Minute
	backend, backendErrs := reportingEcho(t)
	p := startProxyWith(t, slowCloses(), wsRoute(testUpstream(backend)))
	codes := make(chan int, n)
	for i := range n {
		c, _ := dialWS(t, p.addr, "/", nil)
		echo(t, c, fmt.Sprint("session ", i))
		go func() {
			code, _ := closeOf(c, spread)
			codes <- code
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), spread)
	defer cancel()
	done := make(chan drained, 1)
	go func() {
		res, err := p.h.Drain(ctx, spread)
		done <- drained{res, err}
	}()
	waitFor(t, "Drain to start", hangGuard, func() bool { return isDraining(p.h) })
	p.h.Hurry()
	for i := range n {
		select {
		case code := <-codes:
			if code != websocket.CloseGoingAway {
				t.Errorf("client got close %d, want 1001", code)
			}
		case <-time.After(hangGuard):
			t.Fatalf("%d of %d clients got no close within %v of Hurry (spread %v)", n-i, n, hangGuard, spread)
		}
	}
	select {
	case d := <-done:
		if d.err != nil || d.res != (DrainResult{Closed: n}) {
			t.Errorf("Drain = %+v, %v; want %+v, nil", d.res, d.err, DrainResult{Closed: n})
		}
	case <-time.After(hangGuard):
		t.Fatal("Drain did not return after Hurry")
	}
	checkBackendGoingAway(t, backendErrs, n)
}

// TestReloadDuringDrain: once Drain has started, Reload decides nothing:
// the sessions are the drain's, and get its 1001, not the reload's close.
func TestReloadDuringDrain(t *testing.T) {
	const n = 3
	backend, _ := reportingEcho(t)
	up := testUpstream(backend)
	p := startProxyWith(t, slowCloses(), liveRoute(up, "chat", routes.Close, 4001, "old"))
	clients := make([]*websocket.Conn, n)
	for i := range clients {
		clients[i], _ = dialWS(t, p.addr, "/", nil)
		echo(t, clients[i], fmt.Sprint("session ", i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := p.h.Drain(ctx, time.Hour)
		done <- err
	}()
	waitFor(t, "Drain to start", hangGuard, func() bool { return isDraining(p.h) })

	r := liveRoute(up, "chat", routes.Close, 4002, "reload")
	r.WebSocket.MaxMessageSize = 1 << 20
	if got := p.reload(t, 0, nil, r); got != (ReloadResult{}) {
		t.Errorf("Reload during Drain = %+v, want zero", got)
	}
	for i, c := range clients {
		echo(t, c, fmt.Sprint("after the reload ", i))
	}
	p.h.Hurry()
	for i, c := range clients {
		if code, reason := closeOf(c, hangGuard); code != websocket.CloseGoingAway || reason != "going away" {
			t.Errorf("client %d got close %d %q, want the drain's 1001 %q", i, code, reason, "going away")
		}
	}
	if err := recvErr(t, "Drain to return", done, hangGuard); err != nil {
		t.Errorf("Drain = %v, want nil", err)
	}
}

// TestDrainStopsReloadSchedules: a session a reload scheduled to close
// within an hour is closed by a drain that starts meanwhile, with the
// drain's 1001, and Drain waits for no reload schedule.
func TestDrainStopsReloadSchedules(t *testing.T) {
	backend, _ := reportingEcho(t)
	up := testUpstream(backend)
	p := startProxyWith(t, slowCloses(), liveRoute(up, "chat", routes.Drain, 4001, "old"))
	c, _ := dialWS(t, p.addr, "/", nil)
	echo(t, c, "before")
	r := liveRoute(up, "chat", routes.Drain, 4001, "old")
	r.WebSocket.IdleTimeout = 2 * time.Hour
	if got, want := p.reload(t, time.Hour, nil, r), (ReloadResult{Draining: 1}); got != want {
		t.Errorf("Reload = %+v, want %+v", got, want)
	}
	got := make(chan int, 1)
	go func() {
		code, _ := closeOf(c, hangGuard)
		got <- code
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	done := make(chan drained, 1)
	go func() {
		res, err := p.h.Drain(ctx, 0)
		done <- drained{res, err}
	}()
	select {
	case d := <-done:
		if d.err != nil || d.res != (DrainResult{Closed: 1}) {
			t.Errorf("Drain = %+v, %v; want %+v, nil", d.res, d.err, DrainResult{Closed: 1})
		}
	case <-time.After(hangGuard):
		t.Fatal("Drain did not return: it waits for the reload's schedule")
	}
	if code := <-got; code != websocket.CloseGoingAway {
		t.Errorf("client got close %d, want the drain's 1001", code)
	}
}

// drained is what Drain returned.
type drained struct {
	res DrainResult
	err error
}

// TestReloadNoLeak: reloads that close sessions leave no goroutine behind
// (each reload's schedule ends once its closes are sent).
func TestReloadNoLeak(t *testing.T) {
	const rounds = 30
	backend, _ := reportingEcho(t)
	up := testUpstream(backend)
	p := startProxyWith(t, slowCloses(), liveRoute(up, "chat", routes.Close, 4000, "bye"))
	round := func(i int) {
		t.Helper()
		c, _ := dialWS(t, p.addr, "/", nil)
		echo(t, c, fmt.Sprint("round ", i))
		r := liveRoute(up, "chat", routes.Close, 4000, "bye")
		r.WebSocket.MaxMessageSize = int64(1<<20 + i)
		if got, want := p.reload(t, 0, nil, r), (ReloadResult{Closed: 1}); got != want {
			t.Fatalf("round %d: Reload = %+v, want %+v", i, got, want)
		}
		if code, _ := closeOf(c, hangGuard); code != 4000 {
			t.Fatalf("round %d: client got close %d, want 4000", i, code)
		}
		c.Close()
		waitFor(t, "the session to end", hangGuard, func() bool { return p.h.Sessions() == 0 })
	}
	round(0) // warm-up: pollers, pools, timers
	base := runtime.NumGoroutine()
	for i := 1; i <= rounds; i++ {
		round(i)
	}
	deadline := time.Now().Add(hangGuard)
	n := runtime.NumGoroutine()
	for n > base+5 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond) // polling interval, not a wait for an event
		n = runtime.NumGoroutine()
	}
	if n > base+5 {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines after %d reloads, %d before\n%s", n, rounds, base, buf[:runtime.Stack(buf, true)])
	}
	t.Logf("goroutines: %d before, %d after %d reloads", base, n, rounds)
}

// TestReady: a handler is not ready until its owner says so, and stops
// being ready when told, while it still serves.
func TestReady(t *testing.T) {
	p := startProxy(t, pathRoute("/", &routes.Route{Name: "ok", Respond: &routes.Respond{Status: 200, Body: "ok"}}))
	if p.h.Ready() {
		t.Error("Ready() = true before SetReady(true)")
	}
	p.h.SetReady(true)
	if !p.h.Ready() {
		t.Error("Ready() = false after SetReady(true)")
	}
	p.h.SetReady(false)
	if p.h.Ready() {
		t.Error("Ready() = true after SetReady(false)")
	}
	resp, body := do(t, httpClient(t), newRequest(t, "GET", "http://"+p.addr+"/", nil))
	if resp.StatusCode != http.StatusOK || body != "ok" {
		t.Errorf("GET / while not ready = %d %q, want 200 \"ok\" (readiness does not stop serving)", resp.StatusCode, body)
	}
}
