package integration

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/golang-jwt/jwt/v5"
)

// routes[].auth (docs/config.md) through the real binary: a Go auth
// service for auth.forward, tokens signed here for auth.jwt, Python's
// websockets library as the WebSocket client, and /metrics.

// authSeen is a request as a backend or the auth service received it.
type authSeen struct {
	Method  string
	URI     string // the request target as received
	Header  http.Header
	BodyLen int
}

func authRecord(r *http.Request) authSeen {
	n, _ := io.Copy(io.Discard, r.Body)
	return authSeen{Method: r.Method, URI: r.RequestURI, Header: r.Header.Clone(), BodyLen: int(n)}
}

// recBackend is a wsBackend (WebSocket echo, HTTP echoReply) that
// records every request reaching it, handshakes included.
type recBackend struct {
	*wsBackend
	mu   sync.Mutex
	seen []authSeen // guarded by mu
}

// startRecBackend serves a recBackend on 127.0.0.1:0; cleanup is
// wsBackend.start's.
func startRecBackend(t *testing.T) (*recBackend, string) {
	t.Helper()
	b := &recBackend{wsBackend: newWSBackend()}
	addr := startBackend(t, b)
	t.Cleanup(func() {
		b.wsBackend.mu.Lock()
		for c := range b.conns {
			_ = c.Close()
		}
		b.wsBackend.mu.Unlock()
		b.wg.Wait()
	})
	return b, addr
}

func (b *recBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := authSeen{Method: r.Method, URI: r.RequestURI, Header: r.Header.Clone()}
	b.mu.Lock()
	b.seen = append(b.seen, s)
	b.mu.Unlock()
	b.wsBackend.ServeHTTP(w, r)
}

// hits returns how many requests reached the backend.
func (b *recBackend) hits() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.seen)
}

// last returns the last request that reached the backend.
func (b *recBackend) last(t *testing.T) authSeen {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.seen) == 0 {
		t.Fatal("no request reached the backend")
	}
	return b.seen[len(b.seen)-1]
}

// authService is the test's auth service (the nginx auth_request model):
// Authorization "Bearer good" passes with X-User: alice (and X-Other,
// which no config copies); "Bearer redirect" gets a 302 to a login page;
// anything else a 401 with a challenge, a header of its own and a body.
// Its /slow endpoint never answers.
type authService struct {
	hang chan struct{} // closed at cleanup: /slow returns
	mu   sync.Mutex
	seen []authSeen // guarded by mu
}

func (a *authService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/slow" {
		select {
		case <-r.Context().Done():
		case <-a.hang:
		}
		return
	}
	s := authRecord(r)
	a.mu.Lock()
	a.seen = append(a.seen, s)
	a.mu.Unlock()
	switch r.Header.Get("Authorization") {
	case "Bearer good":
		w.Header().Set("X-User", "alice")
		w.Header().Set("X-Other", "from the auth service")
		w.WriteHeader(http.StatusNoContent)
	case "Bearer redirect":
		w.Header().Set("Location", "https://login.example/?rd="+r.Header.Get("X-Forwarded-Uri"))
		w.WriteHeader(http.StatusFound)
	default:
		w.Header().Set("WWW-Authenticate", `Bearer realm="auth-test"`)
		w.Header().Set("X-Auth-Reason", "no-credentials")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = io.WriteString(w, "login required\n")
	}
}

// last returns what the auth service was last asked.
func (a *authService) last(t *testing.T) authSeen {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.seen) == 0 {
		t.Fatal("the auth service was not asked")
	}
	return a.seen[len(a.seen)-1]
}

// authPyScript is a Python websockets client: it connects to argv[1]
// with the headers of the JSON object argv[2], sends "hello" and reads
// the echo, then with argv[3] "close" closes with 1000, with "hold"
// waits (up to 60 s) for the server's close. One JSON line per step:
// "refused" (status, headers), "open", "echo", "closed" (code, reason, t:
// time.time() when the close arrived), or "error".
const authPyScript = `
import asyncio
import json
import sys
import time

from websockets.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatusCode


def report(**kw):
    print(json.dumps(kw), flush=True)


async def run(url, headers, mode):
    try:
        ws = await connect(url, extra_headers=list(headers.items()), open_timeout=10,
                           close_timeout=10, compression=None)
    except InvalidStatusCode as e:
        report(event="refused", status=e.status_code,
               headers={k.lower(): v for k, v in e.headers.raw_items()})
        return
    try:
        host, port = ws.local_address[:2]
        report(event="open", local="%s:%d" % (host, port))
        await ws.send("hello")
        report(event="echo", text=await asyncio.wait_for(ws.recv(), 10))
        if mode == "close":
            await ws.close(1000, "done")
            report(event="closed", code=ws.close_code, reason=ws.close_reason, t=time.time())
            return
        try:
            msg = await asyncio.wait_for(ws.recv(), 60)
            report(event="error", error="message %r while holding" % (msg,))
        except ConnectionClosed as e:
            at = time.time()
            code, reason = (e.rcvd.code, e.rcvd.reason) if e.rcvd else (None, "")
            report(event="closed", code=code, reason=reason, t=at)
    finally:
        await ws.close()


def main():
    try:
        asyncio.run(run(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]))
    except Exception as e:
        report(event="error", error="%s: %s" % (type(e).__name__, e))


if __name__ == "__main__":
    main()
`

// authPyEvent is one line authPyScript prints.
type authPyEvent struct {
	Event   string            `json:"event"`
	Status  int               `json:"status"`
	Headers map[string]string `json:"headers"`
	Local   string            `json:"local"`
	Text    string            `json:"text"`
	Code    int               `json:"code"`
	Reason  string            `json:"reason"`
	T       float64           `json:"t"`
	Error   string            `json:"error"`
}

// authPyGuard bounds each wait for the Python client (its start
// included); longer than the 60 s the hold mode waits itself.
const authPyGuard = 90 * time.Second

// startAuthPy runs authPyScript against url and returns its lines.
func startAuthPy(t *testing.T, url string, hdr map[string]string, mode string) <-chan authPyEvent {
	t.Helper()
	if hdr == nil {
		hdr = map[string]string{}
	}
	hj, err := json.Marshal(hdr)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(python, "-c", authPyScript, url, string(hj), mode)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	events := make(chan authPyEvent, 16)
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		defer close(events)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var e authPyEvent
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				e = authPyEvent{Event: "error", Error: fmt.Sprintf("bad line %q: %v", sc.Text(), err)}
			}
			events <- e
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	t.Cleanup(func() {
		select {
		case <-copied:
		case <-time.After(authPyGuard):
			_ = cmd.Process.Kill()
			<-copied
		}
		_ = cmd.Wait()
		if t.Failed() && stderr.Len() > 0 {
			t.Logf("python client stderr:\n%s", stderr.String())
		}
	})
	return events
}

// authPyNext returns the client's next line, which must be a want event.
func authPyNext(t *testing.T, events <-chan authPyEvent, want string) authPyEvent {
	t.Helper()
	select {
	case e, ok := <-events:
		if !ok {
			t.Fatalf("python client exited before its %q line", want)
		}
		if e.Event != want {
			t.Fatalf("python client: %+v, want a %q event", e, want)
		}
		return e
	case <-time.After(authPyGuard):
		t.Fatalf("python client printed no %q line within %v", want, authPyGuard)
	}
	return authPyEvent{}
}

// authPyEcho connects, has "hello" echoed and closes with 1000.
func authPyEcho(t *testing.T, url string, hdr map[string]string) {
	t.Helper()
	ev := startAuthPy(t, url, hdr, "close")
	authPyNext(t, ev, "open")
	if e := authPyNext(t, ev, "echo"); e.Text != "hello" {
		t.Errorf("echo %q, want \"hello\"", e.Text)
	}
	if e := authPyNext(t, ev, "closed"); e.Code != 1000 {
		t.Errorf("close reply %d %q, want 1000", e.Code, e.Reason)
	}
}

// authPyRefused connects and returns the refusal.
func authPyRefused(t *testing.T, url string, hdr map[string]string) authPyEvent {
	t.Helper()
	return authPyNext(t, startAuthPy(t, url, hdr, "close"), "refused")
}

// TestAuthForward: auth.forward with a Go auth service. Allowed, the
// request reaches the backend with the body intact and the auth
// service's X-User (never the client's own), after the auth service was
// asked with the method, the original URI, no body and the chosen
// headers; denied (a 401 with its challenge, header and body; a 302 to a
// login page), the answer reaches the client as sent and nothing reaches
// the backend; an unreachable auth service gives 503 and a silent one
// 504. A Python websockets client is let through and refused (401) alike,
// and /metrics counts the refusals by reason.
func TestAuthForward(t *testing.T) {
	needBinary(t)
	be, beAddr := startRecBackend(t)
	svc := &authService{hang: make(chan struct{})}
	svcAddr := startBackend(t, svc)
	t.Cleanup(func() { close(svc.hang) }) // before the service shuts down
	g, _, a := admStart(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  be: {targets: ["http://%s"]}
routes:
  - name: fwd
    match: {path_prefix: /fwd}
    upstream: be
    auth:
      forward:
        url: http://%s/check?from=wsgate
        copy_response_headers: [X-User]
  - name: fwd-down
    match: {path_prefix: /down}
    upstream: be
    auth: {forward: {url: "http://%s/check"}}
  - name: fwd-slow
    match: {path_prefix: /slow}
    upstream: be
    auth: {forward: {url: "http://%s/slow", timeout: 300ms}}
admin: {addr: 127.0.0.1:0, token: "${%s}"}
`, beAddr, svcAddr, closedAddr(t), svcAddr, admTokenEnv))
	hc := httpClient()
	base := "http://" + g.Addr

	t.Run("allowed", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodPost, base+"/fwd/items?q=1", strings.NewReader("payload"))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer good")
		req.Header.Set("X-User", "mallory")
		req.Header.Set("X-Other", "from the client")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("POST /fwd/items: %d %.200q, want 200", resp.StatusCode, body)
		}
		got := decodeEcho(t, string(body))
		if got.Method != http.MethodPost || got.Path != "/fwd/items" || got.RawQuery != "q=1" || got.BodyLen != len("payload") {
			t.Errorf("backend got %s %s?%s with %d bytes, want POST /fwd/items?q=1 with 7", got.Method, got.Path, got.RawQuery, got.BodyLen)
		}
		if v := got.Header.Values("X-User"); len(v) != 1 || v[0] != "alice" {
			t.Errorf("backend X-User %q, want the auth service's [alice] only", v)
		}
		if v := got.Header.Values("X-Other"); len(v) != 1 || v[0] != "from the client" {
			t.Errorf("backend X-Other %q, want the client's own (X-Other is not in copy_response_headers)", v)
		}
		asked := svc.last(t)
		for _, c := range []struct{ name, got, want string }{
			{"method", asked.Method, http.MethodPost},
			{"URI", asked.URI, "/check?from=wsgate"},
			{"X-Forwarded-Method", asked.Header.Get("X-Forwarded-Method"), http.MethodPost},
			{"X-Forwarded-Uri", asked.Header.Get("X-Forwarded-Uri"), "/fwd/items?q=1"},
			{"X-Original-Uri", asked.Header.Get("X-Original-Uri"), "/fwd/items?q=1"},
			{"X-Forwarded-Host", asked.Header.Get("X-Forwarded-Host"), g.Addr},
			{"X-Forwarded-For", asked.Header.Get("X-Forwarded-For"), "127.0.0.1"},
			{"Authorization", asked.Header.Get("Authorization"), "Bearer good"},
			{"X-User", asked.Header.Get("X-User"), ""},
			{"X-Request-Id", asked.Header.Get("X-Request-Id"), got.Header.Get("X-Request-Id")},
		} {
			if c.got != c.want {
				t.Errorf("auth service asked with %s %q, want %q", c.name, c.got, c.want)
			}
		}
		if asked.BodyLen != 0 || asked.Header.Get("X-Request-Id") == "" {
			t.Errorf("auth service got %d body bytes and request id %q; want none and the backend's", asked.BodyLen, asked.Header.Get("X-Request-Id"))
		}
	})

	for _, tc := range []struct {
		name, path string
		hdr        map[string]string
		status     int
		body       string
		header     map[string]string
	}{
		{"denied", "/fwd/items", map[string]string{"X-User": "alice"}, http.StatusUnauthorized, "login required\n",
			map[string]string{"WWW-Authenticate": `Bearer realm="auth-test"`, "X-Auth-Reason": "no-credentials"}},
		{"login redirect", "/fwd/page", map[string]string{"Authorization": "Bearer redirect"}, http.StatusFound, "",
			map[string]string{"Location": "https://login.example/?rd=/fwd/page"}},
		{"auth service down", "/down/x", map[string]string{"Authorization": "Bearer good"}, http.StatusServiceUnavailable, "", nil},
		{"auth service silent", "/slow/x", map[string]string{"Authorization": "Bearer good"}, http.StatusGatewayTimeout, "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := be.hits()
			resp, body := get(t, hc, base+tc.path, tc.hdr)
			if resp.StatusCode != tc.status {
				t.Fatalf("GET %s: %d %.200q, want %d", tc.path, resp.StatusCode, body, tc.status)
			}
			if tc.body != "" && body != tc.body {
				t.Errorf("GET %s: body %q, want the auth service's %q", tc.path, body, tc.body)
			}
			for k, v := range tc.header {
				if got := resp.Header.Get(k); got != v {
					t.Errorf("GET %s: %s %q, want %q", tc.path, k, got, v)
				}
			}
			if n := be.hits(); n != before {
				t.Errorf("the backend got %d requests, want none", n-before)
			}
		})
	}

	wsRefused := 0.0 // handshakes the auth service refused
	t.Run("websocket", func(t *testing.T) {
		needPythonWebsockets(t)
		before := be.hits()
		authPyEcho(t, "ws://"+g.Addr+"/fwd/ws?room=1", map[string]string{"Authorization": "Bearer good", "X-User": "mallory"})
		seen := be.last(t)
		if seen.URI != "/fwd/ws?room=1" || !strings.EqualFold(seen.Header.Get("Upgrade"), "websocket") {
			t.Errorf("backend got %s Upgrade %q, want the handshake for /fwd/ws?room=1", seen.URI, seen.Header.Get("Upgrade"))
		}
		if v := seen.Header.Values("X-User"); len(v) != 1 || v[0] != "alice" {
			t.Errorf("backend handshake X-User %q, want [alice]", v)
		}
		if asked := svc.last(t); asked.Method != http.MethodGet || asked.Header.Get("X-Forwarded-Uri") != "/fwd/ws?room=1" {
			t.Errorf("auth service asked %s %q, want GET /fwd/ws?room=1", asked.Method, asked.Header.Get("X-Forwarded-Uri"))
		}
		if n := be.hits() - before; n != 1 {
			t.Errorf("backend got %d requests, want the handshake only", n)
		}

		e := authPyRefused(t, "ws://"+g.Addr+"/fwd/ws", map[string]string{"Authorization": "Bearer bad"})
		wsRefused++
		if e.Status != http.StatusUnauthorized || e.Headers["www-authenticate"] != `Bearer realm="auth-test"` {
			t.Errorf("refused with %d, WWW-Authenticate %q; want the auth service's 401 and challenge", e.Status, e.Headers["www-authenticate"])
		}
		if n := be.hits() - before; n != 1 {
			t.Errorf("backend got %d requests, want the first handshake only", n)
		}
	})

	wants := []metWant{
		{"wsgate_http_auth_rejected_total", metLabels("route", "fwd", "reason", "forward_denied"), 2 + wsRefused},
		{"wsgate_http_auth_rejected_total", metLabels("route", "fwd-down", "reason", "forward_unavailable"), 1},
		{"wsgate_http_auth_rejected_total", metLabels("route", "fwd-slow", "reason", "forward_unavailable"), 1},
	}
	if wsRefused > 0 {
		wants = append(wants,
			metWant{"wsgate_websocket_handshake_refusals_total", metLabels("route", "fwd", "status", "401"), wsRefused},
			metWant{"wsgate_websocket_handshakes_total", metLabels("route", "fwd"), 1})
	}
	metWait(t, a, "the refusals counted", wants...)
}

// authJWT is a gateway with auth.jwt routes and the keys for them.
type authJWT struct {
	g        *gw
	a        *admAPI
	be       *recBackend
	ed       ed25519.PrivateKey // in ed.pem
	ec       *ecdsa.PrivateKey  // in ec.pem
	jwks     ed25519.PrivateKey // in jwks.json, kid "k1"
	stranger ed25519.PrivateKey // in no file
}

const (
	authIssuer   = "https://issuer.test"
	authAudience = "wsgate-test"
)

// startAuthJWT writes the keys and starts a gateway with four auth.jwt
// routes: /h (Authorization header, issuer, audience, claims_to_headers),
// /q (query:access_token), /c (cookie:session) and /k (a JWKS file).
func startAuthJWT(t *testing.T) *authJWT {
	t.Helper()
	needBinary(t)
	s := &authJWT{}
	dir := t.TempDir()
	edPub, edPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s.ed = edPriv
	if s.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	jwksPub, jwksPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s.jwks = jwksPriv
	if _, s.stranger, err = ed25519.GenerateKey(rand.Reader); err != nil {
		t.Fatal(err)
	}
	writePub := func(name string, pub any) string {
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, name)
		writeFile(t, path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
		return path
	}
	edPEM := writePub("ed.pem", edPub)
	ecPEM := writePub("ec.pem", &s.ec.PublicKey)
	jwksFile := filepath.Join(dir, "jwks.json")
	set, err := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "OKP", "crv": "Ed25519", "kid": "k1", "alg": "EdDSA", "use": "sig",
		"x": base64.RawURLEncoding.EncodeToString(jwksPub),
	}}})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, jwksFile, set)

	var beAddr string
	s.be, beAddr = startRecBackend(t)
	s.g, _, s.a = admStart(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  be: {targets: ["http://%[1]s"]}
routes:
  - name: jwt-header
    match: {path_prefix: /h}
    upstream: be
    auth:
      jwt:
        keys: [%[2]s, %[3]s]
        issuer: %[5]s
        audience: %[6]s
        claims_to_headers: {sub: X-User, roles: X-Roles}
  - name: jwt-query
    match: {path_prefix: /q}
    upstream: be
    auth:
      jwt: {keys: [%[2]s], audience: %[6]s, from: "query:access_token"}
  - name: jwt-cookie
    match: {path_prefix: /c}
    upstream: be
    auth:
      jwt: {keys: [%[2]s], audience: %[6]s, from: "cookie:session", claims_to_headers: {sub: X-User}}
  - name: jwt-jwks
    match: {path_prefix: /k}
    upstream: be
    auth:
      jwt: {jwks: %[4]s, audience: %[6]s}
admin: {addr: 127.0.0.1:0, token: "${%[7]s}"}
`, beAddr, yamlQuote(edPEM), yamlQuote(ecPEM), yamlQuote(jwksFile), yamlQuote(authIssuer), yamlQuote(authAudience), admTokenEnv))
	return s
}

// authClaims are valid claims for the gateway of startAuthJWT: sub
// alice, two roles, expiring after ttl (before now when negative).
func authClaims(ttl time.Duration) jwt.MapClaims {
	now := time.Now()
	return jwt.MapClaims{
		"iss":   authIssuer,
		"aud":   authAudience,
		"sub":   "alice",
		"roles": []string{"admin", "ops"},
		"iat":   now.Unix(),
		"exp":   now.Add(ttl).Unix(),
	}
}

// authSign signs claims with key (Ed25519: EdDSA, ECDSA: ES256), with the
// header kid when not "".
func authSign(t *testing.T, key any, kid string, claims jwt.MapClaims) string {
	t.Helper()
	var m jwt.SigningMethod
	switch key.(type) {
	case ed25519.PrivateKey:
		m = jwt.SigningMethodEdDSA
	case *ecdsa.PrivateKey:
		m = jwt.SigningMethodES256
	default:
		t.Fatalf("no signing method for %T", key)
	}
	tok := jwt.NewWithClaims(m, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// authWith returns claims with one claim changed.
func authWith(c jwt.MapClaims, k string, v any) jwt.MapClaims {
	c[k] = v
	return c
}

// TestAuthJWT: auth.jwt with keys made here, through the real binary.
// Tokens in the Authorization header (EdDSA and ES256 keys in two PEM
// files), a cookie and the query string pass, for plain requests and for
// Python websockets handshakes; claims_to_headers replace the client's
// own X-User; a query token is gone from the URI the backend gets and
// from every log line. No token, a bad signature, a wrong audience or
// issuer, an expired token get 401 with RFC 6750's challenge and nothing
// reaches the backend. A JWKS file verifies tokens by kid. /metrics
// counts the refusals by reason.
func TestAuthJWT(t *testing.T) {
	s := startAuthJWT(t)
	hc := httpClient()
	base := "http://" + s.g.Addr
	good := authSign(t, s.ed, "", authClaims(time.Hour))
	queryTokens := []string{good}
	// The refusals /metrics must count: by route and reason, and the
	// refused handshakes by route.
	rejected := map[[2]string]float64{}
	refused := map[string]float64{}

	t.Run("header", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			auth string
			want int
			// challenge: the WWW-Authenticate of a 401.
			challenge string
			reason    string
		}{
			{"EdDSA", "Bearer " + good, http.StatusOK, "", ""},
			{"ES256", "Bearer " + authSign(t, s.ec, "", authClaims(time.Hour)), http.StatusOK, "", ""},
			{"no token", "", http.StatusUnauthorized, `Bearer realm="wsgate"`, "jwt_missing"},
			{"bad signature", "Bearer " + authSign(t, s.stranger, "", authClaims(time.Hour)), http.StatusUnauthorized,
				`Bearer realm="wsgate", error="invalid_token", error_description="bad signature"`, "jwt_invalid"},
			{"wrong audience", "Bearer " + authSign(t, s.ed, "", authWith(authClaims(time.Hour), "aud", "another-service")), http.StatusUnauthorized,
				`Bearer realm="wsgate", error="invalid_token", error_description="wrong audience"`, "jwt_invalid"},
			{"wrong issuer", "Bearer " + authSign(t, s.ed, "", authWith(authClaims(time.Hour), "iss", "https://evil.test")), http.StatusUnauthorized,
				`Bearer realm="wsgate", error="invalid_token", error_description="wrong issuer"`, "jwt_invalid"},
			{"expired", "Bearer " + authSign(t, s.ed, "", authClaims(-time.Minute)), http.StatusUnauthorized,
				`Bearer realm="wsgate", error="invalid_token", error_description="token expired"`, "jwt_expired"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				before := s.be.hits()
				hdr := map[string]string{"X-User": "mallory", "X-Roles": "root"}
				if tc.auth != "" {
					hdr["Authorization"] = tc.auth
				}
				resp, body := get(t, hc, base+"/h/x", hdr)
				if resp.StatusCode != tc.want {
					t.Fatalf("GET /h/x: %d %.200q, want %d", resp.StatusCode, body, tc.want)
				}
				if tc.want != http.StatusOK {
					rejected[[2]string{"jwt-header", tc.reason}]++
					if got := resp.Header.Get("WWW-Authenticate"); got != tc.challenge {
						t.Errorf("WWW-Authenticate %q, want %q", got, tc.challenge)
					}
					if n := s.be.hits() - before; n != 0 {
						t.Errorf("the backend got %d requests, want none", n)
					}
					return
				}
				got := decodeEcho(t, body)
				if v := got.Header.Values("X-User"); len(v) != 1 || v[0] != "alice" {
					t.Errorf("backend X-User %q, want the token's [alice]", v)
				}
				if v := got.Header.Values("X-Roles"); len(v) != 1 || v[0] != "admin, ops" {
					t.Errorf("backend X-Roles %q, want [\"admin, ops\"]", v)
				}
			})
		}
	})

	t.Run("query", func(t *testing.T) {
		resp, body := get(t, hc, base+"/q/items?a=1&access_token="+good+"&b=2", nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /q/items: %d %.200q", resp.StatusCode, body)
		}
		if got := decodeEcho(t, body); got.Path != "/q/items" || got.RawQuery != "a=1&b=2" {
			t.Errorf("backend got %s?%s, want /q/items?a=1&b=2 (the token removed)", got.Path, got.RawQuery)
		}
		if resp, body := get(t, hc, base+"/q/items?a=1", nil); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("GET /q/items without a token: %d %.200q, want 401", resp.StatusCode, body)
		}
		rejected[[2]string{"jwt-query", "jwt_missing"}]++
	})

	t.Run("cookie", func(t *testing.T) {
		resp, body := get(t, hc, base+"/c/x", map[string]string{"Cookie": "theme=dark; session=" + good, "X-User": "mallory"})
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /c/x: %d %.200q", resp.StatusCode, body)
		}
		if v := decodeEcho(t, body).Header.Values("X-User"); len(v) != 1 || v[0] != "alice" {
			t.Errorf("backend X-User %q, want [alice]", v)
		}
		// The token in the header does not count on a cookie route.
		if resp, body := get(t, hc, base+"/c/x", map[string]string{"Authorization": "Bearer " + good}); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("GET /c/x with the token in Authorization: %d %.200q, want 401", resp.StatusCode, body)
		}
		rejected[[2]string{"jwt-cookie", "jwt_missing"}]++
	})

	t.Run("jwks", func(t *testing.T) {
		for _, tc := range []struct {
			name, token string
			want        int
		}{
			{"kid k1", authSign(t, s.jwks, "k1", authClaims(time.Hour)), http.StatusOK},
			{"no kid", authSign(t, s.jwks, "", authClaims(time.Hour)), http.StatusOK},
			{"kid k1 by a stranger", authSign(t, s.stranger, "k1", authClaims(time.Hour)), http.StatusUnauthorized},
			{"unknown kid", authSign(t, s.jwks, "k2", authClaims(time.Hour)), http.StatusUnauthorized},
			{"a PEM key of another route", good, http.StatusUnauthorized},
		} {
			t.Run(tc.name, func(t *testing.T) {
				resp, body := get(t, hc, base+"/k/x", map[string]string{"Authorization": "Bearer " + tc.token})
				if tc.want != http.StatusOK {
					rejected[[2]string{"jwt-jwks", "jwt_invalid"}]++
				}
				if resp.StatusCode != tc.want {
					t.Errorf("GET /k/x: %d %.200q (WWW-Authenticate %q), want %d", resp.StatusCode, body, resp.Header.Get("WWW-Authenticate"), tc.want)
				}
			})
		}
	})

	t.Run("websocket", func(t *testing.T) {
		needPythonWebsockets(t)
		ws := "ws://" + s.g.Addr
		t.Run("header", func(t *testing.T) {
			authPyEcho(t, ws+"/h/ws", map[string]string{"Authorization": "Bearer " + good, "X-User": "mallory"})
			if v := s.be.last(t).Header.Values("X-User"); len(v) != 1 || v[0] != "alice" {
				t.Errorf("backend handshake X-User %q, want [alice]", v)
			}
		})
		t.Run("query", func(t *testing.T) {
			tok := authSign(t, s.ed, "", authClaims(2*time.Hour))
			queryTokens = append(queryTokens, tok)
			authPyEcho(t, ws+"/q/chat?room=7&access_token="+tok, nil)
			if seen := s.be.last(t); seen.URI != "/q/chat?room=7" {
				t.Errorf("backend handshake for %q, want /q/chat?room=7 (the token removed)", seen.URI)
			}
		})
		t.Run("cookie", func(t *testing.T) {
			authPyEcho(t, ws+"/c/ws", map[string]string{"Cookie": "session=" + good})
		})
		t.Run("refused", func(t *testing.T) {
			before := s.be.hits()
			bad := authSign(t, s.ed, "", authWith(authClaims(time.Hour), "aud", "another-service"))
			queryTokens = append(queryTokens, bad)
			e := authPyRefused(t, ws+"/q/chat?access_token="+bad, nil)
			rejected[[2]string{"jwt-query", "jwt_invalid"}]++
			refused["jwt-query"]++
			want := `Bearer realm="wsgate", error="invalid_token", error_description="wrong audience"`
			if e.Status != http.StatusUnauthorized || e.Headers["www-authenticate"] != want {
				t.Errorf("refused with %d, WWW-Authenticate %q; want 401 and %q", e.Status, e.Headers["www-authenticate"], want)
			}
			if e := authPyRefused(t, ws+"/h/ws", nil); e.Status != http.StatusUnauthorized {
				t.Errorf("no token: refused with %d, want 401", e.Status)
			}
			rejected[[2]string{"jwt-header", "jwt_missing"}]++
			refused["jwt-header"]++
			if n := s.be.hits() - before; n != 0 {
				t.Errorf("the backend got %d requests, want none", n)
			}
		})
	})

	var wants []metWant
	for k, v := range rejected {
		wants = append(wants, metWant{"wsgate_http_auth_rejected_total", metLabels("route", k[0], "reason", k[1]), v})
	}
	for route, v := range refused {
		wants = append(wants, metWant{"wsgate_websocket_handshake_refusals_total", metLabels("route", route, "status", "401"), v})
	}
	metWait(t, s.a, "the refusals counted", wants...)
	// A token from the query is never logged: wsgate logs the URI
	// without it.
	logs := s.g.logs.String()
	for _, tok := range queryTokens {
		if strings.Contains(logs, tok) {
			t.Errorf("a token sent in the query appears in wsgate's log")
		}
	}
	if !strings.Contains(logs, `"uri":"/q/items?a=1&b=2"`) {
		t.Errorf("no access log line with the URI /q/items?a=1&b=2 (the token removed)")
	}
}

// TestAuthJWTExpiry: a WebSocket session opened with a token lives until
// the token's exp, then the Python websockets client gets 4001 "token
// expired" (not before exp) and the backend 1001, counted in /metrics;
// a session on the same route with a token valid for an hour goes on
// relaying.
func TestAuthJWTExpiry(t *testing.T) {
	needPythonWebsockets(t)
	s := startAuthJWT(t)
	ws := "ws://" + s.g.Addr

	long := dialWS(t, nil, ws+"/q/long?access_token="+authSign(t, s.ed, "", authClaims(time.Hour)), nil)
	echoOnce(t, long, websocket.TextMessage, []byte("before"))

	// exp has a resolution of a second: the start of a second 3 to 4 s
	// from now, time for Python to start and open the session.
	exp := time.Now().Truncate(time.Second).Add(4 * time.Second)
	claims := authClaims(time.Hour)
	claims["exp"] = exp.Unix()
	ev := startAuthPy(t, ws+"/q/expiring?access_token="+authSign(t, s.ed, "", claims), nil, "hold")
	authPyNext(t, ev, "open")
	if e := authPyNext(t, ev, "echo"); e.Text != "hello" {
		t.Fatalf("echo %q, want \"hello\"", e.Text)
	}
	if time.Now().After(exp) {
		t.Fatalf("the session was not open and relaying before the token's exp %v", exp.Format(time.StampMilli))
	}
	e := authPyNext(t, ev, "closed")
	if e.Code != 4001 || e.Reason != "token expired" {
		t.Errorf("client got close %d %q, want 4001 \"token expired\"", e.Code, e.Reason)
	}
	at := time.Unix(0, int64(e.T*1e9))
	if at.Before(exp) {
		t.Errorf("client got its close at %v, before the token's exp %v", at.Format(time.StampMicro), exp.Format(time.StampMicro))
	}
	t.Logf("the client got its close %v after the token's exp", at.Sub(exp).Round(time.Millisecond))
	if ce := s.be.nextClose(t, "/q/expiring"); ce.Code != websocket.CloseGoingAway {
		t.Errorf("backend got close %d %q, want 1001", ce.Code, ce.Text)
	}

	echoOnce(t, long, websocket.TextMessage, []byte("after"))
	q := metLabels("route", "jwt-query")
	metWait(t, s.a, "the expiry counted",
		metWant{"wsgate_websocket_token_expired_total", q, 1},
		metWant{"wsgate_websocket_sessions_ended_total", metLabels("route", "jwt-query", "code", "4001", "closed_by", "wsgate"), 1},
		metWant{"wsgate_websocket_sessions_ended_total", q, 1},
		metWant{"wsgate_websocket_sessions", q, 1},
	)
}
