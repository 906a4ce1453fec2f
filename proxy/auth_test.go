package proxy

import (
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/wsgate/wsgate/routes"
)

// authService is a test auth service: it lets through requests whose
// Authorization is "Bearer good" (answering X-User: alice), answers 401
// with a body otherwise, and records what it was asked.
type authService struct {
	mu   sync.Mutex
	seen []*http.Request // guarded by mu
}

func (a *authService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(strings.NewReader(string(body)))
	a.mu.Lock()
	a.seen = append(a.seen, r)
	a.mu.Unlock()
	switch r.Header.Get("Authorization") {
	case "Bearer good":
		w.Header().Set("X-User", "alice")
		w.Header().Set("X-Other", "not copied")
		w.WriteHeader(http.StatusNoContent)
	case "Bearer redirect":
		http.Redirect(w, r, "https://login.example.com/?next="+r.Header.Get("X-Forwarded-Uri"), http.StatusFound)
	default:
		w.Header().Set("WWW-Authenticate", `Bearer realm="test"`)
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, "who are you?")
	}
}

func (a *authService) last(t *testing.T) *http.Request {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.seen) == 0 {
		t.Fatal("the auth service was not asked")
	}
	return a.seen[len(a.seen)-1]
}

// TestForwardAuth: the auth service is asked with the original method and
// URI, no body and the chosen headers; 2xx lets the request through with
// the chosen answer headers (and never the client's own values of them);
// any other answer reaches the client as the auth service sent it; an
// auth service that cannot be reached gives 503 and nothing is forwarded.
// WebSocket handshakes alike, before the backend is dialled.
func TestForwardAuth(t *testing.T) {
	auth := &authService{}
	authAddr := startBackend(t, auth)
	backend, hits := startCountingBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if websocket.IsWebSocketUpgrade(r) {
			echoWS(t).ServeHTTP(w, r)
			return
		}
		io.WriteString(w, "user="+r.Header.Get("X-User")+" other="+r.Header.Get("X-Other")+" method="+r.Method)
	}))
	r := wsRoute(testUpstream(backend))
	r.Auth = &routes.Auth{Forward: &routes.ForwardAuth{
		URL: "http://" + authAddr + "/check?app=1", Timeout: 5 * time.Second,
		CopyRequestHeaders:  []string{"Authorization", "Cookie"},
		CopyResponseHeaders: []string{"X-User"},
	}}
	p := startProxy(t, r)

	do := func(method, auth, body string, hdr map[string]string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(method, "http://"+p.addr+"/app/page?q=1", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
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

	t.Run("allowed", func(t *testing.T) {
		resp, body := do("POST", "Bearer good", "payload", map[string]string{"X-User": "mallory", "Cookie": "s=1", "X-Secret": "no"})
		if resp.StatusCode != 200 || body != "user=alice other= method=POST" {
			t.Fatalf("got %d %q, want 200 with X-User alice (not the client's) and no X-Other", resp.StatusCode, body)
		}
		got := auth.last(t)
		if got.Method != "POST" || got.URL.RequestURI() != "/check?app=1" {
			t.Errorf("auth service asked %s %s, want POST /check?app=1", got.Method, got.URL.RequestURI())
		}
		for k, want := range map[string]string{
			"Authorization": "Bearer good", "Cookie": "s=1", "X-Secret": "",
			"X-Forwarded-Method": "POST", "X-Forwarded-Uri": "/app/page?q=1", "X-Original-Uri": "/app/page?q=1",
			"X-Forwarded-For": "127.0.0.1", "X-Forwarded-Proto": "http", "X-Forwarded-Host": p.addr,
		} {
			if v := got.Header.Get(k); v != want {
				t.Errorf("auth request %s = %q, want %q", k, v, want)
			}
		}
		if b, _ := io.ReadAll(got.Body); len(b) != 0 {
			t.Errorf("auth request carried a body %q", b)
		}
	})
	t.Run("denied", func(t *testing.T) {
		before := hits.Load()
		resp, body := do("GET", "Bearer bad", "", nil)
		if resp.StatusCode != 401 || body != "who are you?" || resp.Header.Get("WWW-Authenticate") != `Bearer realm="test"` {
			t.Fatalf("got %d %q (WWW-Authenticate %q), want the auth service's 401", resp.StatusCode, body, resp.Header.Get("WWW-Authenticate"))
		}
		if n := hits.Load() - before; n != 0 {
			t.Errorf("denied requests reached the backend %d times", n)
		}
	})
	t.Run("redirect", func(t *testing.T) {
		req, _ := http.NewRequest("GET", "http://"+p.addr+"/app/page?q=1", nil)
		req.Header.Set("Authorization", "Bearer redirect")
		resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "https://login.example.com/?next=/app/page?q=1" {
			t.Errorf("got %d Location %q, want the auth service's 302", resp.StatusCode, resp.Header.Get("Location"))
		}
	})
	t.Run("websocket", func(t *testing.T) {
		before := hits.Load()
		d := websocket.Dialer{}
		_, resp, err := d.Dial("ws://"+p.addr+"/ws", http.Header{"Authorization": {"Bearer bad"}})
		if err == nil || resp == nil || resp.StatusCode != 401 {
			t.Fatalf("handshake without a good token: %v, %v; want 401", err, resp)
		}
		if n := hits.Load() - before; n != 0 {
			t.Errorf("a denied handshake reached the backend %d times", n)
		}
		c, _, err := d.Dial("ws://"+p.addr+"/ws", http.Header{"Authorization": {"Bearer good"}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
			t.Fatal(err)
		}
		if _, m, err := c.ReadMessage(); err != nil || string(m) != "hi" {
			t.Fatalf("echo %q, %v", m, err)
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dead := ln.Addr().String()
		ln.Close()
		r2 := wsRoute(testUpstream(backend))
		r2.Auth = &routes.Auth{Forward: &routes.ForwardAuth{URL: "http://" + dead + "/", Timeout: 5 * time.Second}}
		p2 := startProxy(t, r2)
		before := hits.Load()
		resp, err := http.Get("http://" + p2.addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("auth service down: status %d, want 503", resp.StatusCode)
		}
		if n := hits.Load() - before; n != 0 {
			t.Errorf("with the auth service down, %d requests reached the backend", n)
		}
	})
}

// TestRequestRateLimit: limits.requests_per_second_per_ip answers 429
// with Retry-After past the burst, per client address, before the
// backend; handshakes count too.
func TestRequestRateLimit(t *testing.T) {
	backend, hits := startCountingBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if websocket.IsWebSocketUpgrade(r) {
			echoWS(t).ServeHTTP(w, r)
			return
		}
		io.WriteString(w, "ok")
	}))
	r := wsRoute(testUpstream(backend))
	r.Limits = routes.Limits{RequestsPerSecondPerIP: 1.0 / 60, RequestBurst: 2}
	p := startProxy(t, r)
	get := func() *http.Response {
		t.Helper()
		resp, err := http.Get("http://" + p.addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	for i := range 2 {
		if resp := get(); resp.StatusCode != 200 {
			t.Fatalf("request %d within the burst: %d", i+1, resp.StatusCode)
		}
	}
	before := hits.Load()
	resp := get()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || resp.Header.Get("Retry-After") == "0" {
		t.Fatalf("third request: %d Retry-After %q, want 429 with Retry-After ≥ 1", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if _, resp, err := (&websocket.Dialer{}).Dial("ws://"+p.addr+"/", nil); err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("handshake over the rate: %v %v, want 429", err, resp)
	}
	if n := hits.Load() - before; n != 0 {
		t.Errorf("%d requests over the rate reached the backend", n)
	}
	var rl int64
	for _, st := range p.h.Stats() {
		rl += st.RateLimited
	}
	if rl != 2 {
		t.Errorf("RateLimited = %d, want 2", rl)
	}
}
