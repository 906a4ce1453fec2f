package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

// parseRequestHeader parses a raw request head the way the server does.
func parseRequestHeader(t testing.TB, head string) *fasthttp.RequestHeader {
	t.Helper()
	var h fasthttp.RequestHeader
	if err := h.Read(bufio.NewReader(strings.NewReader(head))); err != nil {
		t.Fatalf("parse request head %q: %v", head, err)
	}
	return &h
}

// parseResponseHeader parses a raw response head the way the HostClient does.
func parseResponseHeader(t testing.TB, head string) *fasthttp.ResponseHeader {
	t.Helper()
	var h fasthttp.ResponseHeader
	if err := h.Read(bufio.NewReader(strings.NewReader(head))); err != nil {
		t.Fatalf("parse response head %q: %v", head, err)
	}
	return &h
}

// headerLines returns the lower-cased "name: value" lines of a serialised
// head, without its first line.
func headerLines(head []byte) []string {
	var out []string
	for i, line := range strings.Split(strings.TrimRight(string(head), "\r\n"), "\r\n") {
		if i > 0 && line != "" {
			name, value, _ := strings.Cut(line, ":")
			out = append(out, strings.ToLower(name)+": "+strings.TrimSpace(value))
		}
	}
	slices.Sort(out)
	return out
}

func TestRemoveHopByHop(t *testing.T) {
	for _, tc := range []struct {
		name     string
		response bool
		head     string
		want     []string // remaining lines, lower-cased names, sorted
	}{
		{
			name: "request, lower-case names and nominated fields",
			head: "GET / HTTP/1.1\r\nhost: a\r\nconnection: keep-alive, x-secret\r\nx-secret: 1\r\nkeep-alive: timeout=5\r\n" +
				"te: trailers\r\nproxy-authorization: Basic eA==\r\nproxy-connection: keep-alive\r\nupgrade: h2c\r\n" +
				"http2-settings: AAMAAABkAAQAAP__\r\nx-kept: yes\r\n\r\n",
			want: []string{"host: a", "x-kept: yes"},
		},
		{
			name: "request, nominated in odd spacing and case",
			head: "GET / HTTP/1.1\r\nHost: a\r\nConnection: ,X-A ,\t x-B,,\r\nx-a: 1\r\nX-b: 2\r\nX-C: 3\r\n\r\n",
			want: []string{"host: a", "x-c: 3"},
		},
		{
			name: "request, several Connection lines",
			head: "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nX-A: 1\r\nConnection: x-a\r\nConnection: X-B\r\nX-B: 2\r\nX-C: 3\r\n\r\n",
			want: []string{"host: a", "x-c: 3"},
		},
		{
			name: "request, lines hidden by a final close",
			head: "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-a\r\nConnection: close\r\nX-A: 1\r\nX-C: 3\r\n\r\n",
			want: []string{"host: a", "x-c: 3"},
		},
		{
			name: "request, the Connection field names itself",
			head: "GET / HTTP/1.1\r\nHost: a\r\nConnection: connection, x-a\r\nX-A: 1\r\nX-C: 3\r\n\r\n",
			want: []string{"host: a", "x-c: 3"},
		},
		{
			name: "request, Cookie passes untouched",
			head: "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nCookie: b=2;a=1\r\n\r\n",
			want: []string{"cookie: b=2;a=1", "host: a"},
		},
		{
			name:     "response, close and a nominated field",
			response: true,
			head: "HTTP/1.1 200 OK\r\nConnection: close, X-Internal\r\nX-Internal: 1\r\nKeep-Alive: timeout=5\r\n" +
				"Proxy-Authenticate: Basic\r\nUpgrade: h2c\r\nX-Kept: yes\r\nContent-Length: 0\r\n\r\n",
			want: []string{"content-length: 0", "x-kept: yes"},
		},
		{
			name:     "response, lines hidden by a final close",
			response: true,
			head:     "HTTP/1.1 200 OK\r\nConnection: X-A\r\nConnection: close\r\nX-A: 1\r\nX-Kept: yes\r\nContent-Length: 0\r\n\r\n",
			want:     []string{"content-length: 0", "x-kept: yes"},
		},
		{
			name:     "response, several Connection lines",
			response: true,
			head:     "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nConnection: X-A\r\nX-A: 1\r\nX-Kept: yes\r\nContent-Length: 0\r\n\r\n",
			want:     []string{"content-length: 0", "x-kept: yes"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			if tc.response {
				h := parseResponseHeader(t, tc.head)
				removeHopByHop(h)
				h.SetNoDefaultContentType(true)
				got = headerLines(h.Header())
				got = slices.DeleteFunc(got, func(s string) bool { return strings.HasPrefix(s, "server: ") || strings.HasPrefix(s, "date: ") })
			} else {
				h := parseRequestHeader(t, tc.head)
				// The handler's order: remove, then reset the close flag.
				removeHopByHop(h)
				h.ResetConnectionClose()
				got = headerLines(h.Header())
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("removeHopByHop(%q) left %q, want %q", tc.head, got, tc.want)
			}
		})
	}
}

// captureBackend answers every request with 200 "ok" and sends each
// request head it reads, as lower-cased sorted lines, on the returned
// channel.
func captureBackend(t *testing.T) (string, <-chan []string) {
	heads := make(chan []string, 16)
	addr, _ := startTCPBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			head, err := readRequestHead(br)
			if err != nil {
				return
			}
			heads <- headerLines([]byte(head))
			if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil {
				return
			}
		}
	})
	return addr, heads
}

func TestHopByHopRemovedFromRequest(t *testing.T) {
	backend, heads := captureBackend(t)
	p := startProxy(t, wsRoute(testUpstream(backend)))
	for _, tc := range []struct {
		name, head string
		gone       []string // lower-cased names the backend must not see
	}{
		{
			name: "lower-case hop-by-hop fields",
			head: "connection: keep-alive, x-secret\r\nx-secret: 1\r\nkeep-alive: timeout=5\r\nte: trailers\r\n" +
				"proxy-authorization: Basic eA==\r\nproxy-connection: keep-alive\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n",
			gone: []string{"connection", "x-secret", "keep-alive", "te", "proxy-authorization", "proxy-connection", "upgrade", "http2-settings"},
		},
		{
			name: "several Connection lines",
			head: "Connection: keep-alive\r\nConnection: x-a\r\nx-a: 1\r\nconnection: X-B\r\nx-b: 2\r\n",
			gone: []string{"connection", "x-a", "x-b"},
		},
		{
			name: "lines hidden by a final close",
			head: "Connection: x-a\r\nConnection: close\r\nx-a: 1\r\n",
			gone: []string{"connection", "x-a"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := rawStatus(t, p.addr, "GET /hop HTTP/1.1\r\nHost: app.example\r\nX-Kept: yes\r\n"+tc.head+"\r\n")
			if resp.StatusCode != 200 || body != "ok" {
				t.Fatalf("status %d body %q, want 200 ok", resp.StatusCode, body)
			}
			got := <-heads
			for _, line := range got {
				name, _, _ := strings.Cut(line, ":")
				if slices.Contains(tc.gone, name) {
					t.Errorf("backend saw %q; hop-by-hop fields: %q", line, tc.gone)
				}
			}
			if !slices.Contains(got, "x-kept: yes") || !slices.Contains(got, "host: app.example") {
				t.Errorf("backend head %q lacks the end-to-end fields X-Kept and Host", got)
			}
		})
	}
}

func TestConnectionCannotRemoveForwardedHeaders(t *testing.T) {
	backend, heads := captureBackend(t)
	p := startProxy(t, wsRoute(testUpstream(backend)))
	resp, _ := rawStatus(t, p.addr, "GET / HTTP/1.1\r\nHost: app.example\r\n"+
		"Connection: X-Forwarded-For, x-forwarded-proto, X-FORWARDED-HOST\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d, want 200", resp.StatusCode)
	}
	got := <-heads
	for _, want := range []string{"x-forwarded-for: 127.0.0.1", "x-forwarded-proto: http", "x-forwarded-host: app.example"} {
		if !slices.Contains(got, want) {
			t.Errorf("backend head %q lacks %q", got, want)
		}
	}
}

func TestHopByHopRemovedFromResponse(t *testing.T) {
	for _, tc := range []struct{ name, head string }{
		{"close and nominated", "HTTP/1.1 200 OK\r\nConnection: close, X-Internal\r\nX-Internal: 1\r\nKeep-Alive: timeout=5\r\n" +
			"Proxy-Authenticate: Basic\r\nProxy-Connection: close\r\nUpgrade: h2c\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok"},
		{"lines hidden by a final close", "HTTP/1.1 200 OK\r\nConnection: X-Internal\r\nConnection: close\r\nX-Internal: 1\r\nKeep-Alive: timeout=5\r\n" +
			"X-Kept: yes\r\nContent-Length: 2\r\n\r\nok"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, _ := startTCPBackend(t, func(c net.Conn) {
				if _, err := readRequestHead(bufio.NewReader(c)); err == nil {
					io.WriteString(c, tc.head) // then close, as announced
				}
			})
			p := startProxy(t, wsRoute(testUpstream(addr)))
			resps, bodies, c := rawExchange(t, p.addr, "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n", 1)
			resp := resps[0]
			if resp.StatusCode != 200 || bodies[0] != "ok" || resp.Header.Get("X-Kept") != "yes" {
				t.Fatalf("status %d body %q X-Kept %q, want 200 ok yes", resp.StatusCode, bodies[0], resp.Header.Get("X-Kept"))
			}
			for _, name := range []string{"Connection", "X-Internal", "Keep-Alive", "Proxy-Authenticate", "Proxy-Connection", "Upgrade"} {
				if v, ok := resp.Header[name]; ok {
					t.Errorf("client saw %s: %q", name, v)
				}
			}
			if resp.Close {
				t.Error("the backend's Connection: close reached the client")
			}
			// The client connection stays open: a second request works.
			if _, err := io.WriteString(c, "GET /2 HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			resp2, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("second request on the client connection: %v", err)
			}
			b, _ := io.ReadAll(resp2.Body)
			if resp2.StatusCode != 200 || string(b) != "ok" {
				t.Errorf("second request: status %d body %q, want 200 ok", resp2.StatusCode, b)
			}
		})
	}
}

// forwardedView is what a backend saw of the forwarding headers.
type forwardedView struct {
	host                 string
	xff, proto, xfh, fwd []string
	realIP               []string
}

func TestForwardedHeaders(t *testing.T) {
	seen := make(chan forwardedView, 1)
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- forwardedView{
			host:   r.Host,
			xff:    r.Header.Values("X-Forwarded-For"),
			proto:  r.Header.Values("X-Forwarded-Proto"),
			xfh:    r.Header.Values("X-Forwarded-Host"),
			fwd:    r.Header.Values("Forwarded"),
			realIP: r.Header.Values("X-Real-Ip"),
		}
	}))
	untrusted := startProxy(t, wsRoute(testUpstream(backend)))
	trusted := startProxyWith(t, proxySetup{Options: Options{
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
	}}, wsRoute(testUpstream(backend)))
	c := httpClient(t)

	for _, tc := range []struct {
		name  string
		p     *testProxy
		hdr   http.Header
		check func(t *testing.T, v forwardedView)
	}{
		{
			name: "untrusted peer: replaced",
			p:    untrusted,
			hdr: http.Header{
				"X-Forwarded-For":   {"6.6.6.6", "7.7.7.7"},
				"X-Forwarded-Proto": {"https"},
				"X-Forwarded-Host":  {"evil.example"},
				"Forwarded":         {"for=6.6.6.6"},
				"X-Real-Ip":         {"6.6.6.6"},
			},
			check: func(t *testing.T, v forwardedView) {
				want(t, "X-Forwarded-For", v.xff, "127.0.0.1")
				want(t, "X-Forwarded-Proto", v.proto, "http")
				want(t, "X-Forwarded-Host", v.xfh, "app.example:8080")
				want(t, "Forwarded", v.fwd)
				want(t, "X-Real-IP", v.realIP)
			},
		},
		{
			name: "trusted peer: appended",
			p:    trusted,
			hdr:  http.Header{"X-Forwarded-For": {"1.2.3.4"}},
			check: func(t *testing.T, v forwardedView) {
				want(t, "X-Forwarded-For", v.xff, "1.2.3.4, 127.0.0.1")
				want(t, "X-Forwarded-Proto", v.proto, "http")
				want(t, "X-Forwarded-Host", v.xfh, "app.example:8080")
			},
		},
		{
			name: "trusted peer: several lines joined, proto and host kept",
			p:    trusted,
			hdr: http.Header{
				"X-Forwarded-For":   {"1.2.3.4", "5.6.7.8,9.9.9.9 ,"},
				"X-Forwarded-Proto": {"https"},
				"X-Forwarded-Host":  {"public.example"},
				"Forwarded":         {"for=1.2.3.4"},
			},
			check: func(t *testing.T, v forwardedView) {
				want(t, "X-Forwarded-For", v.xff, "1.2.3.4, 5.6.7.8, 9.9.9.9, 127.0.0.1")
				want(t, "X-Forwarded-Proto", v.proto, "https")
				want(t, "X-Forwarded-Host", v.xfh, "public.example")
				want(t, "Forwarded", v.fwd, "for=1.2.3.4")
			},
		},
		{
			name: "trusted peer without headers",
			p:    trusted,
			check: func(t *testing.T, v forwardedView) {
				want(t, "X-Forwarded-For", v.xff, "127.0.0.1")
				want(t, "X-Forwarded-Proto", v.proto, "http")
				want(t, "X-Forwarded-Host", v.xfh, "app.example:8080")
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := newRequest(t, "GET", "http://"+tc.p.addr+"/", nil)
			req.Host = "app.example:8080"
			for k, vs := range tc.hdr {
				req.Header[k] = vs
			}
			resp, _ := do(t, c, req)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			v := <-seen
			if v.host != "app.example:8080" {
				t.Errorf("backend saw Host %q, want the client's %q", v.host, "app.example:8080")
			}
			tc.check(t, v)
		})
	}
}

// want checks the lines a backend saw of one field.
func want(t *testing.T, name string, got []string, lines ...string) {
	t.Helper()
	if !slices.Equal(got, lines) {
		t.Errorf("%s = %q, want %q", name, got, lines)
	}
}

func TestAppendForwardedFor(t *testing.T) {
	loopback := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	v4, v6 := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")
	other := netip.MustParseAddr("203.0.113.9")
	for _, tc := range []struct {
		name  string
		prior []string
		peer  netip.Addr
		want  string
	}{
		{"untrusted, none", nil, other, "203.0.113.9"},
		{"untrusted, forged", []string{"1.2.3.4", "5.6.7.8"}, other, "203.0.113.9"},
		{"trusted, none", nil, v4, "127.0.0.1"},
		{"trusted, one", []string{"1.2.3.4"}, v4, "1.2.3.4, 127.0.0.1"},
		{"trusted, list", []string{"1.2.3.4, 5.6.7.8"}, v4, "1.2.3.4, 5.6.7.8, 127.0.0.1"},
		{"trusted, lines joined", []string{"1.2.3.4", "5.6.7.8"}, v4, "1.2.3.4, 5.6.7.8, 127.0.0.1"},
		{"trusted, empty elements dropped", []string{" , 1.2.3.4 ,,\t", "", " "}, v4, "1.2.3.4, 127.0.0.1"},
		{"trusted, IPv6 peer", []string{"2001:db8::1"}, v6, "2001:db8::1, ::1"},
		{"trusted, values kept as sent", []string{"unknown", "[2001:db8::1]:443"}, v4, "unknown, [2001:db8::1]:443, 127.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var prior [][]byte
			for _, p := range tc.prior {
				prior = append(prior, []byte(p))
			}
			if got := string(appendForwardedFor(nil, prior, tc.peer, loopback)); got != tc.want {
				t.Errorf("appendForwardedFor(%q, %s) = %q, want %q", tc.prior, tc.peer, got, tc.want)
			}
		})
	}
	// dst is appended to, not overwritten.
	if got := string(appendForwardedFor([]byte("x"), nil, v4, nil)); got != "x127.0.0.1" {
		t.Errorf("appendForwardedFor(dst=%q) = %q, want %q", "x", got, "x127.0.0.1")
	}
}

func FuzzForwardedFor(f *testing.F) {
	f.Add([]byte("1.2.3.4"), []byte{127, 0, 0, 1}, true)
	f.Add([]byte("1.2.3.4, 5.6.7.8\n9.9.9.9"), []byte{10, 0, 0, 1}, false)
	f.Add([]byte(" ,, \t,\n\n"), []byte{127, 0, 0, 1}, true)
	f.Add([]byte("2001:db8::1"), []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, true)
	trusted := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::/0")}
	f.Fuzz(func(t *testing.T, prior, peerBytes []byte, keep bool) {
		peer, ok := netip.AddrFromSlice(peerBytes)
		if !ok {
			return
		}
		peer = peer.Unmap()
		// Each '\n' separates two field lines. fasthttp rejects CR and
		// NUL in values, so they never reach appendForwardedFor.
		if bytes.ContainsAny(prior, "\r\x00") {
			return
		}
		var lines [][]byte
		for line := range bytes.SplitSeq(prior, []byte("\n")) {
			lines = append(lines, line)
		}
		tr := trusted
		if !keep {
			tr = nil
		}
		got := string(appendForwardedFor(nil, lines, peer, tr))
		if !strings.HasSuffix(got, peer.String()) {
			t.Fatalf("appendForwardedFor(%q, %s) = %q, does not end with the peer", prior, peer, got)
		}
		if !isTrusted(peer, tr) {
			if got != peer.String() {
				t.Fatalf("untrusted appendForwardedFor(%q, %s) = %q, want only the peer", prior, peer, got)
			}
			return
		}
		// Trusted: the prior elements, trimmed and non-empty, in order,
		// then the peer.
		var want []string
		for _, line := range lines {
			for elem := range strings.SplitSeq(string(line), ",") {
				if elem = strings.Trim(elem, " \t"); elem != "" {
					want = append(want, elem)
				}
			}
		}
		want = append(want, peer.String())
		if w := strings.Join(want, ", "); got != w {
			t.Fatalf("appendForwardedFor(%q, %s) = %q, want %q", prior, peer, got, w)
		}
	})
}

// hasTokenReference is hasToken written the obvious way: split on commas,
// trim spaces and tabs, compare ASCII letters case-insensitively.
func hasTokenReference(v, token string) bool {
	lower := func(s string) string {
		b := []byte(s)
		for i, c := range b {
			if 'A' <= c && c <= 'Z' {
				b[i] = c + 'a' - 'A'
			}
		}
		return string(b)
	}
	for _, tok := range strings.Split(v, ",") {
		if lower(strings.Trim(tok, " \t")) == lower(token) {
			return true
		}
	}
	return false
}

func TestHasToken(t *testing.T) {
	for _, tc := range []struct {
		v, token string
		want     bool
	}{
		{"websocket", "websocket", true},
		{"WebSocket", "websocket", true},
		{" \tWEBSOCKET\t ", "websocket", true},
		{"h2c, websocket", "websocket", true},
		{"keep-alive,Upgrade", "upgrade", true},
		{"websocketx", "websocket", false},
		{"web socket", "websocket", false},
		{"h2c", "websocket", false},
		{"", "websocket", false},
		{"webſocket", "websocket", false},       // U+017F folds to 's' in Unicode, not in ASCII
		{"websoc\u212aet", "websocket", false},  // Kelvin sign
		{"websocket\v", "websocket", false},     // only SP and HTAB are white space
		{"\u00a0websocket", "websocket", false}, // no-break space
	} {
		if got := hasToken([]byte(tc.v), tc.token); got != tc.want {
			t.Errorf("hasToken(%q, %q) = %v, want %v", tc.v, tc.token, got, tc.want)
		}
		if ref := hasTokenReference(tc.v, tc.token); ref != tc.want {
			t.Errorf("hasTokenReference(%q, %q) = %v, want %v", tc.v, tc.token, ref, tc.want)
		}
	}
}

func FuzzUpgradeTokens(f *testing.F) {
	for _, s := range []string{"websocket", "Upgrade, HTTP2-Settings", "h2c, WebSocket", " , ,", "webſocket", "keep-alive,\tupgrade"} {
		f.Add(s, "websocket")
		f.Add(s, "upgrade")
	}
	f.Fuzz(func(t *testing.T, v, token string) {
		// The callers' preconditions. token is a constant ("websocket",
		// "upgrade"): a non-empty, lower-case token (RFC 9110 §5.6.2). v is
		// a field value as fasthttp (request) and net/http (backend
		// response) hand it over: both reject CR, LF and NUL in values, so
		// hasToken never sees them (trimOWS also drops a final CR, for
		// checkFraming's raw lines, which the model need not know).
		token = strings.ToLower(token)
		if !isToken(token) || strings.ContainsAny(v, "\r\n\x00") {
			return
		}
		got := hasToken([]byte(v), token)
		if ref := hasTokenReference(v, token); got != ref {
			t.Fatalf("hasToken(%q, %q) = %v, reference says %v", v, token, got, ref)
		}
	})
}

// isToken reports whether s is a token: one or more tchar (RFC 9110
// §5.6.2).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

func TestHeaderHelpersDoNotAllocate(t *testing.T) {
	if testing.CoverMode() != "" {
		t.Skip("coverage counters change allocation counts")
	}
	req := parseRequestHeader(t, "GET /a?b=c HTTP/1.1\r\nHost: app.example\r\nUser-Agent: t\r\n"+
		"Connection: keep-alive, X-Secret\r\nConnection: x-other\r\nX-Secret: 1\r\nX-Other: 2\r\nKeep-Alive: timeout=5\r\n"+
		"TE: trailers\r\nUpgrade: h2c\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8\r\nCookie: a=1\r\nX-Kept: yes\r\n\r\n")
	closing := parseRequestHeader(t, "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-a\r\nConnection: close\r\nX-A: 1\r\n\r\n")
	resp := parseResponseHeader(t, "HTTP/1.1 200 OK\r\nConnection: X-A\r\nConnection: close\r\nX-A: 1\r\n"+
		"Keep-Alive: timeout=5\r\nSet-Cookie: a=1\r\nContent-Length: 0\r\n\r\n")
	trusted := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	peer := netip.MustParseAddr("127.0.0.1")

	var work fasthttp.RequestHeader
	var workResp fasthttp.ResponseHeader
	for _, tc := range []struct {
		name string
		f    func()
	}{
		{"removeHopByHop request", func() { req.CopyTo(&work); removeHopByHop(&work) }},
		{"removeHopByHop request hidden by close", func() { closing.CopyTo(&work); removeHopByHop(&work) }},
		{"removeHopByHop response hidden by close", func() { resp.CopyTo(&workResp); removeHopByHop(&workResp) }},
		{"setForwarded trusted", func() { req.CopyTo(&work); setForwarded(&work, req, peer, false, trusted) }},
		{"setForwarded untrusted", func() { req.CopyTo(&work); setForwarded(&work, req, peer, true, nil) }},
	} {
		tc.f() // warm up the header buffers
		if n := testing.AllocsPerRun(100, tc.f); n != 0 {
			t.Errorf("%s: %v allocations per call, want 0", tc.name, n)
		}
	}
	// The work header really was cleaned.
	req.CopyTo(&work)
	removeHopByHop(&work)
	setForwarded(&work, req, peer, false, trusted)
	got := headerLines(work.Header())
	for _, line := range got {
		if name, _, _ := strings.Cut(line, ":"); slices.Contains([]string{"connection", "x-secret", "x-other", "keep-alive", "te", "upgrade"}, name) {
			t.Errorf("after removeHopByHop: %q", line)
		}
	}
	if !slices.Contains(got, "x-forwarded-for: 1.2.3.4, 5.6.7.8, 127.0.0.1") {
		t.Errorf("after setForwarded: %q, want one joined X-Forwarded-For", got)
	}
}
