package integration

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// settingsConfig is the config of TestReloadSettings: a route to the
// backend at backend, then extra (top-level keys) verbatim.
func settingsConfig(backend, extra string) string {
	return fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  app: {targets: ["http://%s"]}
routes:
  - name: app
    match: {path_prefix: /app}
    upstream: app
%s`, backend, extra)
}

// settingsBackend serves, until the test ends, an HTTP backend that reads
// the request body and answers with the X-Forwarded-For lines it received
// (joined by " | ", so that a repeated field shows) in the body, and the
// body's length in X-Body-Bytes. It returns its address.
func settingsBackend(t *testing.T) string {
	t.Helper()
	return startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("X-Body-Bytes", strconv.FormatInt(n, 10))
		io.WriteString(w, strings.Join(r.Header.Values("X-Forwarded-For"), " | "))
	}))
}

// settingsRequest is one request of TestReloadSettings.
type settingsRequest struct {
	name   string
	method string
	path   string
	header [2]string // one extra field, name and value; none if the name is empty
	body   string
}

// settingsDo sends rq to base with c and returns the status, the body and
// the backend's X-Body-Bytes.
func settingsDo(t *testing.T, c *http.Client, base string, rq settingsRequest) (int, string, string) {
	t.Helper()
	var body io.Reader
	if rq.body != "" {
		body = strings.NewReader(rq.body)
	}
	req, err := http.NewRequest(rq.method, base+rq.path, body)
	if err != nil {
		t.Fatal(err)
	}
	if rq.header[0] != "" {
		req.Header.Set(rq.header[0], rq.header[1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s: %s %s: %v", rq.name, rq.method, rq.path, err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s: %s %s: read body: %v", rq.name, rq.method, rq.path, err)
	}
	return resp.StatusCode, string(got), resp.Header.Get("X-Body-Bytes")
}

// settingsRaw writes rq on the keep-alive connection rc and returns the
// status, the body and the backend's X-Body-Bytes.
func settingsRaw(rc *rawConn, rq settingsRequest) (int, string, string) {
	rc.t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: settings.test\r\n", rq.method, rq.path)
	if rq.header[0] != "" {
		fmt.Fprintf(&b, "%s: %s\r\n", rq.header[0], rq.header[1])
	}
	if rq.body != "" {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(rq.body))
	}
	b.WriteString("\r\n")
	b.WriteString(rq.body)
	rc.write(b.String())
	resp, body := rc.readResponse(rq.method)
	return resp.StatusCode, body, resp.Header.Get("X-Body-Bytes")
}

// TestReloadSettings: a reload swaps limits and trusted_proxies.
// limits.header_bytes is a front-end server setting: connections accepted
// after the reload get the new limit (a new server generation on the same
// socket), and a keep-alive connection accepted before keeps its server
// and its limit. limits.request_body and trusted_proxies apply to every
// request from the reload on, on old connections too.
func TestReloadSettings(t *testing.T) {
	needBinary(t)
	backend := settingsBackend(t)
	lg := startLiveGateway(t, settingsConfig(backend, ""))
	base := "http://" + lg.g.Addr
	fresh := httpClient() // a new connection for every request
	fresh.Transport.(*http.Transport).DisableKeepAlives = true

	// 2 KiB of header or body: under the defaults (16 KiB, 100 MiB),
	// over the 1 KiB of the reload.
	var (
		plain     = settingsRequest{name: "plain GET", method: http.MethodGet, path: "/app/plain"}
		bigHeader = settingsRequest{name: "2 KiB header", method: http.MethodGet, path: "/app/header", header: [2]string{"X-Pad", strings.Repeat("h", 2<<10)}}
		bigBody   = settingsRequest{name: "2 KiB body", method: http.MethodPost, path: "/app/body", body: strings.Repeat("b", 2<<10)}
		forwarded = settingsRequest{name: "X-Forwarded-For", method: http.MethodGet, path: "/app/xff", header: [2]string{"X-Forwarded-For", "203.0.113.9"}}
	)
	type want struct {
		status    int
		xff       string // the backend's body; checked when status is 200
		bodyBytes string // the backend's X-Body-Bytes; checked when status is 200
	}
	check := func(t *testing.T, conn string, rq settingsRequest, status int, body, bodyBytes string, w want) {
		t.Helper()
		if status != w.status {
			t.Errorf("%s, %s: status %d (body %.60q), want %d", conn, rq.name, status, body, w.status)
			return
		}
		if w.status != http.StatusOK {
			return
		}
		if body != w.xff || bodyBytes != w.bodyBytes {
			t.Errorf("%s, %s: backend saw X-Forwarded-For %q and a body of %s bytes, want %q and %s", conn, rq.name, body, bodyBytes, w.xff, w.bodyBytes)
		}
	}
	const peer = "127.0.0.1" // wsgate's view of every client here

	// Before the reload: the defaults, no trusted proxy (the client's
	// X-Forwarded-For is replaced).
	for _, c := range []struct {
		rq settingsRequest
		w  want
	}{
		{plain, want{http.StatusOK, peer, "0"}},
		{bigHeader, want{http.StatusOK, peer, "0"}},
		{bigBody, want{http.StatusOK, peer, "2048"}},
		{forwarded, want{http.StatusOK, peer, "0"}},
	} {
		status, body, n := settingsDo(t, fresh, base, c.rq)
		check(t, "before the reload, new connection", c.rq, status, body, n, c.w)
	}
	// A keep-alive connection accepted before the reload.
	kept := dialRaw(t, lg.g.Addr)
	status, body, n := settingsRaw(kept, plain)
	check(t, "before the reload, kept connection", plain, status, body, n, want{http.StatusOK, peer, "0"})
	if t.Failed() {
		t.FailNow()
	}

	// The reload. A file rename and SIGHUP may reload twice (the watcher
	// sees the rename too); only the reload that applied the new limits
	// names route app as changed (its body limit is limits.request_body).
	lg.reload(t, settingsConfig(backend, `limits:
  header_bytes: 1KiB
  request_body: 1KiB
trusted_proxies: [127.0.0.1]
`), "with route app changed", func(e map[string]any) bool {
		return liveLogListHas(e, "routes_changed", "app")
	})

	// New connections: the new limits, and 127.0.0.1 is a trusted proxy
	// whose X-Forwarded-For is kept and extended.
	for _, c := range []struct {
		rq settingsRequest
		w  want
	}{
		{plain, want{http.StatusOK, peer, "0"}},
		{bigHeader, want{status: http.StatusRequestHeaderFieldsTooLarge}},
		{bigBody, want{status: http.StatusRequestEntityTooLarge}},
		{forwarded, want{http.StatusOK, "203.0.113.9, " + peer, "0"}},
	} {
		status, body, n := settingsDo(t, fresh, base, c.rq)
		check(t, "after the reload, new connection", c.rq, status, body, n, c.w)
	}

	// The connection accepted before the reload: still served, by the
	// server generation it was accepted by (16 KiB of header), with the
	// new trusted proxies and body limit. The 413 closes it: last.
	for _, c := range []struct {
		rq settingsRequest
		w  want
	}{
		{plain, want{http.StatusOK, peer, "0"}},
		{bigHeader, want{http.StatusOK, peer, "0"}},
		{forwarded, want{http.StatusOK, "203.0.113.9, " + peer, "0"}},
		{bigBody, want{status: http.StatusRequestEntityTooLarge}},
	} {
		status, body, n := settingsRaw(kept, c.rq)
		check(t, "after the reload, kept connection", c.rq, status, body, n, c.w)
	}
}
