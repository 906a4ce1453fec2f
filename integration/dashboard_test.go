package integration

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"image/png"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// The admin dashboard (admin/dashboard.html) in Debian's headless
// Chromium, driven over WebDriver (webdriver_test.go), against the real
// binary and real WebSocket clients.

const (
	// dashboardGuard is the hang guard of each wait on the dashboard. The
	// page updates once a second; a wait normally ends within two.
	dashboardGuard = 60 * time.Second

	// screenshotPath is the dashboard's picture in docs/admin.md,
	// written by TestDashboardScreenshot when updateScreenshotEnv is 1.
	screenshotPath      = moduleRoot + "/docs/dashboard.png"
	updateScreenshotEnv = "WSGATE_UPDATE_SCREENSHOT"
	// screenshotWidth and screenshotHeight are the viewport of the
	// screenshot, in CSS pixels (device pixel ratio 1).
	screenshotWidth, screenshotHeight = 1280, 900
)

// adminToken returns a random admin token: 32 hex digits, as docs/admin.md
// makes one (openssl rand -hex 16).
func adminToken(t *testing.T) string {
	t.Helper()
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// adminGet sends GET path to the admin listener with the token and
// decodes the JSON answer into v; a status other than 200 fails the test.
func adminGet(t *testing.T, g *gw, token, path string, v any) {
	t.Helper()
	resp, body := get(t, httpClient(), "http://"+g.AdminAddr+path, map[string]string{"Authorization": "Bearer " + token})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d, body %.300q; want 200", path, resp.StatusCode, body)
	}
	if err := json.Unmarshal([]byte(body), v); err != nil {
		t.Fatalf("GET %s: %v in %.300q", path, err, body)
	}
}

// apiSession is a session as GET /api/sessions shows it.
type apiSession struct {
	ID         string `json:"id"`
	Route      string `json:"route"`
	Upstream   string `json:"upstream"`
	FromClient struct {
		Messages int64 `json:"messages"`
	} `json:"from_client"`
}

// jsString returns s as a JavaScript string literal.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// jsText returns a JavaScript expression: the text of the first element
// matching the CSS selector (it throws while there is none, which
// WaitUntil counts as not yet).
func jsText(css string) string {
	return "document.querySelector(" + jsString(css) + ").textContent"
}

// sessionRow and closedRow are the CSS selectors of a session's row in
// the sessions table and in the recent closes.
func sessionRow(id string) string { return "#sessions tr[data-session-id=" + strconv.Quote(id) + "]" }
func closedRow(id string) string  { return "#closes tr[data-closed-id=" + strconv.Quote(id) + "]" }

// refusedStreams returns how many requests for /api/stream the admin API
// of g refused (401) so far, from its log.
func refusedStreams(g *gw) int {
	n, _ := countRefusedStreams(g)
	return n
}

func countRefusedStreams(g *gw) (int, <-chan struct{}) {
	entries, changed := g.logs.snapshot()
	n := 0
	for _, e := range entries {
		if e["msg"] == "admin request refused" && e["path"] == "/api/stream" {
			n++
		}
	}
	return n, changed
}

// waitRefusedStreams waits until the admin API of g has logged at least
// want refused /api/stream requests, and returns how many it has.
func waitRefusedStreams(t *testing.T, g *gw, want int) int {
	t.Helper()
	deadline := time.After(ioTimeout)
	for {
		n, changed := countRefusedStreams(g)
		if n >= want {
			return n
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("wsgate logged %d refused /api/stream requests within %v, want %d", n, ioTimeout, want)
		}
	}
}

// openDashboard loads the dashboard of g, checks that it asks for the
// token (its first stream request got 401), enters token with enter
// (the submit button, or the Enter key) and waits until the status is
// live.
func openDashboard(t *testing.T, b *browser, g *gw, token string, enter func(input string)) {
	t.Helper()
	refused := refusedStreams(g)
	b.Navigate("http://" + g.AdminAddr + "/")
	if title := decodeJSON[string](t, b.Eval("return document.title")); title != "wsgate admin" {
		t.Fatalf("document.title = %q, want %q", title, "wsgate admin")
	}
	b.WaitUntil(t, "token form", `!document.getElementById('token-dialog').hidden`, dashboardGuard)
	b.WaitUntil(t, "status \"token needed\"", jsText("#status")+` === 'token needed'`, dashboardGuard)
	// The form is there because the stream was refused: wsgate logs it
	// (the line may reach the test's log buffer after the page has
	// reacted to the 401).
	if n := waitRefusedStreams(t, g, refused+1) - refused; n != 1 {
		t.Fatalf("wsgate refused %d /api/stream requests while the page loaded, want 1", n)
	}
	enter(b.Find("#token"))
	b.WaitUntil(t, "status live", jsText("#status")+` === 'live'`, dashboardGuard)
	if !decodeJSON[bool](t, b.Eval(`return document.getElementById('token-dialog').hidden`)) {
		t.Fatal("token form still shown while the status is live")
	}
}

// TestDashboard drives the admin dashboard as an operator would: it asks
// for the token once, shows a session opened by a Go client with its
// counters as they grow and its route, keeps the token over a reload, and
// its close button closes the session with 4000 "closed from dashboard",
// which then shows among the recent closes.
func TestDashboard(t *testing.T) {
	needBinary(t)
	echo := newWSBackend()
	echoAddr := echo.start(t)
	token := adminToken(t)
	g := startGateway(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  echo: {targets: ["http://%s"]}
routes:
  - name: chat
    match: {path_prefix: /chat}
    upstream: echo
admin:
  addr: 127.0.0.1:0
  token: %s
`, echoAddr, yamlQuote(token)))
	if g.AdminAddr == "" {
		t.Fatal("no \"admin listening\" log line")
	}
	// Started last, so its cleanup runs first: Chromium is gone before
	// wsgate and the backend stop.
	b := startBrowser(t)
	t.Logf("chromium %s, chromedriver %s", b.BrowserVersion, b.DriverVersion)

	start := time.Now()
	step := func(format string, args ...any) {
		t.Helper()
		t.Logf("%6.2fs  %s", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}

	// The API refuses the stream without the token, as the page will
	// find out.
	resp, _ := get(t, httpClient(), "http://"+g.AdminAddr+"/api/stream", nil)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("GET /api/stream without token: status %d, want 401", resp.StatusCode)
	}
	// Its log line must be in before openDashboard counts the page's.
	waitRefusedStreams(t, g, 1)

	step("open the dashboard; it asks for the token")
	openDashboard(t, b, g, token, func(input string) {
		b.SendKeys(input, token)
		b.Click(b.Find("#token-submit"))
	})
	step("token entered; status live")
	if rows := b.FindAll("#sessions tr[data-session-id]"); len(rows) != 0 {
		t.Fatalf("sessions table has %d rows before any session", len(rows))
	}

	c := dialWS(t, nil, "ws://"+g.Addr+"/chat/room1", nil)
	sent := 0
	send := func(n int) {
		t.Helper()
		for range n {
			sent++
			echoOnce(t, c, websocket.TextMessage, fmt.Appendf(nil, "message %d", sent))
		}
	}
	send(3)
	step("WebSocket through wsgate: 3 messages echoed")

	var page struct {
		Sessions []apiSession `json:"sessions"`
		Total    int          `json:"total"`
	}
	adminGet(t, g, token, "/api/sessions", &page)
	if page.Total != 1 || len(page.Sessions) != 1 {
		t.Fatalf("GET /api/sessions: total %d, %d sessions; want 1", page.Total, len(page.Sessions))
	}
	s := page.Sessions[0]
	if s.Route != "chat" || s.FromClient.Messages != 3 {
		t.Fatalf("GET /api/sessions: route %q, from_client %d messages; want chat, 3", s.Route, s.FromClient.Messages)
	}
	id := s.ID
	row := sessionRow(id)
	b.WaitFor(row, dashboardGuard)
	step("row of session %s shown", id)
	if got := b.Text(b.Find(row + ` [data-field="id"]`)); got != id {
		t.Errorf("session row's id cell = %q, want %q", got, id)
	}
	if got := b.Text(b.Find(row + ` [data-field="route"]`)); got != "chat" {
		t.Errorf("session row's route cell = %q, want %q", got, "chat")
	}
	if rows := b.FindAll("#sessions tr[data-session-id]"); len(rows) != 1 {
		t.Errorf("sessions table has %d rows, want 1", len(rows))
	}

	// The counters follow the traffic, round after round.
	for round, n := range []int{0, 2, 5} {
		send(n)
		want := strconv.Itoa(sent)
		b.WaitUntil(t, fmt.Sprintf("from_client_messages %s (round %d)", want, round+1),
			jsText(row+` [data-field="from_client_messages"]`)+" === "+jsString(want), dashboardGuard)
		b.WaitUntil(t, fmt.Sprintf("from_backend_messages %s (round %d)", want, round+1),
			jsText(row+` [data-field="from_backend_messages"]`)+" === "+jsString(want), dashboardGuard)
		step("round %d: c→b and b→c cells show %s messages", round+1, want)
	}

	// The per-route view: the route's row, with its open session.
	routeRow := `#routes tr[data-route="chat"]`
	b.WaitUntil(t, "route chat with 1 open session",
		`document.querySelector(`+jsString(routeRow+` [data-field="sessions"]`)+`).dataset.value === '1'`, dashboardGuard)
	if got := b.Text(b.Find(routeRow + ` [data-field="route"]`)); got != "chat" {
		t.Errorf("route row's route cell = %q, want %q", got, "chat")
	}
	step("route chat shown with 1 open session")

	// A reload keeps the token (session storage): no form, no 401.
	b.Eval(`window.beforeReload = true`)
	refused := refusedStreams(g)
	b.Navigate("http://" + g.AdminAddr + "/")
	if decodeJSON[bool](t, b.Eval(`return window.beforeReload === true`)) {
		t.Fatal("the page was not reloaded")
	}
	b.WaitUntil(t, "status live after the reload", jsText("#status")+` === 'live'`, dashboardGuard)
	if !decodeJSON[bool](t, b.Eval(`return document.getElementById('token-dialog').hidden`)) {
		t.Error("the reloaded page shows the token form")
	}
	if n := refusedStreams(g); n != refused {
		t.Errorf("wsgate refused %d /api/stream requests of the reloaded page, want none", n-refused)
	}
	if decodeJSON[bool](t, b.Eval(`return document.getElementById('forget-token').hidden`)) {
		t.Error("\"forget token\" is hidden on the reloaded page, which has a token")
	}
	b.WaitUntil(t, "session row after the reload",
		jsText(row+` [data-field="from_client_messages"]`)+" === "+jsString(strconv.Itoa(sent)), dashboardGuard)
	step("reloaded: live without asking for the token; row still there")

	// Close it from the dashboard.
	b.Click(b.Find(`button[data-close=` + strconv.Quote(id) + `]`))
	step("close button clicked")
	ce := readClose(t, c)
	if ce.Code != 4000 || ce.Text != "closed from dashboard" {
		t.Errorf("client got close %d %q, want 4000 %q", ce.Code, ce.Text, "closed from dashboard")
	}
	step("client got close %d %q", ce.Code, ce.Text)
	// wsrelay.Registry.Close: the client gets the code, the backend 1001.
	if bc := echo.nextClose(t, "/chat/room1"); bc.Code != websocket.CloseGoingAway {
		t.Errorf("backend got close %d %q, want 1001", bc.Code, bc.Text)
	}
	g.waitLog(ioTimeout, "admin closed session "+id, func(e map[string]any) bool {
		return e["msg"] == "admin closed session" && e["session"] == id &&
			e["close_code"] == float64(4000) && e["reason"] == "closed from dashboard"
	})

	b.WaitUntil(t, "session row gone", `document.querySelector(`+jsString(row)+`) === null`, dashboardGuard)
	closed := closedRow(id)
	b.WaitFor(closed, dashboardGuard)
	step("row gone; session in recent closes")
	for field, want := range map[string]string{
		"id":                   id,
		"route":                "chat",
		"client_code":          "4000 private",
		"backend_code":         "1001 going away",
		"closed_by":            "wsgate",
		"reason":               "closed from dashboard",
		"from_client_messages": strconv.Itoa(sent),
	} {
		if got := b.Text(b.Find(closed + ` [data-field="` + field + `"]`)); got != want {
			t.Errorf("recent close's %s cell = %q, want %q", field, got, want)
		}
	}
	if got := decodeJSON[string](t, b.Eval(`return document.querySelector(arguments[0]).dataset.value`,
		closed+` [data-field="client_code"]`)); got != "4000" {
		t.Errorf("recent close's client_code value = %q, want 4000", got)
	}
	adminGet(t, g, token, "/api/sessions", &page)
	if page.Total != 0 {
		t.Errorf("GET /api/sessions after the close: total %d, want 0", page.Total)
	}
	step("done")
}

// TestDashboardScreenshot takes the dashboard's picture for docs/admin.md:
// three sessions on two routes with steady traffic, one ended session and
// one refused handshake, once the charts have some points. With
// WSGATE_UPDATE_SCREENSHOT=1 it writes docs/dashboard.png (like a golden
// file); otherwise it checks that the screenshot and that file are PNGs
// of the expected size.
func TestDashboardScreenshot(t *testing.T) {
	needBinary(t)
	chat1, chat2, feed := newWSBackend(), newWSBackend(), newWSBackend()
	chat1Addr, chat2Addr, feedAddr := chat1.start(t), chat2.start(t), feed.start(t)
	token := adminToken(t)
	const origin = "http://app.example"
	g := startGateway(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  chat:
    targets: ["http://%s", "http://%s"]
    balance: least_conn
  feed: {targets: ["http://%s"]}
routes:
  - name: chat
    match: {path_prefix: /chat}
    upstream: chat
  - name: feed
    match: {path_prefix: /feed}
    upstream: feed
    websocket: {origins: [%q]}
admin:
  addr: 127.0.0.1:0
  token: %s
`, chat1Addr, chat2Addr, feedAddr, origin, yamlQuote(token)))
	b := startBrowser(t)
	setViewport(t, b, screenshotWidth, screenshotHeight)

	openDashboard(t, b, g, token, func(input string) {
		// Enter submits: no click, so no pointer over the page to
		// highlight a row in the picture.
		b.SendKeys(input, token+"\uE007")
	})

	// One session that ended, for the recent closes.
	gone := dialWS(t, nil, "ws://"+g.Addr+"/chat/lobby", nil)
	echoOnce(t, gone, websocket.TextMessage, []byte("hello"))
	_ = gone.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "page closed"), time.Now().Add(ioTimeout))
	if ce := readClose(t, gone); ce.Code != websocket.CloseNormalClosure {
		t.Fatalf("close reply %d %q, want 1000", ce.Code, ce.Text)
	}
	// One handshake refused: an Origin the feed route does not allow.
	d := &websocket.Dialer{HandshakeTimeout: ioTimeout}
	if c, resp, err := d.Dial("ws://"+g.Addr+"/feed/prices", http.Header{"Origin": {"http://elsewhere.example"}}); err == nil {
		c.Close()
		t.Fatal("handshake with a foreign Origin succeeded, want 403")
	} else if resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("handshake with a foreign Origin: %v, want status 403", err)
	}

	// Three sessions with steady traffic, each at its own pace.
	feedHdr := http.Header{"Origin": {origin}}
	traffic := []struct {
		url   string
		hdr   http.Header
		every time.Duration
		size  int
	}{
		{"ws://" + g.Addr + "/chat/room1", nil, 40 * time.Millisecond, 60},
		{"ws://" + g.Addr + "/chat/room2", nil, 100 * time.Millisecond, 200},
		{"ws://" + g.Addr + "/feed/prices", feedHdr, 25 * time.Millisecond, 900},
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	defer func() {
		close(stop)
		wg.Wait()
	}()
	for _, tr := range traffic {
		c := dialWS(t, nil, tr.url, tr.hdr)
		msg := bytes.Repeat([]byte("x"), tr.size)
		wg.Go(func() { pace(t, c, tr.every, msg, stop) })
	}
	var page struct {
		Total int `json:"total"`
	}
	// The ended session leaves the registry just after its close reply.
	if !poll(dashboardGuard, func() bool {
		adminGet(t, g, token, "/api/sessions", &page)
		return page.Total == 3
	}) {
		t.Fatalf("GET /api/sessions: total %d within %v, want 3", page.Total, dashboardGuard)
	}

	// Wait for the tables, then for some updates with traffic: each
	// update adds a point to the charts.
	b.WaitUntil(t, "3 session rows", `document.querySelectorAll('#sessions tr[data-session-id]').length === 3`, dashboardGuard)
	b.WaitUntil(t, "2 routes", `document.querySelectorAll('#routes tr[data-route]').length === 2`, dashboardGuard)
	b.WaitUntil(t, "1 recent close", `document.querySelectorAll('#closes tr[data-closed-id]').length === 1`, dashboardGuard)
	b.Eval(`window.renders = 0;
		new MutationObserver(() => { window.renders++; })
			.observe(document.getElementById('updated'), {childList: true, characterData: true, subtree: true});`)
	const points = 10
	b.WaitUntil(t, fmt.Sprintf("%d updates", points), fmt.Sprintf("window.renders >= %d", points), dashboardGuard)
	if got := b.Text(b.Find("#sum-msgs")); got == "–" || got == "0" {
		t.Errorf("messages per second card shows %q with traffic running", got)
	}
	if got := b.Text(b.Find("#sum-refused")); got != "1" {
		t.Errorf("refused handshakes card shows %q, want 1", got)
	}

	shot := b.Screenshot()
	cfg, err := png.DecodeConfig(bytes.NewReader(shot))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if cfg.Width != screenshotWidth || cfg.Height != screenshotHeight {
		t.Errorf("screenshot is %dx%d, want %dx%d", cfg.Width, cfg.Height, screenshotWidth, screenshotHeight)
	}
	t.Logf("screenshot: %d bytes, %dx%d", len(shot), cfg.Width, cfg.Height)

	if os.Getenv(updateScreenshotEnv) == "1" {
		if err := os.WriteFile(screenshotPath, shot, 0o644); err != nil {
			t.Fatal(err)
		}
		abs, _ := filepath.Abs(screenshotPath)
		t.Logf("wrote %s", abs)
		return
	}
	data, err := os.ReadFile(screenshotPath)
	if err != nil {
		t.Fatalf("%v (make it with %s=1 go test -run TestDashboardScreenshot ./integration)", err, updateScreenshotEnv)
	}
	if cfg, err := png.DecodeConfig(bytes.NewReader(data)); err != nil {
		t.Errorf("%s: %v", screenshotPath, err)
	} else if cfg.Width != screenshotWidth || cfg.Height != screenshotHeight {
		t.Errorf("%s is %dx%d, want %dx%d", screenshotPath, cfg.Width, cfg.Height, screenshotWidth, screenshotHeight)
	}
}

// pace sends msg on c every interval and reads its echo, until stop is
// closed. It runs in its own goroutine: it reports errors with t.Errorf.
func pace(t *testing.T, c *websocket.Conn, every time.Duration, msg []byte, stop <-chan struct{}) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		_ = c.SetWriteDeadline(time.Now().Add(ioTimeout))
		if err := c.WriteMessage(websocket.TextMessage, msg); err != nil {
			t.Errorf("traffic: write: %v", err)
			return
		}
		_ = c.SetReadDeadline(time.Now().Add(ioTimeout))
		if _, _, err := c.ReadMessage(); err != nil {
			t.Errorf("traffic: read echo: %v", err)
			return
		}
	}
}

// setViewport resizes b's window so that its viewport is width x height
// CSS pixels: the window size minus the browser's frame, which it
// measures.
func setViewport(t *testing.T, b *browser, width, height int) {
	t.Helper()
	type size struct{ Width, Height int }
	inner := func() size {
		return decodeJSON[size](t, b.Eval(`return {Width: window.innerWidth, Height: window.innerHeight}`))
	}
	rect := decodeJSON[size](t, b.command("get window rect", http.MethodGet, "/window/rect", nil))
	in := inner()
	b.command("set window rect", http.MethodPost, "/window/rect", map[string]int{
		"width":  width + rect.Width - in.Width,
		"height": height + rect.Height - in.Height,
	})
	if got := inner(); got.Width != width || got.Height != height {
		t.Fatalf("viewport %dx%d after resizing the window, want %dx%d", got.Width, got.Height, width, height)
	}
}
