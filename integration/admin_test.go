package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// The admin API (docs/admin.md) of the real binary, through Go's
// net/http client, with WebSocket sessions from fasthttp/websocket and
// Python's websockets library.

// admTokenEnv is the environment variable the configs of these tests
// read the admin token from.
const admTokenEnv = "WSGATE_TEST_TOKEN"

// admNewToken returns a random token: 32 hex digits.
func admNewToken(t *testing.T) string {
	t.Helper()
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// admStart writes yamlText into a temp dir and starts wsgate on it with
// a fresh token in admTokenEnv (the config's admin block reads it). It
// returns the gateway, the config file's path and an API client that
// sends the token.
func admStart(t *testing.T, yamlText string) (*gw, string, *admAPI) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "wsgate.yaml")
	writeFile(t, path, []byte(yamlText))
	token := admNewToken(t)
	g := startGatewayFile(t, path, []string{admTokenEnv + "=" + token})
	return g, path, newAdmAPI(t, g, token)
}

// admAPI is a client of a running wsgate's admin listener. Its methods
// take the (sub)test's t.
type admAPI struct {
	base  string // http://host:port
	token string // sent as a bearer token; "" sends none
	c     *http.Client
}

func newAdmAPI(t *testing.T, g *gw, token string) *admAPI {
	t.Helper()
	if g.AdminAddr == "" {
		t.Fatal(`wsgate logged no "admin listening" line`)
	}
	return &admAPI{base: "http://" + g.AdminAddr, token: token, c: httpClient()}
}

// send sends method path with body (nil: none) and the Authorization
// header auth ("": none), and returns the status, headers and body.
func (a *admAPI) send(t *testing.T, method, path string, body []byte, auth string, hdr map[string]string) (int, http.Header, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, a.base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := a.c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp.StatusCode, resp.Header, b
}

// auth is the Authorization header with a's token.
func (a *admAPI) auth() string {
	if a.token == "" {
		return ""
	}
	return "Bearer " + a.token
}

// do sends method path with body and a's token.
func (a *admAPI) do(t *testing.T, method, path string, body []byte) (int, []byte) {
	t.Helper()
	status, _, b := a.send(t, method, path, body, a.auth(), nil)
	return status, b
}

// call sends method path with body and a's token, checks that the answer
// is JSON with status want, and decodes it into v (unless v is nil).
func (a *admAPI) call(t *testing.T, method, path string, body []byte, want int, v any) {
	t.Helper()
	status, hdr, b := a.send(t, method, path, body, a.auth(), nil)
	if status != want {
		t.Fatalf("%s %s: status %d, body %.300q; want %d", method, path, status, b, want)
	}
	if ct := hdr.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q, want application/json", method, path, ct)
	}
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("%s %s: %v in %.300q", method, path, err, b)
		}
	}
}

// callError checks that method path answers status want with a JSON
// error, and returns the error message.
func (a *admAPI) callError(t *testing.T, method, path string, body []byte, want int) string {
	t.Helper()
	var e admError
	a.call(t, method, path, body, want, &e)
	if e.Error == "" {
		t.Errorf("%s %s: status %d without an error message", method, path, want)
	}
	return e.Error
}

// admError is every error answer of the admin API.
type admError struct {
	Error string `json:"error"`
}

// admFlow is one direction's counters of a session.
type admFlow struct {
	Messages int64 `json:"messages"`
	Bytes    int64 `json:"bytes"`
}

// admSession is a session as /api/sessions shows it.
type admSession struct {
	ID          string    `json:"id"`
	Route       string    `json:"route"`
	Upstream    string    `json:"upstream"`
	Target      string    `json:"target"`
	Client      string    `json:"client"`
	Subprotocol string    `json:"subprotocol"`
	Started     time.Time `json:"started"`
	LastActive  time.Time `json:"last_active"`
	Closing     bool      `json:"closing"`
	FromClient  admFlow   `json:"from_client"`
	FromBackend admFlow   `json:"from_backend"`
	Injected    int64     `json:"injected"`
}

// admPage is the answer of GET /api/sessions.
type admPage struct {
	Sessions []admSession `json:"sessions"`
	Total    int          `json:"total"`
	Offset   int          `json:"offset"`
	Limit    int          `json:"limit"`
}

// admPoll calls try until it returns "" or ioTimeout has passed, and
// then fails the test with try's last answer: what is still missing.
func admPoll(t *testing.T, what string, try func() string) {
	t.Helper()
	deadline := time.NewTimer(ioTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		msg := try()
		if msg == "" {
			return
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("%s: not within %v: %s", what, ioTimeout, msg)
		}
	}
}

// sessions lists the sessions query selects ("" all, else "route=x&…").
func (a *admAPI) sessions(t *testing.T, query string) admPage {
	t.Helper()
	var p admPage
	a.call(t, http.MethodGet, "/api/sessions?"+query, nil, http.StatusOK, &p)
	return p
}

// waitSessions waits until query selects n sessions and returns them.
func (a *admAPI) waitSessions(t *testing.T, query string, n int) admPage {
	t.Helper()
	var p admPage
	admPoll(t, fmt.Sprintf("GET /api/sessions?%s lists %d sessions", query, n), func() string {
		p = a.sessions(t, query)
		if p.Total != n || len(p.Sessions) != n {
			return fmt.Sprintf("total %d, %d listed", p.Total, len(p.Sessions))
		}
		return ""
	})
	return p
}

// sessionOf returns the id of the one session of the client at local.
func (a *admAPI) sessionOf(t *testing.T, local string) string {
	t.Helper()
	return a.waitSessions(t, "client="+url.QueryEscape(local), 1).Sessions[0].ID
}

// admEchoConfig is a config with one echo upstream at backend, the named
// routes (each a path prefix "/"+name) on it, and an admin listener whose
// token comes from admTokenEnv; extra is appended.
func admEchoConfig(backend string, routeNames []string, extra string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `listeners:
  - addr: 127.0.0.1:0
upstreams:
  echo: {targets: ["http://%s"]}
routes:
`, backend)
	for _, n := range routeNames {
		fmt.Fprintf(&b, "  - name: %s\n    match: {path_prefix: /%s}\n    upstream: echo\n", n, n)
	}
	fmt.Fprintf(&b, "admin: {addr: 127.0.0.1:0, token: \"${%s}\"}\n", admTokenEnv)
	b.WriteString(extra)
	return b.String()
}

// admRead reads the next message of c and checks its type and payload.
func admRead(t *testing.T, c *websocket.Conn, wantType int, want []byte) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(ioTimeout))
	mt, got, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("read %.40q: %v", want, err)
	}
	if mt != wantType || !bytes.Equal(got, want) {
		t.Fatalf("read type %d %.60q, want type %d %.60q", mt, got, wantType, want)
	}
}

// TestAdminAuth: with a token, every endpoint but /healthz and /readyz
// answers 401 without it, with another scheme and with a wrong one (the
// writes then change nothing), and does its work with it; cross-origin
// writes get 403 even with the token.
func TestAdminAuth(t *testing.T) {
	needBinary(t)
	backend := newWSBackend()
	g, _, a := admStart(t, admEchoConfig(backend.start(t), []string{"chat"}, ""))

	c := dialWS(t, nil, "ws://"+g.Addr+"/chat/auth", nil)
	echoOnce(t, c, websocket.TextMessage, []byte("hello"))
	id := a.sessionOf(t, c.LocalAddr().String())

	cases := []struct {
		name, method, path string
		open               bool // no token needed
		want               int  // with the token
		stream             bool // text/event-stream: read the first event only
	}{
		{"healthz", http.MethodGet, "/healthz", true, http.StatusOK, false},
		{"readyz", http.MethodGet, "/readyz", true, http.StatusOK, false},
		{"metrics", http.MethodGet, "/metrics", false, http.StatusOK, false},
		{"sessions", http.MethodGet, "/api/sessions", false, http.StatusOK, false},
		{"sessions HEAD", http.MethodHead, "/api/sessions", false, http.StatusOK, false},
		{"session", http.MethodGet, "/api/sessions/" + id, false, http.StatusOK, false},
		{"upstreams", http.MethodGet, "/api/upstreams", false, http.StatusOK, false},
		{"config", http.MethodGet, "/api/config", false, http.StatusOK, false},
		{"overview", http.MethodGet, "/api/overview", false, http.StatusOK, false},
		{"stream", http.MethodGet, "/api/stream", false, http.StatusOK, true},
		{"unknown path", http.MethodGet, "/api/nope", false, http.StatusNotFound, false},
		{"wrong method", http.MethodPut, "/api/sessions", false, http.StatusMethodNotAllowed, false},
		{"message", http.MethodPost, "/api/sessions/" + id + "/messages", false, http.StatusOK, false},
		{"broadcast", http.MethodPost, "/api/routes/chat/broadcast", false, http.StatusOK, false},
		{"reload", http.MethodPost, "/reload", false, http.StatusOK, false},
		// Last: it ends the session the others use.
		{"close", http.MethodDelete, "/api/sessions/" + id + "?code=4001&reason=auth", false, http.StatusAccepted, false},
	}
	creds := []struct {
		name, auth string
		want401    string // the WWW-Authenticate a refusal carries
	}{
		{"none", "", `Bearer realm="wsgate admin"`},
		{"basic", "Basic " + a.token, `Bearer realm="wsgate admin"`},
		{"wrong token", "Bearer " + admNewToken(t), `Bearer realm="wsgate admin", error="invalid_token"`},
		{"token with a suffix", "Bearer " + a.token + "x", `Bearer realm="wsgate admin", error="invalid_token"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, cr := range creds {
				// The body of a refused write must never arrive.
				var body []byte
				if tc.method != http.MethodGet && tc.method != http.MethodHead {
					body = []byte("refused " + tc.name + " " + cr.name)
				}
				var status int
				var hdr http.Header
				if tc.stream {
					status, hdr = admStreamStatus(t, a, tc.path, cr.auth)
				} else {
					status, hdr, _ = a.send(t, tc.method, tc.path, body, cr.auth, nil)
				}
				switch {
				case tc.open && status != tc.want:
					t.Errorf("%s %s with credentials %s: status %d, want %d (no token needed)", tc.method, tc.path, cr.name, status, tc.want)
				case !tc.open && status != http.StatusUnauthorized:
					t.Errorf("%s %s with credentials %s: status %d, want 401", tc.method, tc.path, cr.name, status)
				case !tc.open:
					if got := hdr.Get("WWW-Authenticate"); got != cr.want401 {
						t.Errorf("%s %s with credentials %s: WWW-Authenticate %q, want %q", tc.method, tc.path, cr.name, got, cr.want401)
					}
				}
			}
			var status int
			if tc.stream {
				status, _ = admStreamStatus(t, a, tc.path, a.auth())
			} else {
				var body []byte
				if tc.method == http.MethodPost {
					body = []byte("authorized " + tc.name)
				}
				status, _, _ = a.send(t, tc.method, tc.path, body, a.auth(), nil)
			}
			if status != tc.want {
				t.Errorf("%s %s with the token: status %d, want %d", tc.method, tc.path, status, tc.want)
			}
		})
	}

	// What the client got: the two authorized writes, then the close;
	// none of the refused ones.
	admRead(t, c, websocket.TextMessage, []byte("authorized message"))
	admRead(t, c, websocket.TextMessage, []byte("authorized broadcast"))
	if ce := readClose(t, c); ce.Code != 4001 || ce.Text != "auth" {
		t.Errorf("client got close %d %q, want 4001 \"auth\"", ce.Code, ce.Text)
	}

	t.Run("scheme case", func(t *testing.T) {
		for _, scheme := range []string{"bearer", "BEARER", "Bearer"} {
			if status, _, _ := a.send(t, http.MethodGet, "/api/upstreams", nil, scheme+" "+a.token, nil); status != http.StatusOK {
				t.Errorf("Authorization: %s <token>: status %d, want 200", scheme, status)
			}
		}
	})
	t.Run("cross-origin writes", func(t *testing.T) {
		for _, hdr := range []map[string]string{
			{"Origin": "http://evil.example"},
			{"Sec-Fetch-Site": "cross-site"},
		} {
			status, _, body := a.send(t, http.MethodPost, "/reload", nil, a.auth(), hdr)
			if status != http.StatusForbidden {
				t.Errorf("POST /reload with the token and %v: status %d %.200q, want 403", hdr, status, body)
			}
		}
	})
}

// admStreamStatus requests the event stream at path with the
// Authorization header auth; when it answers 200 it reads the first
// event, then it hangs up. It returns the status and headers.
func admStreamStatus(t *testing.T, a *admAPI, path, auth string) (int, http.Header) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := a.c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, resp.Header
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		t.Errorf("GET %s: Content-Type %q, want text/event-stream", path, ct)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if sc.Text() == "event: overview" {
			return resp.StatusCode, resp.Header
		}
	}
	t.Errorf("GET %s: stream ended without an overview event: %v", path, sc.Err())
	return resp.StatusCode, resp.Header
}

// TestAdminSessions: three sessions on two routes (each with its own
// upstream and backend) are listed in start order with their route,
// upstream, target, client and exact counters; every filter, paging,
// getting one session, and the errors for bad parameters and unknown ids.
func TestAdminSessions(t *testing.T) {
	needBinary(t)
	addrA := newWSBackend().start(t)
	addrB := newWSBackend().start(t)
	g, _, a := admStart(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  ua: {targets: ["http://%s"]}
  ub: {targets: ["http://%s"]}
routes:
  - name: alpha
    match: {path_prefix: /alpha}
    upstream: ua
  - name: beta
    match: {path_prefix: /beta}
    upstream: ub
admin: {addr: 127.0.0.1:0, token: "${%s}"}
`, addrA, addrB, admTokenEnv))

	type sent struct {
		mt   int
		data []byte
	}
	type client struct {
		path, route, upstream, target string
		msgs                          []sent
		c                             *websocket.Conn
		want                          admFlow
	}
	clients := []*client{
		{path: "/alpha/1", route: "alpha", upstream: "ua", target: "http://" + addrA,
			msgs: []sent{{websocket.TextMessage, bytes.Repeat([]byte("x"), 10)}, {websocket.TextMessage, bytes.Repeat([]byte("y"), 20)}}},
		{path: "/alpha/2", route: "alpha", upstream: "ua", target: "http://" + addrA,
			msgs: []sent{{websocket.BinaryMessage, bytes.Repeat([]byte{0xab}, 1000)}}},
		{path: "/beta/1", route: "beta", upstream: "ub", target: "http://" + addrB,
			msgs: []sent{{websocket.TextMessage, []byte("12345")}, {websocket.TextMessage, []byte("123456")}, {websocket.BinaryMessage, []byte("1234567")}}},
	}
	// One after the other: the start order is the list order.
	for _, cl := range clients {
		cl.c = dialWS(t, nil, "ws://"+g.Addr+cl.path, nil)
		for _, m := range cl.msgs {
			echoOnce(t, cl.c, m.mt, m.data)
			cl.want.Messages++
			cl.want.Bytes += int64(len(m.data))
		}
	}

	// The counters are read live; the echo may be counted a moment after
	// the client has it.
	var all admPage
	admPoll(t, "three sessions with the counters of what was sent", func() string {
		all = a.sessions(t, "")
		if len(all.Sessions) != len(clients) {
			return fmt.Sprintf("%d sessions", len(all.Sessions))
		}
		for i, s := range all.Sessions {
			if w := clients[i].want; s.FromClient != w || s.FromBackend != w {
				return fmt.Sprintf("session %d: from_client %+v, from_backend %+v; want %+v both", i, s.FromClient, s.FromBackend, w)
			}
		}
		return ""
	})
	if all.Total != 3 || all.Offset != 0 || all.Limit != 100 {
		t.Errorf("GET /api/sessions: total %d, offset %d, limit %d; want 3, 0, 100 (the default)", all.Total, all.Offset, all.Limit)
	}
	ids := map[string]string{} // client address → session id
	seen := map[string]bool{}  // session ids
	for i, s := range all.Sessions {
		cl := clients[i]
		local := cl.c.LocalAddr().String()
		if s.Route != cl.route || s.Upstream != cl.upstream || s.Target != cl.target || s.Client != local {
			t.Errorf("session %d: route %q, upstream %q, target %q, client %q; want %q, %q, %q, %q",
				i, s.Route, s.Upstream, s.Target, s.Client, cl.route, cl.upstream, cl.target, local)
		}
		if s.ID == "" || s.Closing || s.Injected != 0 || s.Started.IsZero() || s.LastActive.Before(s.Started) {
			t.Errorf("session %d: id %q, closing %v, injected %d, started %v, last_active %v", i, s.ID, s.Closing, s.Injected, s.Started, s.LastActive)
		}
		if _, dup := ids[local]; dup || seen[s.ID] {
			t.Errorf("session %d: client %s or id %s listed twice", i, local, s.ID)
		}
		ids[local] = s.ID
		seen[s.ID] = true
	}
	idOf := func(i int) string { return ids[clients[i].c.LocalAddr().String()] }

	t.Run("filters", func(t *testing.T) {
		for _, tc := range []struct {
			query string
			want  []int // indexes into clients, in order
		}{
			{"route=alpha", []int{0, 1}},
			{"route=beta", []int{2}},
			{"route=gamma", nil},
			{"upstream=ua", []int{0, 1}},
			{"upstream=ub", []int{2}},
			{"upstream=alpha", nil},
			{"target=" + url.QueryEscape("http://"+addrA), []int{0, 1}},
			{"target=" + url.QueryEscape("http://"+addrB), []int{2}},
			{"target=" + url.QueryEscape(addrB), nil},
			{"client=" + url.QueryEscape(clients[1].c.LocalAddr().String()), []int{1}},
			{"client=127.0.0.1", []int{0, 1, 2}},
			{"client=127.0.0.2", nil},
			{"route=alpha&client=" + url.QueryEscape(clients[2].c.LocalAddr().String()), nil},
			{"route=beta&upstream=ub&target=" + url.QueryEscape("http://"+addrB), []int{2}},
		} {
			t.Run(tc.query, func(t *testing.T) {
				p := a.sessions(t, tc.query)
				var got []string
				for _, s := range p.Sessions {
					got = append(got, s.ID)
				}
				var want []string
				for _, i := range tc.want {
					want = append(want, idOf(i))
				}
				if !slices.Equal(got, want) || p.Total != len(want) {
					t.Errorf("GET /api/sessions?%s = %v (total %d), want %v", tc.query, got, p.Total, want)
				}
				if p.Sessions == nil {
					t.Errorf("GET /api/sessions?%s: sessions is null, want []", tc.query)
				}
			})
		}
	})

	t.Run("paging", func(t *testing.T) {
		for _, tc := range []struct {
			query         string
			want          []int
			offset, limit int
		}{
			{"limit=2", []int{0, 1}, 0, 2},
			{"offset=2&limit=2", []int{2}, 2, 2},
			{"offset=1", []int{1, 2}, 1, 100},
			{"offset=3", nil, 3, 100},
			{"offset=50&limit=1000", nil, 50, 1000},
			{"route=alpha&offset=1&limit=1", []int{1}, 1, 1},
		} {
			t.Run(tc.query, func(t *testing.T) {
				p := a.sessions(t, tc.query)
				var got, want []string
				for _, s := range p.Sessions {
					got = append(got, s.ID)
				}
				for _, i := range tc.want {
					want = append(want, idOf(i))
				}
				total := 3
				if strings.Contains(tc.query, "route=alpha") {
					total = 2
				}
				if !slices.Equal(got, want) || p.Total != total || p.Offset != tc.offset || p.Limit != tc.limit {
					t.Errorf("GET /api/sessions?%s = %v total %d offset %d limit %d; want %v total %d offset %d limit %d",
						tc.query, got, p.Total, p.Offset, p.Limit, want, total, tc.offset, tc.limit)
				}
			})
		}
	})

	t.Run("bad parameters", func(t *testing.T) {
		for _, q := range []string{"limit=0", "limit=1001", "limit=-1", "limit=x", "offset=-1", "offset=1.5"} {
			t.Run(q, func(t *testing.T) {
				a.callError(t, http.MethodGet, "/api/sessions?"+q, nil, http.StatusBadRequest)
			})
		}
	})

	t.Run("get", func(t *testing.T) {
		for i, want := range all.Sessions {
			var s admSession
			a.call(t, http.MethodGet, "/api/sessions/"+want.ID, nil, http.StatusOK, &s)
			if s.ID != want.ID || s.Route != want.Route || s.Upstream != want.Upstream || s.Target != want.Target ||
				s.Client != want.Client || s.FromClient != want.FromClient || s.FromBackend != want.FromBackend || !s.Started.Equal(want.Started) {
				t.Errorf("GET /api/sessions/%s = %+v, want as listed: %+v", want.ID, s, want)
			}
			if s.Client != clients[i].c.LocalAddr().String() {
				t.Errorf("GET /api/sessions/%s: client %q, want %q", want.ID, s.Client, clients[i].c.LocalAddr())
			}
		}
	})

	t.Run("unknown id", func(t *testing.T) {
		for _, id := range []string{"zzzzzzzz", "0", "not-an-id"} {
			msg := a.callError(t, http.MethodGet, "/api/sessions/"+id, nil, http.StatusNotFound)
			if want := fmt.Sprintf("no such session %q", id); msg != want {
				t.Errorf("GET /api/sessions/%s: error %q, want %q", id, msg, want)
			}
		}
	})
}

// TestAdminCloseSession: DELETE /api/sessions/{id} closes the client with
// the code and reason asked for and the backend with 1001; the session is
// then gone (404) and shows among the recent closes as closed by wsgate.
// Codes a closer may not send and bad reasons get 400 and leave the
// session alone; an unknown id gets 404.
func TestAdminCloseSession(t *testing.T) {
	needBinary(t)
	backend := newWSBackend()
	g, _, a := admStart(t, admEchoConfig(backend.start(t), []string{"chat"}, ""))

	c := dialWS(t, nil, "ws://"+g.Addr+"/chat/close", nil)
	echoOnce(t, c, websocket.TextMessage, []byte("before"))
	id := a.sessionOf(t, c.LocalAddr().String())

	t.Run("bad code or reason", func(t *testing.T) {
		for _, tc := range []struct{ name, query string }{
			{"1005 never sent", "code=1005"},
			{"1006 never sent", "code=1006"},
			{"1015 never sent", "code=1015"},
			{"1002 protocol error", "code=1002"},
			{"999 below the range", "code=999"},
			{"2999 reserved", "code=2999"},
			{"5000 above the range", "code=5000"},
			{"0", "code=0"},
			{"negative", "code=-1"},
			{"not a number", "code=abc"},
			{"over 16 bits", "code=65536"},
			{"reason of 124 bytes", "code=4000&reason=" + strings.Repeat("r", 124)},
			{"reason not UTF-8", "code=4000&reason=%FF%FE"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				a.callError(t, http.MethodDelete, "/api/sessions/"+id+"?"+tc.query, nil, http.StatusBadRequest)
			})
		}
	})
	// None of them touched the session.
	var s admSession
	a.call(t, http.MethodGet, "/api/sessions/"+id, nil, http.StatusOK, &s)
	if s.Closing {
		t.Errorf("session closing after refused closes")
	}
	echoOnce(t, c, websocket.TextMessage, []byte("still open"))

	a.callError(t, http.MethodDelete, "/api/sessions/zzzzzzzz?code=4000", nil, http.StatusNotFound)

	var closed struct {
		Closed string `json:"closed"`
	}
	a.call(t, http.MethodDelete, "/api/sessions/"+id+"?code=4000&reason=closed%20by%20admin", nil, http.StatusAccepted, &closed)
	if closed.Closed != id {
		t.Errorf(`DELETE answered {"closed": %q}, want %q`, closed.Closed, id)
	}
	if ce := readClose(t, c); ce.Code != 4000 || ce.Text != "closed by admin" {
		t.Errorf("client got close %d %q, want 4000 \"closed by admin\"", ce.Code, ce.Text)
	}
	if ce := backend.nextClose(t, "/chat/close"); ce.Code != websocket.CloseGoingAway {
		t.Errorf("backend got close %d %q, want 1001", ce.Code, ce.Text)
	}
	admPoll(t, "the closed session is gone", func() string {
		if status, body := a.do(t, http.MethodGet, "/api/sessions/"+id, nil); status != http.StatusNotFound {
			return fmt.Sprintf("GET /api/sessions/%s: %d %.200q", id, status, body)
		}
		return ""
	})
	a.callError(t, http.MethodDelete, "/api/sessions/"+id+"?code=4000", nil, http.StatusNotFound)
	metWait(t, a, "the close counted as wsgate's 4000",
		metWant{"wsgate_websocket_sessions_ended_total", metLabels("route", "chat", "code", "4000", "closed_by", "wsgate"), 1},
		metWant{"wsgate_websocket_sessions_ended_total", metLabels("route", "chat"), 1},
		metWant{"wsgate_websocket_sessions", metLabels("route", "chat"), 0},
	)

	t.Run("closing", func(t *testing.T) {
		// A raw client that never answers the close frame: the session
		// stays closing while wsgate waits for the reply.
		rc := dialRaw(t, g.Addr)
		rc.wsHandshake(g.Addr, "/chat/mute")
		id := a.sessionOf(t, rc.c.LocalAddr().String())
		a.call(t, http.MethodDelete, "/api/sessions/"+id+"?code=4000&reason=first", nil, http.StatusAccepted, nil)
		want := fmt.Sprintf("session %q is closing", id)
		if msg := a.callError(t, http.MethodDelete, "/api/sessions/"+id+"?code=4000&reason=second", nil, http.StatusConflict); msg != want {
			t.Errorf("second DELETE: error %q, want %q", msg, want)
		}
		if msg := a.callError(t, http.MethodPost, "/api/sessions/"+id+"/messages", []byte("late"), http.StatusConflict); msg != want {
			t.Errorf("POST messages to a closing session: error %q, want %q", msg, want)
		}
		var s admSession
		a.call(t, http.MethodGet, "/api/sessions/"+id, nil, http.StatusOK, &s)
		if !s.Closing {
			t.Errorf("GET /api/sessions/%s: closing false after DELETE", id)
		}
		f := rc.readFrame()
		if code, reason := f.closeCode(); code != 4000 || reason != "first" {
			t.Errorf("raw client got opcode %d, close %d %q; want close 4000 \"first\" and nothing else", f.opcode, code, reason)
		}
	})

	type admClosed struct {
		ID       string `json:"id"`
		Route    string `json:"route"`
		ClosedBy string `json:"closed_by"`
		Reason   string `json:"reason"`
	}
	var ov struct {
		Closes []admClosed `json:"closes"`
	}
	a.call(t, http.MethodGet, "/api/overview", nil, http.StatusOK, &ov)
	i := slices.IndexFunc(ov.Closes, func(c admClosed) bool { return c.ID == id })
	if i < 0 || ov.Closes[i].Route != "chat" || ov.Closes[i].ClosedBy != "wsgate" || ov.Closes[i].Reason != "closed by admin" {
		t.Errorf("overview closes = %+v, want session %s on chat closed by wsgate with reason \"closed by admin\"", ov.Closes, id)
	}
}

// admPyScript drives a client of Python's websockets library: it
// connects to argv[1] without permessage-deflate (so that the session's
// byte counts are the payloads' lengths), prints {"event": "open", "local": ADDR}, then runs
// one command per stdin line and prints one JSON line for each: "send
// TEXT", "recv" (the next message, binary in hex; or the close), "close
// CODE".
const admPyScript = `
import asyncio
import json
import sys

from websockets.client import connect
from websockets.exceptions import ConnectionClosed


def report(**kw):
    print(json.dumps(kw), flush=True)


async def run(url):
    loop = asyncio.get_running_loop()
    async with connect(url, open_timeout=10, close_timeout=10, max_size=None, compression=None) as ws:
        host, port = ws.local_address[:2]
        report(event="open", local="%s:%d" % (host, port))
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            cmd, _, arg = line.rstrip("\n").partition(" ")
            if cmd == "send":
                await ws.send(arg)
                report(event="sent")
            elif cmd == "recv":
                try:
                    msg = await asyncio.wait_for(ws.recv(), 10)
                except ConnectionClosed:
                    report(event="closed", code=ws.close_code, reason=ws.close_reason)
                    continue
                if isinstance(msg, bytes):
                    report(event="message", type="binary", hex=msg.hex())
                else:
                    report(event="message", type="text", text=msg)
            elif cmd == "close":
                await ws.close(code=int(arg))
                report(event="closed", code=ws.close_code, reason=ws.close_reason)
                return
            else:
                report(event="error", error="unknown command %r" % cmd)


def main():
    try:
        asyncio.run(run(sys.argv[1]))
    except Exception as e:
        report(event="error", error="%s: %s" % (type(e).__name__, e))


if __name__ == "__main__":
    main()
`

// admPyEvent is one line admPyScript prints.
type admPyEvent struct {
	Event  string `json:"event"`
	Local  string `json:"local"`
	Type   string `json:"type"`
	Text   string `json:"text"`
	Hex    string `json:"hex"`
	Code   int    `json:"code"`
	Reason string `json:"reason"`
	Error  string `json:"error"`
}

// admPy is a running admPyScript.
type admPy struct {
	stdin  io.WriteCloser
	events chan admPyEvent // closed when its stdout ends
	// Local is the client's address, as wsgate sees it.
	Local string
}

// admPyGuard bounds each wait for the Python client (its start included).
const admPyGuard = 30 * time.Second

// startAdmPy connects a Python websockets client to url.
func startAdmPy(t *testing.T, url string) *admPy {
	t.Helper()
	cmd := exec.Command(python, "-c", admPyScript, url)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &admPy{stdin: stdin, events: make(chan admPyEvent, 64)}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		defer close(p.events)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var e admPyEvent
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				e = admPyEvent{Event: "error", Error: fmt.Sprintf("bad line %q: %v", sc.Text(), err)}
			}
			p.events <- e
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	t.Cleanup(func() {
		stdin.Close() // the script ends at the end of its input
		exited := make(chan struct{})
		go func() {
			for range p.events { // unblock the reader
			}
			<-copied
			close(exited)
		}()
		select {
		case <-exited:
		case <-time.After(admPyGuard):
			_ = cmd.Process.Kill()
			<-exited
		}
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("python client stderr:\n%s", stderr.String())
		}
	})
	e := p.next(t, "open")
	p.Local = e.Local
	return p
}

// next returns the client's next line, which must be a want event.
func (p *admPy) next(t *testing.T, want string) admPyEvent {
	t.Helper()
	select {
	case e, ok := <-p.events:
		if !ok {
			t.Fatalf("python client exited before its %q line", want)
		}
		if e.Event != want {
			t.Fatalf("python client: %+v, want a %q event", e, want)
		}
		return e
	case <-time.After(admPyGuard):
		t.Fatalf("python client printed no %q line within %v", want, admPyGuard)
	}
	return admPyEvent{}
}

// command sends one command line.
func (p *admPy) command(t *testing.T, line string) {
	t.Helper()
	if _, err := io.WriteString(p.stdin, line+"\n"); err != nil {
		t.Fatalf("python client: write %q: %v", line, err)
	}
}

// send has the client send text and waits until it has.
func (p *admPy) send(t *testing.T, text string) {
	t.Helper()
	p.command(t, "send "+text)
	p.next(t, "sent")
}

// recv returns the client's next message.
func (p *admPy) recv(t *testing.T) admPyEvent {
	t.Helper()
	p.command(t, "recv")
	return p.next(t, "message")
}

// recvText checks that the client's next message is the text want.
func (p *admPy) recvText(t *testing.T, want string) {
	t.Helper()
	if e := p.recv(t); e.Type != "text" || e.Text != want {
		t.Fatalf("python client received %s %q (hex %s), want text %q", e.Type, e.Text, e.Hex, want)
	}
}

// TestAdminPushMessage: POST /api/sessions/{id}/messages reaches a Python
// websockets client between two echoed messages, whole and in order: the
// echo of "a", the pushed text, the echo of "b"; a binary push arrives as
// bytes; invalid UTF-8 text gets 400 and sends nothing. The backend sees
// none of it.
func TestAdminPushMessage(t *testing.T) {
	needPythonWebsockets(t)
	backend := newWSBackend()
	g, _, a := admStart(t, admEchoConfig(backend.start(t), []string{"push"}, ""))

	py := startAdmPy(t, "ws://"+g.Addr+"/push/py")
	id := a.sessionOf(t, py.Local)
	pushed := func(query string, body []byte) {
		t.Helper()
		var res struct {
			Sent bool `json:"sent"`
		}
		a.call(t, http.MethodPost, "/api/sessions/"+id+"/messages"+query, body, http.StatusOK, &res)
		if !res.Sent {
			t.Errorf(`POST messages%s answered {"sent": false}`, query)
		}
	}

	py.send(t, "a")
	py.recvText(t, "a")
	// The answer comes once the message is on its way to the client:
	// "b" is sent after it, so its echo comes after it.
	pushed("", []byte("pushed"))
	py.send(t, "b")
	py.recvText(t, "pushed")
	py.recvText(t, "b")

	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	pushed("?binary=1", all)
	py.send(t, "c")
	if e := py.recv(t); e.Type != "binary" || e.Hex != hex.EncodeToString(all) {
		t.Errorf("python client received %s %q %q, want the bytes 0..255", e.Type, e.Text, e.Hex)
	}
	py.recvText(t, "c")

	t.Run("refused", func(t *testing.T) {
		for _, tc := range []struct {
			name, query string
			body        []byte
			want        int
		}{
			{"invalid UTF-8", "", []byte{'x', 0xff, 0xfe}, http.StatusBadRequest},
			{"lone surrogate", "", []byte{0xed, 0xa0, 0x80}, http.StatusBadRequest},
			{"bad binary flag", "?binary=maybe", []byte("x"), http.StatusBadRequest},
			{"body over 1 MiB", "?binary=1", make([]byte, 1<<20+1), http.StatusRequestEntityTooLarge},
		} {
			t.Run(tc.name, func(t *testing.T) {
				a.callError(t, http.MethodPost, "/api/sessions/"+id+"/messages"+tc.query, tc.body, tc.want)
			})
		}
		a.callError(t, http.MethodPost, "/api/sessions/zzzzzzzz/messages", []byte("x"), http.StatusNotFound)
	})
	// Nothing of the refused pushes came: the next message is the echo.
	py.send(t, "d")
	py.recvText(t, "d")

	var s admSession
	admPoll(t, "the session's counters", func() string {
		a.call(t, http.MethodGet, "/api/sessions/"+id, nil, http.StatusOK, &s)
		want := admFlow{Messages: 4, Bytes: 4}
		if s.Injected != 2 || s.FromClient != want || s.FromBackend != want {
			return fmt.Sprintf("injected %d, from_client %+v, from_backend %+v; want 2, %+v, %+v (pushes are not the backend's)",
				s.Injected, s.FromClient, s.FromBackend, want, want)
		}
		return ""
	})

	py.command(t, "close 1000")
	if e := py.next(t, "closed"); e.Code != 1000 {
		t.Errorf("python client: close %d %q, want 1000 echoed", e.Code, e.Reason)
	}
	if ce := backend.nextClose(t, "/push/py"); ce.Code != websocket.CloseNormalClosure {
		t.Errorf("backend: close %d %q, want the client's 1000", ce.Code, ce.Text)
	}
}

// TestAdminBroadcast: POST /api/routes/{name}/broadcast reaches every
// client of the route and no other, and says on how many sessions it was
// queued; a route without sessions answers 0, an unknown route 404.
func TestAdminBroadcast(t *testing.T) {
	needBinary(t)
	backend := newWSBackend()
	g, _, a := admStart(t, admEchoConfig(backend.start(t), []string{"alpha", "beta", "gamma"}, ""))

	alpha := []*websocket.Conn{
		dialWS(t, nil, "ws://"+g.Addr+"/alpha/1", nil),
		dialWS(t, nil, "ws://"+g.Addr+"/alpha/2", nil),
	}
	beta := dialWS(t, nil, "ws://"+g.Addr+"/beta/1", nil)
	a.waitSessions(t, "", 3)

	type result struct {
		Route string `json:"route"`
		Sent  int    `json:"sent"`
	}
	var res result
	a.call(t, http.MethodPost, "/api/routes/alpha/broadcast", []byte("to alpha"), http.StatusOK, &res)
	if res != (result{"alpha", 2}) {
		t.Errorf("broadcast to alpha answered %+v, want {alpha 2}", res)
	}
	for _, c := range alpha {
		admRead(t, c, websocket.TextMessage, []byte("to alpha"))
		echoOnce(t, c, websocket.TextMessage, []byte("after")) // once only
	}
	// The broadcast was done before this echo began: had it reached
	// beta, it would come first.
	echoOnce(t, beta, websocket.TextMessage, []byte("probe"))

	a.call(t, http.MethodPost, "/api/routes/beta/broadcast?binary=1", []byte{0, 1, 2, 0xff}, http.StatusOK, &res)
	if res != (result{"beta", 1}) {
		t.Errorf("broadcast to beta answered %+v, want {beta 1}", res)
	}
	admRead(t, beta, websocket.BinaryMessage, []byte{0, 1, 2, 0xff})
	for _, c := range alpha {
		echoOnce(t, c, websocket.TextMessage, []byte("not for alpha"))
	}

	a.call(t, http.MethodPost, "/api/routes/gamma/broadcast", []byte("nobody"), http.StatusOK, &res)
	if res != (result{"gamma", 0}) {
		t.Errorf("broadcast to gamma answered %+v, want {gamma 0}", res)
	}
	if msg := a.callError(t, http.MethodPost, "/api/routes/nope/broadcast", []byte("x"), http.StatusNotFound); msg != `no such route "nope"` {
		t.Errorf("broadcast to an unknown route: error %q", msg)
	}
	a.callError(t, http.MethodPost, "/api/routes/alpha/broadcast", []byte{0xc3, 0x28}, http.StatusBadRequest)
	a.callError(t, http.MethodPost, "/api/routes/alpha/broadcast?binary=1", make([]byte, 1<<20+1), http.StatusRequestEntityTooLarge)

	for _, s := range a.sessions(t, "").Sessions {
		if s.Injected != 1 {
			t.Errorf("session %s on %s: injected %d, want 1", s.ID, s.Route, s.Injected)
		}
	}
}

// TestAdminUpstreamsConfigReload: /api/upstreams shows the target healthy
// with its open session; /api/config shows the running config with the
// token redacted; POST /reload applies a rewritten file (a new route
// works) and refuses a broken one with 422 and its problems, the old
// config serving on.
func TestAdminUpstreamsConfigReload(t *testing.T) {
	needBinary(t)
	backend := newWSBackend()
	addr := backend.start(t)
	cfg := admEchoConfig(addr, []string{"chat"}, "")
	g, path, a := admStart(t, cfg)

	c := dialWS(t, nil, "ws://"+g.Addr+"/chat/x", nil)
	echoOnce(t, c, websocket.TextMessage, []byte("hi"))

	type target struct {
		URL      string `json:"url"`
		Healthy  bool   `json:"healthy"`
		State    string `json:"state"`
		Sessions int    `json:"sessions"`
		InFlight int    `json:"in_flight"`
	}
	var ups struct {
		Upstreams []struct {
			Name    string   `json:"name"`
			Policy  string   `json:"policy"`
			Targets []target `json:"targets"`
		} `json:"upstreams"`
	}
	admPoll(t, "/api/upstreams shows the open session", func() string {
		a.call(t, http.MethodGet, "/api/upstreams", nil, http.StatusOK, &ups)
		if len(ups.Upstreams) != 1 || len(ups.Upstreams[0].Targets) != 1 || ups.Upstreams[0].Targets[0].Sessions != 1 {
			return fmt.Sprintf("%+v", ups)
		}
		return ""
	})
	u := ups.Upstreams[0]
	want := target{URL: "http://" + addr, Healthy: true, State: "up", Sessions: 1}
	if u.Name != "echo" || u.Policy != "round_robin" || u.Targets[0] != want {
		t.Errorf("/api/upstreams: %+v, want upstream echo, round_robin, target %+v", u, want)
	}

	checkConfig := func(t *testing.T, wantRoutes ...string) {
		t.Helper()
		status, body := a.do(t, http.MethodGet, "/api/config", nil)
		if status != http.StatusOK {
			t.Fatalf("GET /api/config: %d %.300q", status, body)
		}
		if bytes.Contains(body, []byte(a.token)) {
			t.Errorf("GET /api/config shows the token: %s", body)
		}
		var cf struct {
			Admin struct {
				Addr  string `json:"addr"`
				Token string `json:"token"`
			} `json:"admin"`
			Routes []struct {
				Name string `json:"name"`
			} `json:"routes"`
			Upstreams map[string]struct {
				Targets []struct {
					URL string `json:"url"`
				} `json:"targets"`
			} `json:"upstreams"`
		}
		if err := json.Unmarshal(body, &cf); err != nil {
			t.Fatalf("GET /api/config: %v in %.300q", err, body)
		}
		if cf.Admin.Token != "[redacted]" || cf.Admin.Addr != "127.0.0.1:0" {
			t.Errorf("/api/config admin = %+v, want addr 127.0.0.1:0, token [redacted]", cf.Admin)
		}
		var names []string
		for _, r := range cf.Routes {
			names = append(names, r.Name)
		}
		if !slices.Equal(names, wantRoutes) {
			t.Errorf("/api/config routes = %v, want %v", names, wantRoutes)
		}
		if ts := cf.Upstreams["echo"].Targets; len(ts) != 1 || ts[0].URL != "http://"+addr {
			t.Errorf("/api/config upstreams.echo.targets = %+v, want http://%s", ts, addr)
		}
	}
	checkConfig(t, "chat")

	hc := httpClient()
	// A route added at the end of the routes list, before the admin block.
	added := strings.Replace(cfg, "admin:", `  - name: added
    match: {path: /added}
    respond: {body: added route}
admin:`, 1)
	replaceByRename(t, path, []byte(added))
	var res struct {
		OK       bool     `json:"ok"`
		Problems []string `json:"problems"`
		Error    string   `json:"error"`
	}
	a.call(t, http.MethodPost, "/reload", nil, http.StatusOK, &res)
	if !res.OK || len(res.Problems) > 0 || res.Error != "" {
		t.Errorf("POST /reload: %+v, want ok", res)
	}
	if resp, body := get(t, hc, "http://"+g.Addr+"/added", nil); resp.StatusCode != http.StatusOK || body != "added route" {
		t.Errorf("GET /added after the reload: %d %q, want 200 \"added route\"", resp.StatusCode, body)
	}
	checkConfig(t, "chat", "added")
	echoOnce(t, c, websocket.TextMessage, []byte("kept"))

	broken := strings.Replace(added, "respond: {body: added route}", "respond: {body: added route}\n    tiemout: 5s", 1)
	replaceByRename(t, path, []byte(broken))
	res.OK, res.Problems, res.Error = false, nil, ""
	a.call(t, http.MethodPost, "/reload", nil, http.StatusUnprocessableEntity, &res)
	if res.OK || !slices.ContainsFunc(res.Problems, func(p string) bool { return strings.Contains(p, `unknown key "tiemout"`) }) {
		t.Errorf("POST /reload of a broken file: %+v, want ok false and a problem about the unknown key \"tiemout\"", res)
	}
	if resp, body := get(t, hc, "http://"+g.Addr+"/added", nil); resp.StatusCode != http.StatusOK || body != "added route" {
		t.Errorf("GET /added after a failed reload: %d %q, want 200 \"added route\"", resp.StatusCode, body)
	}
	checkConfig(t, "chat", "added")
	echoOnce(t, c, websocket.TextMessage, []byte("still kept"))
}

// TestAdminReadyz: /readyz answers 200 while wsgate runs, and 503 as soon
// as SIGTERM arrives, while the sessions still run and the listeners
// still accept (timeouts.shutdown_delay); the sessions get 1001 only
// after that.
func TestAdminReadyz(t *testing.T) {
	needBinary(t)
	backend := newWSBackend()
	addr := backend.start(t)
	config := func(delay string) string {
		return fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  echo: {targets: ["http://%s"]}
routes:
  - name: chat
    match: {path_prefix: /chat}
    upstream: echo
  - name: plain
    match: {path: /plain}
    respond: {body: plain}
timeouts: {shutdown_delay: %s, drain: 2s}
admin: {addr: 127.0.0.1:0}
`, addr, delay)
	}
	hc := httpClient()
	probe := func(g *gw, path string) (int, string) {
		resp, err := hc.Get("http://" + g.AdminAddr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// awaitNotReady sends SIGTERM and waits until /readyz answers 503.
	awaitNotReady := func(t *testing.T, g *gw) time.Time {
		t.Helper()
		if status, body := probe(g, "/readyz"); status != http.StatusOK || body != "ok" {
			t.Fatalf("/readyz before SIGTERM: %d %q, want 200 ok", status, body)
		}
		sent := time.Now()
		g.stopped = true
		g.signal(syscall.SIGTERM)
		admPoll(t, "/readyz answers 503 after SIGTERM", func() string {
			status, body := probe(g, "/readyz")
			if status != http.StatusServiceUnavailable {
				return fmt.Sprintf("%d %q", status, body)
			}
			if body != "shutting down" {
				t.Errorf("/readyz: 503 %q, want \"shutting down\"", body)
			}
			return ""
		})
		return sent
	}

	// A delay of minutes: whatever the machine's pace, nothing closes
	// before the second SIGTERM cuts it short.
	t.Run("during the delay", func(t *testing.T) {
		g := startGateway(t, config("10m"))
		c := dialWS(t, nil, "ws://"+g.Addr+"/chat/ready", nil)
		echoOnce(t, c, websocket.TextMessage, []byte("before"))
		awaitNotReady(t, g)
		// Not ready, yet everything still works: the session relays
		// (no close frame came first), a new request is served, and the
		// process is alive.
		echoOnce(t, c, websocket.TextMessage, []byte("after readyz 503"))
		if resp, body := get(t, hc, "http://"+g.Addr+"/plain", nil); resp.StatusCode != http.StatusOK || body != "plain" {
			t.Errorf("GET /plain during the delay: %d %q, want 200 plain", resp.StatusCode, body)
		}
		if status, body := probe(g, "/healthz"); status != http.StatusOK {
			t.Errorf("/healthz during the delay: %d %q, want 200", status, body)
		}
		var res struct {
			OK    bool   `json:"ok"`
			Error string `json:"error"`
		}
		newAdmAPI(t, g, "").call(t, http.MethodPost, "/reload", nil, http.StatusServiceUnavailable, &res)
		if res.OK || res.Error != "shutting down" {
			t.Errorf("POST /reload while shutting down: %+v, want ok false, error \"shutting down\"", res)
		}
		g.signal(syscall.SIGTERM) // cuts the delay short: every session closes now
		if ce := readClose(t, c); ce.Code != websocket.CloseGoingAway || ce.Text != "going away" {
			t.Errorf("client got close %d %q, want 1001 \"going away\"", ce.Code, ce.Text)
		}
		if code := g.wait(stopTimeout); code != 0 {
			t.Errorf("exit code %d, want 0", code)
		}
	})

	// The delay runs out by itself: the close comes no sooner.
	t.Run("after the delay", func(t *testing.T) {
		const delay = 3 * time.Second
		g := startGateway(t, config(delay.String()))
		c := dialWS(t, nil, "ws://"+g.Addr+"/chat/ready", nil)
		echoOnce(t, c, websocket.TextMessage, []byte("before"))
		sent := awaitNotReady(t, g)
		ce := readClose(t, c)
		if elapsed := time.Since(sent); elapsed < delay {
			t.Errorf("close frame %v after SIGTERM, before the %v shutdown_delay", elapsed, delay)
		}
		if ce.Code != websocket.CloseGoingAway {
			t.Errorf("client got close %d %q, want 1001", ce.Code, ce.Text)
		}
		if code := g.wait(stopTimeout); code != 0 {
			t.Errorf("exit code %d, want 0", code)
		}
	})
}

// TestAdminPublicMetrics: admin.public_metrics opens /metrics to a
// scraper without the token (Kubernetes' prometheus.io annotations) and
// nothing else; a reload that turns it off closes /metrics again.
func TestAdminPublicMetrics(t *testing.T) {
	needBinary(t)
	backend := newWSBackend()
	text := admEchoConfig(backend.start(t), []string{"chat"}, "")
	open := strings.Replace(text, `token: "${`+admTokenEnv+`}"}`, `token: "${`+admTokenEnv+`}", public_metrics: true}`, 1)
	if open == text {
		t.Fatal("the admin line of admEchoConfig changed")
	}
	_, path, a := admStart(t, open)
	status, _, body := a.send(t, http.MethodGet, "/metrics", nil, "", nil)
	if status != http.StatusOK || !strings.Contains(string(body), "wsgate_") {
		t.Fatalf("GET /metrics without the token: %d %.100q, want 200 and the metrics", status, body)
	}
	for _, p := range []string{"/api/sessions", "/api/config"} {
		if status, _, _ := a.send(t, http.MethodGet, p, nil, "", nil); status != http.StatusUnauthorized {
			t.Errorf("GET %s without the token: %d, want 401", p, status)
		}
	}
	writeFile(t, path, []byte(text))
	var res map[string]any
	a.call(t, http.MethodPost, "/reload", nil, http.StatusOK, &res)
	if status, _, _ := a.send(t, http.MethodGet, "/metrics", nil, "", nil); status != http.StatusUnauthorized {
		t.Errorf("GET /metrics without the token after public_metrics was turned off: %d, want 401", status)
	}
}

// TestAdminTokenFile: with admin.token_file, a new token written to the
// file (a rotated Kubernetes or Docker secret) takes effect without a
// restart or a SIGHUP, and the old one stops working.
func TestAdminTokenFile(t *testing.T) {
	needBinary(t)
	backend := newWSBackend()
	dir := t.TempDir()
	tokenPath := filepath.Join(dir, "token")
	oldToken, newToken := admNewToken(t), admNewToken(t)
	writeFile(t, tokenPath, []byte(oldToken+"\n"))
	text := admEchoConfig(backend.start(t), []string{"chat"}, "")
	withFile := strings.Replace(text, `token: "${`+admTokenEnv+`}"}`, `token_file: token}`, 1)
	if withFile == text {
		t.Fatal("the admin line of admEchoConfig changed")
	}
	path := filepath.Join(dir, "wsgate.yaml")
	writeFile(t, path, []byte(withFile))
	g := startGatewayFile(t, path, nil)
	a := newAdmAPI(t, g, oldToken)
	if status, _, body := a.send(t, http.MethodGet, "/api/sessions", nil, "Bearer "+oldToken, nil); status != http.StatusOK {
		t.Fatalf("GET /api/sessions with the file's token: %d %.100q", status, body)
	}
	if status, _, _ := a.send(t, http.MethodGet, "/api/sessions", nil, "Bearer "+newToken, nil); status != http.StatusUnauthorized {
		t.Fatalf("GET /api/sessions with a token not yet in the file: %d, want 401", status)
	}
	writeFile(t, tokenPath, []byte(newToken+"\n"))
	deadline := time.Now().Add(startTimeout)
	for {
		status, _, _ := a.send(t, http.MethodGet, "/api/sessions", nil, "Bearer "+newToken, nil)
		if status == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the rotated token was not taken within %v (status %d)", startTimeout, status)
		}
		<-time.After(50 * time.Millisecond) // the file watch debounces
	}
	if status, _, _ := a.send(t, http.MethodGet, "/api/sessions", nil, "Bearer "+oldToken, nil); status != http.StatusUnauthorized {
		t.Errorf("GET /api/sessions with the old token after the rotation: %d, want 401", status)
	}
}
