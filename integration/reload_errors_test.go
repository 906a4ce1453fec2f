package integration

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// liveGateway is a wsgate process whose config file the test rewrites
// and reloads: the fixture of the reload and watch tests.
//
// Its methods take the (sub)test's t: a failure stops the caller's
// goroutine, never the test that started the process.
type liveGateway struct {
	path string // the config file wsgate runs with
	g    *gw
}

// startLiveGateway writes yamlText into a temp dir and starts wsgate on it.
func startLiveGateway(t *testing.T, yamlText string) *liveGateway {
	t.Helper()
	path := filepath.Join(t.TempDir(), "wsgate.yaml")
	writeFile(t, path, []byte(yamlText))
	return &liveGateway{path: path, g: startGatewayFile(t, path, nil)}
}

// mark returns the number of log entries so far; the waits below look at
// the entries from a mark on.
func (lg *liveGateway) mark() int {
	entries, _ := lg.g.logs.snapshot()
	return len(entries)
}

// hup sends SIGHUP.
func (lg *liveGateway) hup(t *testing.T) {
	t.Helper()
	if err := lg.g.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatalf("SIGHUP: %v", err)
	}
}

// waitEntry waits up to ioTimeout for an entry at index from or later
// that match accepts, and returns it with its index.
func (lg *liveGateway) waitEntry(t *testing.T, from int, what string, match func(map[string]any) bool) (map[string]any, int) {
	t.Helper()
	deadline := time.After(ioTimeout)
	for {
		entries, changed := lg.g.logs.snapshot()
		for i := from; i < len(entries); i++ {
			if match(entries[i]) {
				return entries[i], i
			}
		}
		select {
		case <-changed:
		case <-lg.g.exited:
			t.Fatalf("wsgate exited (code %d) before logging %s", lg.g.exitCode, what)
		case <-deadline:
			t.Fatalf("no log line %s within %v", what, ioTimeout)
		}
	}
}

// waitReloaded waits for a "config reloaded" line after from that match
// accepts (nil: any). A file rewrite followed by SIGHUP may reload twice
// (the watcher sees the rename too), and the second time nothing changes:
// match tells the reload a test caused from such a repeat.
func (lg *liveGateway) waitReloaded(t *testing.T, from int, what string, match func(map[string]any) bool) map[string]any {
	t.Helper()
	e, _ := lg.waitEntry(t, from, `"config reloaded" `+what, func(e map[string]any) bool {
		return e["msg"] == "config reloaded" && (match == nil || match(e))
	})
	return e
}

// reload replaces the config file by rename, sends SIGHUP, and waits for
// the "config reloaded" line that match accepts.
func (lg *liveGateway) reload(t *testing.T, yamlText, what string, match func(map[string]any) bool) map[string]any {
	t.Helper()
	from := lg.mark()
	replaceByRename(t, lg.path, []byte(yamlText))
	lg.hup(t)
	return lg.waitReloaded(t, from, what, match)
}

// liveFailure is one "config reload failed" line with the problems
// logged for it.
type liveFailure struct {
	entry map[string]any
	// configErrors are the error attrs of the "config error" lines
	// logged before it (from the mark on, same source).
	configErrors []string
	// problems are configErrors plus the failure line's own error attr,
	// if any.
	problems []string
}

// waitFailed waits for a "config reload failed" line after from for
// which some problem contains want.
func (lg *liveGateway) waitFailed(t *testing.T, from int, want string) liveFailure {
	t.Helper()
	deadline := time.After(ioTimeout)
	for {
		entries, changed := lg.g.logs.snapshot()
		for i := from; i < len(entries); i++ {
			e := entries[i]
			if e["msg"] != "config reload failed; keeping the running config" {
				continue
			}
			f := liveFailure{entry: e}
			for _, ce := range entries[from:i] {
				if ce["msg"] == "config error" && ce["source"] == e["source"] {
					s, _ := ce["error"].(string)
					f.configErrors = append(f.configErrors, s)
				}
			}
			f.problems = slices.Clone(f.configErrors)
			if s, ok := e["error"].(string); ok {
				f.problems = append(f.problems, s)
			}
			if !slices.ContainsFunc(f.problems, func(p string) bool { return strings.Contains(p, want) }) {
				continue
			}
			if n, _ := e["errors"].(float64); n < 1 {
				t.Errorf("config reload failed: errors = %v, want >= 1", e["errors"])
			}
			return f
		}
		select {
		case <-changed:
		case <-lg.g.exited:
			t.Fatalf("wsgate exited (code %d) before a reload failed with %q", lg.g.exitCode, want)
		case <-deadline:
			t.Fatalf("no \"config reload failed\" with a problem containing %q within %v", want, ioTimeout)
		}
	}
}

// reject replaces the config file by rename, sends SIGHUP, and waits for
// the reload to fail with a problem containing want.
func (lg *liveGateway) reject(t *testing.T, yamlText, want string) liveFailure {
	t.Helper()
	from := lg.mark()
	replaceByRename(t, lg.path, []byte(yamlText))
	lg.hup(t)
	return lg.waitFailed(t, from, want)
}

// liveLogListHas reports whether the list attr key of e (an array of
// strings, or null) has an element containing sub.
func liveLogListHas(e map[string]any, key, sub string) bool {
	list, _ := e[key].([]any)
	for _, v := range list {
		if s, ok := v.(string); ok && strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// liveYAMLLine returns the 1-based number of the first line of text that
// contains sub, for the FILE:LINE a config error must name.
func liveYAMLLine(t *testing.T, text, sub string) int {
	t.Helper()
	for i, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) {
			return i + 1
		}
	}
	t.Fatalf("no line contains %q", sub)
	return 0
}

// liveGet GETs url with a new connection and returns the status and body.
func liveGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := httpClient()
	c.Transport.(*http.Transport).DisableKeepAlives = true
	resp, body := get(t, c, url, nil)
	return resp.StatusCode, body
}

// liveServedCN makes a TLS handshake with addr for sni, verified against
// the test CA of certs, and returns the common name of the certificate
// served.
func liveServedCN(t *testing.T, addr, sni string, certs *liveTLS) string {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: ioTimeout}, "tcp", addr, &tls.Config{ServerName: sni, RootCAs: certs.ca.pool})
	if err != nil {
		t.Fatalf("TLS handshake with %s (SNI %s): %v", addr, sni, err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].Subject.CommonName
}

// liveTLS is a test CA and a certificate it issued for a.test (common
// name a.test), written to a temp dir.
type liveTLS struct {
	ca        *testCA
	cert, key string // the files
	certPEM   []byte // the certificate file's first content
}

func newLiveTLS(t *testing.T) *liveTLS {
	t.Helper()
	dir := t.TempDir()
	certs := &liveTLS{ca: newTestCA(t), cert: filepath.Join(dir, "a.test.pem"), key: filepath.Join(dir, "a.test.key")}
	var keyPEM []byte
	certs.certPEM, keyPEM = certs.ca.issue(t, "a.test", "a.test", 100)
	writeFile(t, certs.cert, certs.certPEM)
	writeFile(t, certs.key, keyPEM)
	return certs
}

// TestReloadFailureKeepsServing: a reload that fails, whatever the cause,
// changes nothing: the routes answer as before, over plain HTTP, TLS and
// WebSocket, and a session opened before goes on; the next valid reload
// applies.
func TestReloadFailureKeepsServing(t *testing.T) {
	needBinary(t)
	backend := newWSBackend()
	backendAddr := backend.start(t)
	certs := newLiveTLS(t)
	config := func(version, extra string) string {
		return fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
  - addr: 127.0.0.1:0
    tls:
      certificates:
        - {cert: %s, key: %s}
%supstreams:
  app: {targets: ["http://%s"]}
routes:
  - name: version
    match: {path: /version}
    respond: {body: %s}
  - name: app
    match: {path_prefix: /app}
    upstream: app
`, yamlQuote(certs.cert), yamlQuote(certs.key), extra, backendAddr, version)
	}
	lg := startLiveGateway(t, config("v0", ""))
	plainAddr, tlsAddr := lg.g.Listeners[0].Addr, lg.g.Listeners[1].Addr
	if !lg.g.Listeners[1].TLS {
		t.Fatalf("listener %+v is not logged as TLS", lg.g.Listeners[1])
	}
	held := dialWS(t, nil, "ws://"+plainAddr+"/app/ws/held", nil)
	echoOnce(t, held, websocket.TextMessage, []byte("before any reload"))
	https := &http.Client{
		Timeout: ioTimeout,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: certs.ca.pool, ServerName: "a.test"},
			DisableKeepAlives: true,
		},
	}

	// serving checks that every route answers as in version: over HTTP
	// and HTTPS, a new WebSocket and the one opened at the start.
	serving := func(t *testing.T, version string) {
		t.Helper()
		if status, body := liveGet(t, "http://"+plainAddr+"/version"); status != http.StatusOK || body != version {
			t.Errorf("GET /version: %d %q, want 200 %q", status, body, version)
		}
		if status, body := liveGet(t, "http://"+plainAddr+"/app/http"); status != http.StatusOK || decodeEcho(t, body).Path != "/app/http" {
			t.Errorf("GET /app/http: %d %q, want 200 from the backend", status, body)
		}
		resp, body := get(t, https, "https://"+tlsAddr+"/version", nil)
		if resp.StatusCode != http.StatusOK || body != version {
			t.Errorf("HTTPS GET /version: %d %q, want 200 %q", resp.StatusCode, body, version)
		}
		if cn := resp.TLS.PeerCertificates[0].Subject.CommonName; cn != "a.test" {
			t.Errorf("HTTPS certificate CN %q, want a.test", cn)
		}
		ws := dialWS(t, nil, "ws://"+plainAddr+"/app/ws/new", nil)
		echoOnce(t, ws, websocket.TextMessage, []byte("new session"))
		ws.Close()
		echoOnce(t, held, websocket.TextMessage, []byte("held session"))
	}
	// fileLine checks that f has a config error naming the config file at
	// line, with text.
	fileLine := func(t *testing.T, f liveFailure, line int, text string) {
		t.Helper()
		prefix := fmt.Sprintf("%s:%d: ", lg.path, line)
		if !slices.ContainsFunc(f.configErrors, func(s string) bool {
			return strings.HasPrefix(s, prefix) && strings.Contains(s, text)
		}) {
			t.Errorf("config error lines %q: none is %q...%q", f.configErrors, prefix, text)
		}
	}

	version := 0
	current := func() string { return fmt.Sprintf("v%d", version) }
	// reloadValid makes a valid reload that changes the version route, and
	// checks it applied.
	reloadValid := func(t *testing.T) {
		t.Helper()
		version++
		e := lg.reload(t, config(current(), ""), "changing route version", func(e map[string]any) bool {
			return liveLogListHas(e, "routes_changed", "version")
		})
		if e["source"] != "SIGHUP" && e["source"] != "file change" {
			t.Errorf("config reloaded: source %v", e["source"])
		}
		serving(t, current())
	}
	serving(t, current())

	t.Run("YAML syntax error", func(t *testing.T) {
		// A tab cannot indent YAML: the scanner fails on that line.
		text := strings.Replace(config("v-never", ""), "  - name: app\n", "\t- name: app\n", 1)
		const why = "a tab character indents this line; YAML indents with spaces only"
		f := lg.reject(t, text, why)
		fileLine(t, f, liveYAMLLine(t, text, "\t- name: app"), why)
		serving(t, current())
		reloadValid(t)
	})

	t.Run("unknown upstream", func(t *testing.T) {
		text := strings.Replace(config("v-never", ""), "upstream: app", "upstream: nope", 1)
		f := lg.reject(t, text, `unknown upstream "nope"`)
		fileLine(t, f, liveYAMLLine(t, text, "upstream: nope"), `routes[1].upstream: unknown upstream "nope"`)
		serving(t, current())
		reloadValid(t)
	})

	t.Run("new listener on a taken address", func(t *testing.T) {
		taken, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer taken.Close()
		addr := taken.Addr().String()
		// The rest of the file is valid and changes the version route:
		// the bind fails only when the reload applies, and nothing of it
		// may have been applied.
		from := lg.mark()
		f := lg.reject(t, config("v-never", "  - addr: "+addr+"\n"), addr)
		if !slices.ContainsFunc(f.problems, func(s string) bool { return strings.Contains(s, "address already in use") }) {
			t.Errorf("problems %q: none says the address is in use", f.problems)
		}
		entries, _ := lg.g.logs.snapshot()
		for _, e := range entries[from:] {
			if e["msg"] == "listening" || e["msg"] == "config reloaded" {
				t.Errorf("after the failed reload: %v", e)
			}
		}
		serving(t, current())
		reloadValid(t)
	})

	t.Run("certificate broken", func(t *testing.T) {
		// The running TLS listener's certificate is replaced by garbage,
		// as a botched renewal would. SIGHUP reloads (and the watcher
		// would, seeing the rename): the config no longer loads.
		from := lg.mark()
		replaceByRename(t, certs.cert, []byte("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"))
		lg.hup(t)
		f := lg.waitFailed(t, from, "listeners[1].tls.certificates[0]")
		fileLine(t, f, liveYAMLLine(t, config(current(), ""), "- {cert:"), "listeners[1].tls.certificates[0]: certificate")
		serving(t, current()) // the old certificate is still served
		replaceByRename(t, certs.cert, certs.certPEM)
		reloadValid(t)
	})
}

// TestReloadListeners: a reload opens added listeners, stops removed ones
// (their in-flight requests finish), and switches a listener from plain
// HTTP to TLS on the same socket without refusing a connection.
func TestReloadListeners(t *testing.T) {
	needBinary(t)
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	var releaseOnce sync.Once
	releaseSlow := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(releaseSlow)
	backendAddr := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/app/slow" {
			select {
			case arrived <- struct{}{}:
			default:
			}
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		io.WriteString(w, "backend "+r.URL.Path)
	}))
	certs := newLiveTLS(t)
	l2, l3 := freeAddr(t), freeAddr(t)
	config := func(listeners string) string {
		return fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
%supstreams:
  app: {targets: ["http://%s"]}
routes:
  - name: version
    match: {path: /version}
    respond: {body: ok}
  - name: app
    match: {path_prefix: /app}
    upstream: app
`, listeners, backendAddr)
	}
	plainL3 := "  - addr: " + l3 + "\n"
	tlsL3 := fmt.Sprintf("  - addr: %s\n    tls: {certificates: [{cert: %s, key: %s}]}\n", l3, yamlQuote(certs.cert), yamlQuote(certs.key))
	lg := startLiveGateway(t, config(""))

	// 1. Added listeners accept.
	from := lg.mark()
	e := lg.reload(t, config("  - addr: "+l2+"\n"+plainL3), "adding two listeners", func(e map[string]any) bool {
		return liveLogListHas(e, "listeners_added", l2)
	})
	if !liveLogListHas(e, "listeners_added", l3) || e["listeners_removed"] != nil || e["listeners_changed"] != nil {
		t.Errorf("config reloaded: listeners added %v, removed %v, changed %v; want [%s %s], null, null",
			e["listeners_added"], e["listeners_removed"], e["listeners_changed"], l2, l3)
	}
	for _, addr := range []string{l2, l3} {
		lg.waitEntry(t, from, "listening on "+addr, func(e map[string]any) bool {
			return e["msg"] == "listening" && e["addr"] == addr && e["tls"] == false
		})
		if status, body := liveGet(t, "http://"+addr+"/version"); status != http.StatusOK || body != "ok" {
			t.Errorf("GET http://%s/version: %d %q, want 200 ok", addr, status, body)
		}
	}

	// 2. A removed listener refuses new connections; a request in flight
	// on a keep-alive connection it accepted finishes.
	kept := dialRaw(t, l2)
	kept.write("GET /app/first HTTP/1.1\r\nHost: l2\r\n\r\n")
	if resp, body := kept.readResponse("GET"); resp.StatusCode != http.StatusOK || body != "backend /app/first" {
		t.Fatalf("first request on the keep-alive connection: %d %q", resp.StatusCode, body)
	}
	kept.write("GET /app/slow HTTP/1.1\r\nHost: l2\r\n\r\n")
	select {
	case <-arrived:
	case <-time.After(ioTimeout):
		t.Fatal("the slow request did not reach the backend")
	}
	from = lg.mark()
	e = lg.reload(t, config(plainL3), "removing "+l2, func(e map[string]any) bool {
		return liveLogListHas(e, "listeners_removed", l2)
	})
	if e["listeners_added"] != nil || e["listeners_changed"] != nil {
		t.Errorf("config reloaded: listeners added %v, changed %v; want null", e["listeners_added"], e["listeners_changed"])
	}
	lg.waitEntry(t, from, "listener removed "+l2, func(e map[string]any) bool {
		return e["msg"] == "listener removed" && e["addr"] == l2
	})
	liveWaitRefused(t, l2)
	releaseSlow()
	if resp, body := kept.readResponse("GET"); resp.StatusCode != http.StatusOK || body != "backend /app/slow" {
		t.Errorf("in-flight request on the removed listener: %d %q, want 200 \"backend /app/slow\"", resp.StatusCode, body)
	}
	if status, body := liveGet(t, "http://"+l3+"/version"); status != http.StatusOK || body != "ok" {
		t.Errorf("GET http://%s/version after removing %s: %d %q", l3, l2, status, body)
	}

	// 3. Plain to TLS on the same socket. A connection accepted before
	// keeps its plain server; meanwhile a dialer checks that the port
	// never refuses.
	old := dialRaw(t, l3)
	old.write("GET /version HTTP/1.1\r\nHost: l3\r\n\r\n")
	if resp, body := old.readResponse("GET"); resp.StatusCode != http.StatusOK || body != "ok" {
		t.Fatalf("plain request on %s: %d %q", l3, resp.StatusCode, body)
	}
	var (
		stopDial = make(chan struct{})
		dialWG   sync.WaitGroup
		dials    int   // read after dialWG.Wait
		dialErr  error // read after dialWG.Wait
	)
	dialWG.Go(func() {
		for {
			select {
			case <-stopDial:
				return
			default:
			}
			c, err := net.DialTimeout("tcp", l3, ioTimeout)
			if err != nil {
				dialErr = err
				return
			}
			c.Close()
			dials++
		}
	})
	e = lg.reload(t, config(tlsL3), "turning TLS on for "+l3, func(e map[string]any) bool {
		return liveLogListHas(e, "listeners_changed", l3)
	})
	close(stopDial)
	dialWG.Wait()
	if dialErr != nil {
		t.Errorf("dialing %s while it turned to TLS: %v", l3, dialErr)
	}
	t.Logf("%d connections to %s during the reload", dials, l3)
	if e["listeners_added"] != nil || e["listeners_removed"] != nil {
		t.Errorf("config reloaded: listeners added %v, removed %v; want null", e["listeners_added"], e["listeners_removed"])
	}
	if cn := liveServedCN(t, l3, "a.test", certs); cn != "a.test" {
		t.Errorf("%s serves certificate CN %q, want a.test", l3, cn)
	}
	https := &http.Client{Timeout: ioTimeout, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: certs.ca.pool, ServerName: "a.test"},
		DisableKeepAlives: true,
	}}
	if resp, body := get(t, https, "https://"+l3+"/version", nil); resp.StatusCode != http.StatusOK || body != "ok" {
		t.Errorf("HTTPS GET /version on %s: %d %q", l3, resp.StatusCode, body)
	}
	old.write("GET /version HTTP/1.1\r\nHost: l3\r\n\r\n")
	if resp, body := old.readResponse("GET"); resp.StatusCode != http.StatusOK || body != "ok" {
		t.Errorf("plain keep-alive connection accepted before the TLS switch: %d %q, want 200 ok", resp.StatusCode, body)
	}
}

// liveWaitRefused polls addr until a connect is refused, for up to ioTimeout.
func liveWaitRefused(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(ioTimeout)
	for {
		c, err := net.DialTimeout("tcp", addr, ioTimeout)
		if err != nil {
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("dial %s: %v, want connection refused", addr, err)
			}
			return
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatalf("%s still accepts %v after its listener was removed", addr, ioTimeout)
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
}

// liveCheckCounter counts requests per path and tells waiters of each one.
type liveCheckCounter struct {
	mu      sync.Mutex
	n       map[string]int // guarded by mu
	changed chan struct{}  // guarded by mu: closed and replaced on every request
}

func newLiveCheckCounter() *liveCheckCounter {
	return &liveCheckCounter{n: map[string]int{}, changed: make(chan struct{})}
}

func (c *liveCheckCounter) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		c.n[r.URL.Path]++
		close(c.changed)
		c.changed = make(chan struct{})
		c.mu.Unlock()
		next.ServeHTTP(w, r)
	})
}

func (c *liveCheckCounter) get(path string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[path]
}

// waitAbove waits up to ioTimeout until path has had more than n requests.
func (c *liveCheckCounter) waitAbove(t *testing.T, path string, n int) {
	t.Helper()
	deadline := time.After(ioTimeout)
	for {
		c.mu.Lock()
		got, changed := c.n[path], c.changed
		c.mu.Unlock()
		if got > n {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("%s: %d requests after %v, want more than %d", path, got, ioTimeout, n)
		}
	}
}

// TestReloadGoroutines: reloads start and stop health checkers and swap
// upstream sets; 50 of them leave no goroutine behind.
func TestReloadGoroutines(t *testing.T) {
	needBinary(t)
	checks := newLiveCheckCounter()
	backends := make([]string, 2)
	for i := range backends {
		b := newWSBackend()
		backends[i] = startBackend(t, checks.wrap(b))
		t.Cleanup(func() { // as wsBackend.start
			b.mu.Lock()
			for c := range b.conns {
				_ = c.Close()
			}
			b.mu.Unlock()
			b.wg.Wait()
		})
	}
	// A: two targets with HTTP checks. B: one target with WebSocket
	// checks, and a second upstream with HTTP checks. The first check
	// of a checker comes within one interval.
	configs := [2]string{
		fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  app:
    targets: ["http://%s", "http://%s"]
    health: {path: /healthz-a, interval: 100ms}
routes:
  - name: version
    match: {path: /version}
    respond: {body: A}
  - name: app
    match: {path_prefix: /}
    upstream: app
`, backends[0], backends[1]),
		fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  app:
    targets: ["http://%s"]
    health: {interval: 100ms, websocket: {path: /ws}}
  other:
    targets: ["http://%s"]
    health: {path: /healthz, interval: 100ms}
routes:
  - name: version
    match: {path: /version}
    respond: {body: B}
  - name: app
    match: {path_prefix: /}
    upstream: app
  - name: other
    match: {path_prefix: /other}
    upstream: other
`, backends[0], backends[1]),
	}
	lg := startLiveGateway(t, configs[0])

	const reloads = 50
	goroutines := make([]int, 0, reloads)
	deadline := time.Now().Add(45 * time.Second)
	for i := range reloads {
		if time.Now().After(deadline) {
			t.Fatalf("%d reloads took more than 45s", i)
		}
		next := (i + 1) % 2
		// The check each config's sets make: after the reload, wait for
		// one, so that every set's checkers run before the next reload
		// stops them.
		path := [2]string{"/healthz-a", "/ws"}[next]
		before := checks.get(path)
		e := lg.reload(t, configs[next], fmt.Sprintf("number %d", i+1), func(e map[string]any) bool {
			return liveLogListHas(e, "routes_changed", "version")
		})
		n, ok := e["goroutines"].(float64)
		if !ok {
			t.Fatalf("config reloaded without a goroutines count: %v", e)
		}
		goroutines = append(goroutines, int(n))
		checks.waitAbove(t, path, before)
	}
	t.Logf("goroutines after each reload: %v", goroutines)
	t.Logf("health checks: %d HTTP of A, %d WebSocket and %d HTTP of B", checks.get("/healthz-a"), checks.get("/ws"), checks.get("/healthz"))
	// runtime.NumGoroutine is a moment's count: it includes goroutines
	// that are about to end and belong to no reload (net/http's
	// connection goroutines of a health check just done, a new set's
	// check in flight, the signal and watch goroutines at work). The
	// lowest of six readings (three of each config) filters most of
	// those; the slack of 5 takes the rest. A leak of one goroutine per
	// reload would add about 40 between the two windows.
	const slack = 5
	early, late := slices.Min(goroutines[1:7]), slices.Min(goroutines[reloads-6:])
	if late > early+slack {
		t.Errorf("goroutines grew from %d (reloads 2-7) to %d (reloads %d-%d): a leak", early, late, reloads-5, reloads)
	}
	if status, body := liveGet(t, "http://"+lg.g.Addr+"/version"); status != http.StatusOK || body != "A" {
		t.Errorf("GET /version after %d reloads: %d %q, want 200 A", reloads, status, body)
	}
}

// TestReloadRoutesAndUpstreams: a reload changes, adds and removes
// routes and changes an upstream's targets; each is in effect as soon as
// "config reloaded" is logged.
func TestReloadRoutesAndUpstreams(t *testing.T) {
	needBinary(t)
	named := func(name string) string {
		return startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, name)
		}))
	}
	a, b := named("A"), named("B")
	v1 := fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  app: {targets: ["http://%s"]}
routes:
  - name: version
    match: {path: /version}
    respond: {body: v1}
  - name: gone
    match: {path: /gone}
    respond: {body: here}
  - name: app
    match: {path_prefix: /app}
    upstream: app
`, a)
	v2 := fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  app: {targets: ["http://%s"]}
routes:
  - name: version
    match: {path: /version}
    respond: {body: v2}
  - name: added
    match: {path: /added}
    respond: {status: 201, body: new}
  - name: app
    match: {path_prefix: /app}
    upstream: app
`, b)
	lg := startLiveGateway(t, v1)
	base := "http://" + lg.g.Addr
	c := httpClient() // keep-alive: the connection outlives the reload
	want := func(t *testing.T, path string, status int, body string) {
		t.Helper()
		resp, got := get(t, c, base+path, nil)
		if resp.StatusCode != status || (body != "" && got != body) {
			t.Errorf("GET %s: %d %q, want %d %q", path, resp.StatusCode, got, status, body)
		}
	}
	want(t, "/version", 200, "v1")
	want(t, "/gone", 200, "here")
	want(t, "/added", 404, "")
	want(t, "/app/x", 200, "A")

	e := lg.reload(t, v2, "adding route added", func(e map[string]any) bool {
		return liveLogListHas(e, "routes_added", "added")
	})
	for _, w := range []struct{ key, sub string }{
		{"routes_changed", "version"},
		{"routes_removed", "gone"},
		{"targets_added", "app http://" + b},
		{"targets_removed", "app http://" + a},
	} {
		if !liveLogListHas(e, w.key, w.sub) {
			t.Errorf("config reloaded: %s = %v, want it to name %q", w.key, e[w.key], w.sub)
		}
	}
	want(t, "/version", 200, "v2")
	want(t, "/added", 201, "new")
	want(t, "/gone", 404, "")
	for range 5 {
		want(t, "/app/x", 200, "B")
	}
}
