package integration

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"image/png"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// A small W3C WebDriver client (https://www.w3.org/TR/webdriver2/) that
// drives Debian's headless Chromium through Debian's chromedriver (package
// chromium-driver), over HTTP and JSON with the standard library only: no
// npm, no Selenium. Tests use it where --dump-dom is not enough: clicking,
// typing, waiting for the page to change, screenshots.

const (
	chromedriverBin = "/usr/bin/chromedriver"
	chromiumBin     = "/usr/bin/chromium"

	// webdriverTimeout bounds one WebDriver command, session creation
	// (which starts Chromium) included. It is a hang guard, not a
	// measurement: a command normally takes milliseconds.
	webdriverTimeout = 90 * time.Second
	// scriptTimeout is the session's script timeout: how long EvalAsync
	// waits for the page to call back; pageLoadTimeout bounds Navigate.
	scriptTimeout   = 60 * time.Second
	pageLoadTimeout = 60 * time.Second
	// chromedriverStartTimeout bounds chromedriver's start until its
	// /status reports ready.
	chromedriverStartTimeout = 30 * time.Second
	// pollInterval spaces the attempts of WaitFor and WaitUntil.
	pollInterval = 25 * time.Millisecond

	// webElementKey is the key of an element reference in WebDriver JSON
	// (W3C WebDriver, "Elements").
	webElementKey = "element-6066-11e4-a52e-4f735466cecf"
)

// browserArgs are Chromium's flags: headless without a sandbox (tests run
// as root in containers), no GPU, /tmp instead of a small /dev/shm, a
// fixed window size so screenshots have a known size (the viewport of
// a 1280x900 window is 1280x757 in Chromium 156), and no traffic
// except what the test asks for.
var browserArgs = []string{
	"--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
	"--window-size=1280,900",
	"--no-first-run", "--no-proxy-server", "--disable-background-networking",
	"--disable-component-update", "--disable-sync", "--disable-quic",
}

// browser is one WebDriver session in a headless Chromium run by a
// chromedriver process of its own. Every method fails the test (t.Fatalf,
// with the WebDriver error) when the command fails; so, like t.Fatalf,
// call them from the test's goroutine only. In a subtest use b.in(t).
type browser struct {
	t       *testing.T
	client  *http.Client
	session string // the session's URL: http://127.0.0.1:port/session/id

	// BrowserVersion and DriverVersion are what the new session reported.
	BrowserVersion, DriverVersion string
}

// startBrowser starts chromedriver on a free port and a headless Chromium
// session in it. Cleanup deletes the session (which quits Chromium) and
// stops chromedriver and waits for it. It skips the test under -short and when chromedriver
// or Chromium is not installed (skipMissingPeer).
func startBrowser(t *testing.T) *browser {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: skipped under -short")
	}
	for _, bin := range []string{chromedriverBin, chromiumBin} {
		if _, err := os.Stat(bin); err != nil {
			skipMissingPeer(t, bin+" not installed (Debian packages chromium-driver and chromium)")
		}
	}
	// Chromium's profile (chromedriver makes it under TMPDIR), caches and
	// crash dumps (under HOME) go in a directory removed after the test;
	// TempDir's removal is registered first, so it runs after the
	// processes are gone.
	dir := t.TempDir()
	client := &http.Client{
		Timeout:   webdriverTimeout,
		Transport: &http.Transport{Proxy: nil, DisableCompression: true},
	}
	driver := startChromedriver(t, client, dir)

	caps := map[string]any{
		"capabilities": map[string]any{
			"alwaysMatch": map[string]any{
				"browserName":      "chrome",
				"pageLoadStrategy": "normal",
				"timeouts": map[string]any{
					"implicit": 0, // WaitFor polls instead
					"script":   scriptTimeout.Milliseconds(),
					"pageLoad": pageLoadTimeout.Milliseconds(),
				},
				"goog:chromeOptions": map[string]any{
					"binary": chromiumBin,
					"args":   browserArgs,
				},
			},
		},
	}
	value, err := webdriverCall(client, http.MethodPost, driver+"/session", caps)
	if err != nil {
		t.Fatalf("webdriver: new session: %v", err)
	}
	var created struct {
		SessionID    string `json:"sessionId"`
		Capabilities struct {
			BrowserVersion string `json:"browserVersion"`
			Chrome         struct {
				ChromedriverVersion string `json:"chromedriverVersion"`
			} `json:"chrome"`
		} `json:"capabilities"`
	}
	if err := json.Unmarshal(value, &created); err != nil || created.SessionID == "" {
		t.Fatalf("webdriver: new session: no session id in %.300s (%v)", value, err)
	}
	b := &browser{
		t:              t,
		client:         client,
		session:        driver + "/session/" + created.SessionID,
		BrowserVersion: created.Capabilities.BrowserVersion,
	}
	// "156.0.8078.129 (1a2e4e6f...-refs/branch-heads/8078@{#2497})"
	if v := strings.Fields(created.Capabilities.Chrome.ChromedriverVersion); len(v) > 0 {
		b.DriverVersion = v[0]
	}
	// Deleting the session quits Chromium; chromedriver answers once it
	// has. startChromedriver's cleanup runs after this one.
	t.Cleanup(func() {
		if _, err := webdriverCall(client, http.MethodDelete, b.session, nil); err != nil {
			t.Errorf("webdriver: delete session: %v", err)
		}
	})
	return b
}

// in returns b reporting failures to t, for use in a subtest of the test
// that started the browser. Both share the session.
func (b *browser) in(t *testing.T) *browser {
	c := *b
	c.t = t
	return &c
}

// startChromedriver starts chromedriver on a free port of 127.0.0.1,
// waits until it is ready for sessions, and returns its base URL. Cleanup
// stops it and waits for it. chromedriver has no --port=0, so the port is
// one that was free a moment ago; when another process took it in
// between, chromedriver exits and this tries another port.
func startChromedriver(t *testing.T, client *http.Client, dir string) string {
	t.Helper()
	const attempts = 5
	for i := 1; ; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		base, err := tryChromedriver(t, client, dir, port)
		if err == nil {
			return base
		}
		if !errors.Is(err, errPortTaken) || i == attempts {
			t.Fatalf("start chromedriver (attempt %d): %v", i, err)
		}
		t.Logf("chromedriver: %v; trying another port", err)
	}
}

var errPortTaken = errors.New("port taken")

// tryChromedriver is one attempt of startChromedriver, on the given
// port. It returns an error wrapping errPortTaken when chromedriver could
// not bind the port.
func tryChromedriver(t *testing.T, client *http.Client, dir string, portNum int) (string, error) {
	port := strconv.Itoa(portNum)
	out := newLogBuffer()
	cmd := exec.Command(chromedriverBin, "--port="+port)
	cmd.Env = append(os.Environ(), "HOME="+dir, "TMPDIR="+dir)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return "", err
	}
	exited := make(chan struct{})
	var exitErr error // set before exited is closed
	go func() {
		exitErr = cmd.Wait()
		close(exited)
	}()
	stop := func() {
		_ = cmd.Process.Kill()
		<-exited
	}

	// Ready means chromedriver logged that it bound the port (so the
	// process answering is this one) and /status says ready.
	base := "http://127.0.0.1:" + port
	ready := func() bool {
		if !strings.Contains(out.String(), "started successfully") {
			return false
		}
		value, err := webdriverCall(client, http.MethodGet, base+"/status", nil)
		if err != nil {
			return false
		}
		var status struct {
			Ready bool `json:"ready"`
		}
		return json.Unmarshal(value, &status) == nil && status.Ready
	}
	deadline := time.NewTimer(chromedriverStartTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for !ready() {
		select {
		case <-exited:
			log := out.String()
			if strings.Contains(log, "bind() failed") || strings.Contains(log, "port not available") {
				return "", fmt.Errorf("%w: port %s: %s", errPortTaken, port, lastLine(log))
			}
			return "", fmt.Errorf("chromedriver --port=%s exited (code %d) before it was ready:\n%s", port, exitCode(exitErr), log)
		case <-deadline.C:
			stop()
			return "", fmt.Errorf("chromedriver --port=%s not ready within %v:\n%s", port, chromedriverStartTimeout, out.String())
		case <-tick.C:
		}
	}
	// Killing chromedriver alone would leave Chromium running (measured:
	// Chromium does not notice its driver is gone), so first /shutdown,
	// which quits every browser chromedriver still runs (none, unless the
	// session could not be deleted) and then chromedriver itself. Kill is
	// the fallback for a chromedriver that does not exit.
	t.Cleanup(func() {
		_, _ = webdriverCall(client, http.MethodGet, base+"/shutdown", nil)
		select {
		case <-exited:
		case <-time.After(stopTimeout):
			t.Errorf("chromedriver did not exit within %v of /shutdown; killed", stopTimeout)
		}
		stop()
		if t.Failed() {
			t.Logf("chromedriver output:\n%s", out.String())
		}
	})
	return base, nil
}

// lastLine returns the last non-empty line of s.
func lastLine(s string) string {
	l := lines(s)
	if len(l) == 0 {
		return ""
	}
	return l[len(l)-1]
}

// webdriverError is an error answer of the WebDriver protocol.
type webdriverError struct {
	Status  int    // HTTP status
	Code    string // WebDriver error code: "no such element", "javascript error", ...
	Message string
}

func (e *webdriverError) Error() string {
	// chromedriver's messages mostly start with the code already.
	if strings.HasPrefix(e.Message, e.Code) {
		return fmt.Sprintf("%s (HTTP %d)", e.Message, e.Status)
	}
	return fmt.Sprintf("%s: %s (HTTP %d)", e.Code, e.Message, e.Status)
}

// webdriverCall sends one WebDriver command (body nil: none; it is JSON
// encoded otherwise) and returns the answer's "value".
func webdriverCall(c *http.Client, method, url string, body any) (json.RawMessage, error) {
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("read answer: %w", err)
	}
	var answer struct {
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(data, &answer); err != nil {
		return nil, fmt.Errorf("status %d, not WebDriver JSON: %.300q", resp.StatusCode, data)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error   string `json:"error"`
			Message string `json:"message"`
		}
		if json.Unmarshal(answer.Value, &e) != nil || e.Error == "" {
			return nil, fmt.Errorf("status %d: %.300s", resp.StatusCode, data)
		}
		return nil, &webdriverError{Status: resp.StatusCode, Code: e.Error, Message: e.Message}
	}
	return answer.Value, nil
}

// command sends a command of this session (path is relative to the
// session's URL) and returns its value; what names the call in the
// failure message.
func (b *browser) command(what, method, path string, body any) json.RawMessage {
	b.t.Helper()
	value, err := b.try(method, path, body)
	if err != nil {
		b.t.Fatalf("webdriver %s: %v", what, err)
	}
	return value
}

// try is command returning the error.
func (b *browser) try(method, path string, body any) (json.RawMessage, error) {
	return webdriverCall(b.client, method, b.session+path, body)
}

// Navigate loads url in the current tab and waits for its load event.
func (b *browser) Navigate(url string) {
	b.t.Helper()
	b.command(fmt.Sprintf("Navigate(%q)", url), http.MethodPost, "/url", map[string]string{"url": url})
}

// Eval runs script as the body of a function in the page, with args as
// its arguments (element IDs go in as elementRef(id)), and returns what
// it returns, in JSON. A script that throws fails the test.
func (b *browser) Eval(script string, args ...any) json.RawMessage {
	b.t.Helper()
	return b.command(fmt.Sprintf("Eval(%.80q)", script), http.MethodPost, "/execute/sync", scriptBody(script, args))
}

// EvalAsync is Eval for a script that finishes later: it gets a callback
// as its last argument (arguments[arguments.length-1]) and EvalAsync
// returns the value passed to it. The session's script timeout
// (scriptTimeout) bounds the wait.
func (b *browser) EvalAsync(script string, args ...any) json.RawMessage {
	b.t.Helper()
	return b.command(fmt.Sprintf("EvalAsync(%.80q)", script), http.MethodPost, "/execute/async", scriptBody(script, args))
}

func scriptBody(script string, args []any) map[string]any {
	if args == nil {
		args = []any{} // the protocol wants a list, not null
	}
	return map[string]any{"script": script, "args": args}
}

// elementRef is the JSON form of an element, to pass it to Eval.
func elementRef(elem string) map[string]string {
	return map[string]string{webElementKey: elem}
}

// Find returns the first element that matches the CSS selector; none
// fails the test.
func (b *browser) Find(css string) string {
	b.t.Helper()
	return decodeElement(b.t, b.command(fmt.Sprintf("Find(%q)", css), http.MethodPost, "/element", cssLocator(css)))
}

// FindAll returns every element that matches the CSS selector, in
// document order; none is an empty list.
func (b *browser) FindAll(css string) []string {
	b.t.Helper()
	value := b.command(fmt.Sprintf("FindAll(%q)", css), http.MethodPost, "/elements", cssLocator(css))
	var refs []map[string]string
	if err := json.Unmarshal(value, &refs); err != nil {
		b.t.Fatalf("webdriver FindAll(%q): %v in %.300s", css, err, value)
	}
	elems := make([]string, 0, len(refs))
	for _, r := range refs {
		elems = append(elems, r[webElementKey])
	}
	return elems
}

func cssLocator(css string) map[string]string {
	return map[string]string{"using": "css selector", "value": css}
}

func decodeElement(t *testing.T, value json.RawMessage) string {
	t.Helper()
	var ref map[string]string
	if err := json.Unmarshal(value, &ref); err != nil || ref[webElementKey] == "" {
		t.Fatalf("webdriver: not an element reference: %.300s (%v)", value, err)
	}
	return ref[webElementKey]
}

// Click clicks the middle of the element, as a user would: it fails when
// the element is hidden or covered.
func (b *browser) Click(elem string) {
	b.t.Helper()
	b.command("Click", http.MethodPost, "/element/"+elem+"/click", struct{}{})
}

// Text returns the element's rendered text (innerText: hidden text is
// left out).
func (b *browser) Text(elem string) string {
	b.t.Helper()
	return decodeJSON[string](b.t, b.command("Text", http.MethodGet, "/element/"+elem+"/text", nil))
}

// SendKeys focuses the element and types text into it.
func (b *browser) SendKeys(elem, text string) {
	b.t.Helper()
	b.command(fmt.Sprintf("SendKeys(%.40q)", text), http.MethodPost, "/element/"+elem+"/value", map[string]string{"text": text})
}

// WaitFor polls until an element matches the CSS selector and returns
// the first; none within timeout fails the test.
func (b *browser) WaitFor(css string, timeout time.Duration) string {
	b.t.Helper()
	var elem string
	found := poll(timeout, func() bool {
		b.t.Helper()
		value, err := b.try(http.MethodPost, "/element", cssLocator(css))
		var we *webdriverError
		if errors.As(err, &we) && we.Code == "no such element" {
			return false
		}
		if err != nil {
			b.t.Fatalf("webdriver WaitFor(%q): %v", css, err)
		}
		elem = decodeElement(b.t, value)
		return true
	})
	if !found {
		b.t.Fatalf("webdriver WaitFor(%q): no such element within %v", css, timeout)
	}
	return elem
}

// WaitUntil polls until the JavaScript expression js is true (=== true)
// in the page, and fails t, naming what it waited for and the
// expression's last value, when it is not within timeout. The expression
// may throw while the page gets ready (that counts as not yet); one that
// does not parse fails at once.
func (b *browser) WaitUntil(t *testing.T, what, js string, timeout time.Duration) {
	t.Helper()
	b = b.in(t)
	script := "let v;\ntry { v = (" + js + "\n); } catch (e) { return {ok: false, last: 'threw ' + e}; }\n" +
		"return {ok: v === true, last: typeof v + ' ' + String(v)};"
	var last string
	ok := poll(timeout, func() bool {
		t.Helper()
		r := decodeJSON[waitResult](t, b.command(fmt.Sprintf("WaitUntil(%.80q)", js), http.MethodPost, "/execute/sync", scriptBody(script, nil)))
		last = r.Last
		return r.OK
	})
	if !ok {
		t.Fatalf("no %s within %v; last poll of %s: %s", what, timeout, js, last)
	}
}

// waitResult is what WaitUntil's script returns.
type waitResult struct {
	OK   bool   `json:"ok"`
	Last string `json:"last"` // the expression's type and value, or what it threw
}

// Screenshot returns a PNG of the tab's viewport.
func (b *browser) Screenshot() []byte {
	b.t.Helper()
	s := decodeJSON[string](b.t, b.command("Screenshot", http.MethodGet, "/screenshot", nil))
	img, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		b.t.Fatalf("webdriver Screenshot: %v", err)
	}
	return img
}

// poll calls try every pollInterval until it reports true or timeout has
// passed, with one last try at the deadline (a stalled machine may have
// missed the ticks), and reports whether it succeeded.
func poll(timeout time.Duration, try func() bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		if try() {
			return true
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			return try()
		}
	}
}

// decodeJSON decodes a WebDriver value or fails the test.
func decodeJSON[T any](t *testing.T, value json.RawMessage) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(value, &v); err != nil {
		t.Fatalf("decode %T from %.300s: %v", v, value, err)
	}
	return v
}

// harnessPage is the test page of TestWebDriverHarness; %s is the URL of
// the WebSocket echo server, as a JavaScript string.
const harnessPage = `<!doctype html>
<html><head><meta charset="utf-8"><title>webdriver harness</title></head>
<body>
<input id="name">
<button id="greet">greet</button>
<p id="greeting">not clicked</p>
<ul id="log"></ul>
<script>
const greeting = document.getElementById('greeting');
document.getElementById('greet').addEventListener('click', () => {
  greeting.textContent = 'hello, ' + document.getElementById('name').value;
});
function log(text) {
  const li = document.createElement('li');
  li.className = 'entry';
  li.textContent = text;
  document.getElementById('log').appendChild(li);
}
const ws = new WebSocket(%s);
ws.onopen = () => { log('open'); ws.send('ping from chromium'); };
ws.onmessage = (e) => {
  const p = document.createElement('p');
  p.id = 'echo';
  p.textContent = e.data;
  document.body.appendChild(p);
};
ws.onerror = () => log('error');
ws.onclose = (e) => log('close ' + e.code);
</script>
</body></html>
`

// TestWebDriverHarness proves the WebDriver client on a page of its own:
// typing and clicking change the page, the page's WebSocket reaches an
// echo server and the echo reaches the DOM, scripts run sync and async,
// and a screenshot is a PNG.
func TestWebDriverHarness(t *testing.T) {
	const guard = 60 * time.Second // hang guard for each wait

	echo := newWSBackend()
	received := make(chan string, 16)
	echo.onMessage = func(_ string, c *websocket.Conn, mt int, p []byte) bool {
		select {
		case received <- string(p):
		default:
		}
		return c.WriteMessage(mt, p) == nil
	}
	echoAddr := echo.start(t)

	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, harnessPage, strconv.Quote("ws://"+echoAddr+"/echo"))
	})
	mux.HandleFunc("GET /ping", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "pong")
	})
	page := httptest.NewServer(mux) // on 127.0.0.1:0
	t.Cleanup(page.Close)

	// Started last, so its cleanup runs first: Chromium is gone before
	// the servers close.
	b := startBrowser(t)
	t.Logf("chromium %s, chromedriver %s", b.BrowserVersion, b.DriverVersion)

	b.Navigate(page.URL + "/")
	if title := decodeJSON[string](t, b.Eval("return document.title")); title != "webdriver harness" {
		t.Fatalf("document.title = %q, want %q", title, "webdriver harness")
	}

	t.Run("eval", func(t *testing.T) {
		b := b.in(t)
		if sum := decodeJSON[int](t, b.Eval("return arguments[0] + arguments[1]", 2, 3)); sum != 5 {
			t.Errorf("Eval(2 + 3) = %d, want 5", sum)
		}
		greet := b.Find("#greet")
		if id := decodeJSON[string](t, b.Eval("return arguments[0].id", elementRef(greet))); id != "greet" {
			t.Errorf("Eval(element.id) = %q, want %q", id, "greet")
		}
		got := decodeJSON[string](t, b.EvalAsync(`const done = arguments[arguments.length - 1];
			fetch(arguments[0]).then(r => r.text()).then(done, e => done('error: ' + e));`, "/ping"))
		if got != "pong" {
			t.Errorf("EvalAsync(fetch /ping) = %q, want %q", got, "pong")
		}
	})

	t.Run("type and click", func(t *testing.T) {
		b := b.in(t)
		b.SendKeys(b.Find("#name"), "webdriver")
		b.Click(b.Find("#greet"))
		b.WaitUntil(t, "greeting after the click",
			`document.getElementById('greeting').textContent === 'hello, webdriver'`, guard)
		if got := b.Text(b.Find("#greeting")); got != "hello, webdriver" {
			t.Errorf("Text(#greeting) = %q, want %q", got, "hello, webdriver")
		}
	})

	t.Run("websocket echo", func(t *testing.T) {
		b := b.in(t)
		select {
		case msg := <-received:
			if msg != "ping from chromium" {
				t.Errorf("echo server received %q, want %q", msg, "ping from chromium")
			}
		case <-time.After(guard):
			t.Fatalf("echo server received nothing from the page within %v", guard)
		}
		echoed := b.WaitFor("#echo", guard)
		if got := b.Text(echoed); got != "ping from chromium" {
			t.Errorf("Text(#echo) = %q, want %q", got, "ping from chromium")
		}
		var log []string
		for _, e := range b.FindAll("#log li.entry") {
			log = append(log, b.Text(e))
		}
		if len(log) != 1 || log[0] != "open" {
			t.Errorf("page's WebSocket log = %q, want [open]", log)
		}
		if none := b.FindAll(".no-such-class"); len(none) != 0 {
			t.Errorf("FindAll(.no-such-class) = %q, want none", none)
		}
	})

	t.Run("screenshot", func(t *testing.T) {
		shot := b.in(t).Screenshot()
		if !bytes.HasPrefix(shot, []byte("\x89PNG\r\n\x1a\n")) {
			t.Fatalf("screenshot: %d bytes starting %.16q, want PNG", len(shot), shot)
		}
		cfg, err := png.DecodeConfig(bytes.NewReader(shot))
		if err != nil {
			t.Fatalf("screenshot: %v", err)
		}
		if cfg.Width == 0 || cfg.Height == 0 {
			t.Errorf("screenshot is %dx%d", cfg.Width, cfg.Height)
		}
		t.Logf("screenshot: %d bytes, %dx%d", len(shot), cfg.Width, cfg.Height)
	})
}
