package proxy

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/golang-jwt/jwt/v5"

	"github.com/wsgate/wsgate/routes"
	"github.com/wsgate/wsgate/upstream"
)

// jwtKeys are the test's signing keys: one the route trusts, one it does
// not.
type jwtKeys struct {
	good, bad ed25519.PrivateKey
	ec        *ecdsa.PrivateKey
}

func newJWTKeys(t testing.TB) *jwtKeys {
	_, good, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, bad, _ := ed25519.GenerateKey(rand.Reader)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	return &jwtKeys{good: good, bad: bad, ec: ec}
}

// sign makes a token with claims, signed by key (EdDSA or ES256), with
// the header kid when not empty.
func sign(t testing.TB, key crypto.Signer, kid string, claims jwt.MapClaims) string {
	t.Helper()
	method := jwt.SigningMethod(jwt.SigningMethodEdDSA)
	if _, ok := key.(*ecdsa.PrivateKey); ok {
		method = jwt.SigningMethodES256
	}
	tok := jwt.NewWithClaims(method, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func jwtRoute(up string, k *jwtKeys, from string) *routes.Route {
	r := wsRoute(testUpstream(up))
	kind, name, _ := strings.Cut(from, ":")
	if kind == "header" && name == "" {
		name = "Authorization"
	}
	r.Auth = &routes.Auth{JWT: &routes.JWT{
		Keys:   []crypto.PublicKey{k.good.Public(), k.ec.Public()},
		Issuer: "https://issuer.test", Audience: "chat",
		FromKind: kind, FromName: name,
		Algorithms: []string{"EdDSA", "ES256"},
		ClaimsToHeaders: []routes.ClaimHeader{
			{Claim: "sub", Header: "X-User"}, {Claim: "roles", Header: "X-Roles"},
		},
		ExpiryCode: 4001, ExpiryReason: "token expired",
	}}
	return r
}

func validClaims(exp time.Duration) jwt.MapClaims {
	return jwt.MapClaims{
		"iss": "https://issuer.test", "aud": "chat", "sub": "alice",
		"roles": []string{"admin", "dev"}, "exp": time.Now().Add(exp).Unix(),
	}
}

// TestJWT: tokens from the header, a cookie and the query are verified
// (signature, issuer, audience, exp); claims become headers (the client's
// own values of them never pass); a token in the query is removed from
// the URI the backend sees; refusals are 401 with WWW-Authenticate and
// reach nothing behind wsgate.
func TestJWT(t *testing.T) {
	k := newJWTKeys(t)
	backend, hits := startCountingBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "user=%s roles=%s uri=%s", r.Header.Get("X-User"), r.Header.Get("X-Roles"), r.URL.RequestURI())
	}))
	get := func(t *testing.T, addr, path string, hdr map[string]string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+addr+path, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	good := sign(t, k.good, "", validClaims(time.Hour))
	for _, c := range []struct {
		from string
		req  func(tok string) (string, map[string]string)
		uri  string
	}{
		{"header", func(tok string) (string, map[string]string) {
			return "/p?x=1", map[string]string{"Authorization": "Bearer " + tok}
		}, "/p?x=1"},
		{"cookie:session", func(tok string) (string, map[string]string) {
			return "/p?x=1", map[string]string{"Cookie": "a=b; session=" + tok}
		}, "/p?x=1"},
		{"query:access_token", func(tok string) (string, map[string]string) {
			return "/p?x=1&access_token=" + tok + "&y=%2F", nil
		}, "/p?x=1&y=%2F"},
	} {
		t.Run(c.from, func(t *testing.T) {
			p := startProxy(t, jwtRoute(backend, k, c.from))
			path, hdr := c.req(good)
			if hdr == nil {
				hdr = map[string]string{}
			}
			hdr["X-User"] = "mallory"
			resp, body := get(t, p.addr, path, hdr)
			if want := "user=alice roles=admin, dev uri=" + c.uri; resp.StatusCode != 200 || body != want {
				t.Fatalf("good token: %d %q, want 200 %q", resp.StatusCode, body, want)
			}
			if c.from == "query:access_token" {
				if logs := p.logs.String(); strings.Contains(logs, good) || !strings.Contains(logs, `uri="/p?x=1&y=%2F"`) {
					t.Errorf("the access log has the token, or not the URI without it:\n%s", logs)
				}
			}
			before := hits.Load()
			for _, bad := range []struct {
				name, tok, desc string
			}{
				{"bad signature", sign(t, k.bad, "", validClaims(time.Hour)), "bad signature"},
				{"wrong audience", sign(t, k.good, "", func() jwt.MapClaims { c := validClaims(time.Hour); c["aud"] = "other"; return c }()), "wrong audience"},
				{"wrong issuer", sign(t, k.good, "", func() jwt.MapClaims { c := validClaims(time.Hour); c["iss"] = "evil"; return c }()), "wrong issuer"},
				{"expired", sign(t, k.good, "", validClaims(-time.Minute)), "token expired"},
				{"malformed", "not.a.token", "malformed token"},
			} {
				path, hdr := c.req(bad.tok)
				resp, body := get(t, p.addr, path, hdr)
				wantChallenge := `Bearer realm="wsgate", error="invalid_token", error_description="` + bad.desc + `"`
				if resp.StatusCode != 401 || strings.TrimSpace(body) != bad.desc || resp.Header.Get("WWW-Authenticate") != wantChallenge {
					t.Errorf("%s: %d %q WWW-Authenticate %q; want 401 %q %q", bad.name, resp.StatusCode, body, resp.Header.Get("WWW-Authenticate"), bad.desc, wantChallenge)
				}
			}
			resp, _ = get(t, p.addr, "/p", nil)
			if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") != `Bearer realm="wsgate"` {
				t.Errorf("no token: %d %q, want 401 with a bare challenge", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
			}
			if n := hits.Load() - before; n != 0 {
				t.Errorf("%d refused requests reached the backend", n)
			}
			var rej [len(AuthReasons)]int64
			for _, st := range p.h.Stats() {
				for i, v := range st.AuthRejected {
					rej[i] += v
				}
			}
			if rej[authJWTMissing] != 1 || rej[authJWTExpired] != 1 || rej[authJWTInvalid] != 4 {
				t.Errorf("auth rejections %v, want 1 missing, 1 expired, 4 invalid", rej)
			}
		})
	}
}

// TestJWKSURL: keys come from a JWK Set URL; a token names its key by
// kid, and one signed with an unknown key is refused.
func TestJWKSURL(t *testing.T) {
	k := newJWTKeys(t)
	pub := k.good.Public().(ed25519.PublicKey)
	jwks := fmt.Sprintf(`{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","alg":"EdDSA","use":"sig","x":%q}]}`,
		base64.RawURLEncoding.EncodeToString(pub))
	jwksAddr := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, jwks)
	}))
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	r := jwtRoute(backend, k, "header")
	r.Auth.JWT.Keys = nil
	r.Auth.JWT.JWKSURL = "http://" + jwksAddr + "/jwks.json"
	r.Auth.JWT.JWKSRefresh = time.Hour
	p := startProxy(t, r)
	try := func(tok string) int {
		req, _ := http.NewRequest("GET", "http://"+p.addr+"/", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// The first fetch runs in the background: until it lands, 401.
	waitFor(t, "the JWK Set to be fetched", 10*time.Second, func() bool {
		return try(sign(t, k.good, "k1", validClaims(time.Hour))) == 200
	})
	if code := try(sign(t, k.bad, "k1", validClaims(time.Hour))); code != 401 {
		t.Errorf("token signed by another key under kid k1: %d, want 401", code)
	}
	if code := try(sign(t, k.good, "k2", validClaims(time.Hour))); code != 401 {
		t.Errorf("token naming an unknown kid: %d, want 401", code)
	}
}

// TestJWTExpiryClosesSession: a WebSocket opened with a token is closed
// with 4001 "token expired" when the token's exp passes; the backend
// gets 1001; a session whose token lives on stays open.
func TestJWTExpiryClosesSession(t *testing.T) {
	k := newJWTKeys(t)
	backend := startBackend(t, echoWS(t))
	p := startProxy(t, jwtRoute(backend, k, "query:access_token"))
	d := websocket.Dialer{}
	// exp has a resolution of one second: the token expires at the start
	// of a second 2-3 s from now.
	exp := time.Now().Add(2 * time.Second).Truncate(time.Second).Add(time.Second)
	claims := validClaims(time.Hour)
	claims["exp"] = exp.Unix()
	c, _, err := d.Dial("ws://"+p.addr+"/ws?access_token="+sign(t, k.ec, "", claims), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	long, _, err := d.Dial("ws://"+p.addr+"/ws?access_token="+sign(t, k.good, "", validClaims(time.Hour)), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	if err := c.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, m, err := c.ReadMessage(); err != nil || string(m) != "hi" {
		t.Fatalf("echo %q %v", m, err)
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, _, err = c.ReadMessage()
	at := time.Now()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 4001 || ce.Text != "token expired" {
		t.Fatalf("read: %v, want close 4001 \"token expired\"", err)
	}
	if at.Before(exp) {
		t.Errorf("closed at %v, before the token's exp %v", at.Format(time.StampMilli), exp.Format(time.StampMilli))
	}
	t.Logf("closed %v after exp", at.Sub(exp).Round(time.Millisecond))
	if err := long.WriteMessage(websocket.TextMessage, []byte("still")); err != nil {
		t.Fatal(err)
	}
	if _, m, err := long.ReadMessage(); err != nil || string(m) != "still" {
		t.Fatalf("the session with a live token: %q %v", m, err)
	}
	var expired int64
	for _, st := range p.h.Registry().Stats() {
		expired += st.ClientActions.Expired
	}
	if expired != 1 {
		t.Errorf("expired sessions counted %d, want 1", expired)
	}
}

// TestJWKSFetchersFollowReloads: a JWK Set URL's background fetcher lives
// while a route of the current config uses it: reloads that change the URL
// stop the old one, so the goroutines do not pile up over reloads.
func TestJWKSFetchersFollowReloads(t *testing.T) {
	k := newJWTKeys(t)
	jwks := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"keys":[]}`)
	}))
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	up := testUpstream(backend)
	route := func(path string) *routes.Route {
		r := jwtRoute(backend, k, "header")
		r.Upstream = wsRoute(up).Upstream
		r.Auth.JWT.Keys = nil
		r.Auth.JWT.JWKSURL = "http://" + jwks + path
		r.Auth.JWT.JWKSRefresh = time.Hour
		return r
	}
	p := startProxy(t, route("/a.json"))
	p.reload(t, 0, []*upstream.Config{up}, route("/b.json"))
	base := runtime.NumGoroutine()
	for i := range 10 {
		p.reload(t, 0, []*upstream.Config{up}, route(fmt.Sprintf("/%d.json", i)))
	}
	p.h.jwksMu.Lock()
	n := len(p.h.jwks)
	_, last := p.h.jwks["http://"+jwks+"/9.json"]
	p.h.jwksMu.Unlock()
	if n != 1 || !last {
		t.Fatalf("%d fetchers after the reloads (last URL kept: %v), want only the current one", n, last)
	}
	waitFor(t, "the replaced fetchers' goroutines to end", 10*time.Second, func() bool {
		return runtime.NumGoroutine() <= base+2
	})
	p.reload(t, 0, []*upstream.Config{up}, wsRoute(up))
	p.h.jwksMu.Lock()
	n = len(p.h.jwks)
	p.h.jwksMu.Unlock()
	if n != 0 {
		t.Errorf("%d fetchers after a reload to a config without jwks, want 0", n)
	}
}
