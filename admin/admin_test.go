package admin

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/wsgate/wsgate/upstream"
)

func TestAuth(t *testing.T) {
	open := serve(t, New(testOptions(newFakeSessions())))
	o := testOptions(newFakeSessions())
	o.Token = "s3cret"
	locked := serve(t, New(o))

	tests := []struct {
		name   string
		locked bool
		method string
		path   string
		auth   string
		want   int
		// challenge is the WWW-Authenticate a 401 must carry.
		challenge string
	}{
		{"no token configured, no header", false, "GET", "/api/upstreams", "", 200, ""},
		{"no token configured, any header", false, "GET", "/api/upstreams", "Bearer whatever", 200, ""},
		{"missing", true, "GET", "/api/upstreams", "", 401, `Bearer realm="wsgate admin"`},
		{"wrong", true, "GET", "/api/upstreams", "Bearer nope", 401, `Bearer realm="wsgate admin", error="invalid_token"`},
		{"prefix of the token", true, "GET", "/api/upstreams", "Bearer s3cre", 401, `Bearer realm="wsgate admin", error="invalid_token"`},
		{"token plus more", true, "GET", "/api/upstreams", "Bearer s3cret2", 401, `Bearer realm="wsgate admin", error="invalid_token"`},
		{"other scheme", true, "GET", "/api/upstreams", "Basic czNjcmV0", 401, `Bearer realm="wsgate admin"`},
		{"scheme only", true, "GET", "/api/upstreams", "Bearer", 401, `Bearer realm="wsgate admin", error="invalid_token"`},
		{"right", true, "GET", "/api/upstreams", "Bearer s3cret", 200, ""},
		{"scheme case-insensitive", true, "GET", "/api/upstreams", "bearer s3cret", 200, ""},
		{"reload needs it", true, "POST", "/reload", "", 401, `Bearer realm="wsgate admin"`},
		{"metrics need it", true, "GET", "/metrics", "", 401, `Bearer realm="wsgate admin"`},
		{"stream needs it", true, "GET", "/api/stream", "", 401, `Bearer realm="wsgate admin"`},
		{"close needs it", true, "DELETE", "/api/sessions/a", "", 401, `Bearer realm="wsgate admin"`},
		{"unknown path needs it", true, "GET", "/nope", "", 401, `Bearer realm="wsgate admin"`},
		{"healthz exempt", true, "GET", "/healthz", "", 200, ""},
		{"readyz exempt", true, "GET", "/readyz", "", 200, ""},
		{"dashboard page exempt", true, "GET", "/", "", 200, ""},
		{"wrong token on exempt path", true, "GET", "/healthz", "Bearer nope", 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := open
			if tt.locked {
				srv = locked
			}
			var hdr []string
			if tt.auth != "" {
				hdr = []string{"Authorization", tt.auth}
			}
			r := do(t, srv, tt.method, tt.path, nil, hdr...)
			if r.status != tt.want {
				t.Fatalf("%s %s with %q: status %d, want %d (body %s)", tt.method, tt.path, tt.auth, r.status, tt.want, r.body)
			}
			if tt.want == 401 {
				if got := r.header.Get("WWW-Authenticate"); got != tt.challenge {
					t.Errorf("WWW-Authenticate %q, want %q", got, tt.challenge)
				}
				wantError(t, r, 401)
			}
		})
	}
}

func TestHostCheck(t *testing.T) {
	tests := []struct {
		host string
		want bool
	}{
		{"127.0.0.1", true},
		{"127.0.0.1:9901", true},
		{"[::1]:9901", true},
		{"[::1]", true},
		{"::1", true},
		{"10.1.2.3:9901", true},
		{"localhost", true},
		{"localhost:9901", true},
		{"LOCALHOST.:9901", true},
		{"admin.localhost:9901", true},
		{"evil.example", false},
		{"evil.example:9901", false},
		{"localhost.evil.example", false},
		{"127.0.0.1.nip.io", false},
		{"", false},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			if got := isLocalHost(tt.host); got != tt.want {
				t.Errorf("isLocalHost(%q) = %v, want %v", tt.host, got, tt.want)
			}
		})
	}

	t.Run("no token: other hosts refused", func(t *testing.T) {
		srv := serve(t, New(testOptions(newFakeSessions())))
		wantError(t, do(t, srv, "GET", "/api/upstreams", nil, "Host", "rebound.example:9901"), 403)
		wantError(t, do(t, srv, "GET", "/", nil, "Host", "rebound.example:9901"), 403)
		if r := do(t, srv, "GET", "/healthz", nil, "Host", "rebound.example:9901"); r.status != 200 {
			t.Errorf("GET /healthz with another Host: status %d, want 200", r.status)
		}
		if r := do(t, srv, "GET", "/api/upstreams", nil, "Host", "localhost:9901"); r.status != 200 {
			t.Errorf("GET /api/upstreams with Host localhost: status %d, want 200", r.status)
		}
	})
	t.Run("token: any host", func(t *testing.T) {
		o := testOptions(newFakeSessions())
		o.Token = "s3cret"
		srv := serve(t, New(o))
		if r := do(t, srv, "GET", "/api/upstreams", nil, "Host", "admin.example:9901", "Authorization", "Bearer s3cret"); r.status != 200 {
			t.Errorf("status %d, want 200 (body %s)", r.status, r.body)
		}
	})
}

func TestCrossOrigin(t *testing.T) {
	var reloads atomic.Int64
	o := testOptions(newFakeSessions())
	o.Reload = func() ReloadResult { reloads.Add(1); return ReloadResult{OK: true} }
	srv := serve(t, New(o))

	tests := []struct {
		name string
		hdr  []string
		want int
	}{
		{"no browser headers", nil, 200},
		{"same origin", []string{"Sec-Fetch-Site", "same-origin"}, 200},
		{"cross site", []string{"Sec-Fetch-Site", "cross-site"}, 403},
		{"other origin", []string{"Origin", "http://evil.example"}, 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := reloads.Load()
			r := do(t, srv, "POST", "/reload", nil, tt.hdr...)
			if r.status != tt.want {
				t.Fatalf("status %d, want %d (body %s)", r.status, tt.want, r.body)
			}
			ran := reloads.Load() != before
			if ran != (tt.want == 200) {
				t.Errorf("reload ran: %v, want %v", ran, tt.want == 200)
			}
			if tt.want == 403 {
				wantError(t, r, 403)
			}
		})
	}
}

func TestProbes(t *testing.T) {
	tests := []struct {
		name       string
		ready      func() (bool, string)
		wantStatus int
		wantBody   string
	}{
		{"ready", func() (bool, string) { return true, "" }, 200, "ok"},
		{"not ready", func() (bool, string) { return false, "draining" }, 503, "draining"},
		{"not ready, no reason", func() (bool, string) { return false, "" }, 503, "not ready"},
		{"no Ready function", nil, 200, "ok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := testOptions(newFakeSessions())
			o.Ready = tt.ready
			srv := serve(t, New(o))
			r := do(t, srv, "GET", "/readyz", nil)
			if r.status != tt.wantStatus || string(r.body) != tt.wantBody {
				t.Errorf("GET /readyz = %d %q, want %d %q", r.status, r.body, tt.wantStatus, tt.wantBody)
			}
			r = do(t, srv, "GET", "/healthz", nil)
			if r.status != 200 || string(r.body) != "ok" {
				t.Errorf("GET /healthz = %d %q, want 200 \"ok\"", r.status, r.body)
			}
			if ct := r.header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
				t.Errorf("GET /healthz Content-Type %q", ct)
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	t.Run("delegated", func(t *testing.T) {
		srv := serve(t, New(testOptions(newFakeSessions())))
		r := do(t, srv, "GET", "/metrics", nil)
		if r.status != 200 || string(r.body) != "wsgate_up 1\n" {
			t.Errorf("GET /metrics = %d %q, want 200 %q", r.status, r.body, "wsgate_up 1\n")
		}
	})
	t.Run("nil", func(t *testing.T) {
		o := testOptions(newFakeSessions())
		o.Metrics = nil
		srv := serve(t, New(o))
		wantError(t, do(t, srv, "GET", "/metrics", nil), 404)
	})
	// PublicMetrics: /metrics without the token (and, with no token, any
	// Host), and nothing else.
	t.Run("public", func(t *testing.T) {
		o := testOptions(newFakeSessions())
		o.Token = "s3cret"
		o.PublicMetrics = true
		srv := serve(t, New(o))
		if r := do(t, srv, "GET", "/metrics", nil); r.status != 200 || string(r.body) != "wsgate_up 1\n" {
			t.Errorf("GET /metrics without the token = %d %q, want 200", r.status, r.body)
		}
		if r := do(t, srv, "GET", "/api/upstreams", nil); r.status != 401 {
			t.Errorf("GET /api/upstreams without the token = %d, want 401", r.status)
		}
		if r := do(t, srv, "POST", "/reload", nil); r.status != 401 {
			t.Errorf("POST /reload without the token = %d, want 401", r.status)
		}
		o = testOptions(newFakeSessions())
		o.PublicMetrics = true
		srv = serve(t, New(o))
		if r := do(t, srv, "GET", "/metrics", nil, "Host", "wsgate.example"); r.status != 200 {
			t.Errorf("GET /metrics, no token, Host wsgate.example = %d, want 200", r.status)
		}
		if r := do(t, srv, "GET", "/api/upstreams", nil, "Host", "wsgate.example"); r.status != 403 {
			t.Errorf("GET /api/upstreams, no token, Host wsgate.example = %d, want 403", r.status)
		}
	})
}

func TestUpstreamsAndConfig(t *testing.T) {
	srv := serve(t, New(testOptions(newFakeSessions())))
	want, _ := json.Marshal(map[string]any{"upstreams": testUpstreams})
	wantJSON(t, do(t, srv, "GET", "/api/upstreams", nil), 200, string(want))
	wantJSON(t, do(t, srv, "GET", "/api/config", nil), 200, `{"admin":{"token":"REDACTED"}}`)

	t.Run("no upstreams", func(t *testing.T) {
		o := testOptions(newFakeSessions())
		o.Upstreams = func() []upstream.SetStatus { return nil }
		wantJSON(t, do(t, serve(t, New(o)), "GET", "/api/upstreams", nil), 200, `{"upstreams":[]}`)
	})
}

func TestReload(t *testing.T) {
	tests := []struct {
		name   string
		res    ReloadResult
		status int
		body   string
	}{
		{"ok", ReloadResult{OK: true, Changes: map[string]any{"routes": "2 changed"}}, 200,
			`{"ok":true,"changes":{"routes":"2 changed"}}`},
		{"problems", ReloadResult{Problems: []string{"config.yaml:3: routes[0]: unknown key \"tiemout\""}}, 422,
			`{"ok":false,"problems":["config.yaml:3: routes[0]: unknown key \"tiemout\""]}`},
		{"not applied", ReloadResult{Error: "listen tcp 127.0.0.1:80: bind: permission denied"}, 500,
			`{"ok":false,"error":"listen tcp 127.0.0.1:80: bind: permission denied"}`},
		{"shutting down", ReloadResult{ShuttingDown: true}, 503, `{"ok":false,"error":"shutting down"}`},
		{"shutting down with error", ReloadResult{ShuttingDown: true, Error: "draining"}, 503, `{"ok":false,"error":"draining"}`},
		{"problems win over error", ReloadResult{Problems: []string{"p"}, Error: "e"}, 422, `{"ok":false,"problems":["p"],"error":"e"}`},
		{"not ok, nothing said", ReloadResult{}, 500, `{"ok":false,"error":"reload failed"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := testOptions(newFakeSessions())
			o.Reload = func() ReloadResult { return tt.res }
			srv := serve(t, New(o))
			wantJSON(t, do(t, srv, "POST", "/reload", nil), tt.status, tt.body)
		})
	}
}

func TestOverview(t *testing.T) {
	srv := serve(t, New(testOptions(newFakeSessions())))
	r := do(t, srv, "GET", "/api/overview", nil)
	if r.status != 200 {
		t.Fatalf("status %d, want 200 (body %s)", r.status, r.body)
	}
	var got Overview
	if err := json.Unmarshal(r.body, &got); err != nil {
		t.Fatal(err)
	}
	if !got.Time.Equal(t0.Add(60e9)) || len(got.Routes) != 1 || got.Routes[0].Route != "chat" ||
		got.Routes[0].FromClient.Bytes != 100 || got.Routes[0].Handshakes != 5 || got.Routes[0].Refused != 1 ||
		len(got.Sessions) != 3 || got.SessionsTotal != 3 || len(got.Upstreams) != 1 {
		t.Errorf("overview %s", r.body)
	}
	// An empty list is [] for the page, never null.
	if !strings.Contains(string(r.body), `"closes":[]`) {
		t.Errorf("overview %s: want \"closes\":[]", r.body)
	}

	t.Run("empty", func(t *testing.T) {
		o := testOptions(newFakeSessions())
		o.Overview = func() Overview { return Overview{} }
		r := do(t, serve(t, New(o)), "GET", "/api/overview", nil)
		for _, k := range []string{`"routes":[]`, `"upstreams":[]`, `"closes":[]`, `"sessions":[]`, `"sessions_total":0`} {
			if !strings.Contains(string(r.body), k) {
				t.Errorf("overview %s: want %s", r.body, k)
			}
		}
		if strings.Contains(string(r.body), `"time":"0001-01-01T00:00:00Z"`) {
			t.Errorf("overview %s: want the time set", r.body)
		}
	})
}

func TestRouting(t *testing.T) {
	srv := serve(t, New(testOptions(newFakeSessions())))
	tests := []struct {
		method, path string
		status       int
		allow        string
	}{
		{"GET", "/nope", 404, ""},
		{"GET", "/api", 404, ""},
		{"GET", "/api/sessions/a/nope", 404, ""},
		{"GET", "/api/sessions/a/messages", 405, "POST"},
		{"GET", "/index.html", 404, ""},
		{"POST", "/api/sessions", 405, "GET, HEAD"},
		{"PUT", "/api/sessions/a", 405, "DELETE, GET, HEAD"},
		{"GET", "/reload", 405, "POST"},
		{"DELETE", "/api/upstreams", 405, "GET, HEAD"},
		{"GET", "/api/routes/chat/broadcast", 405, "POST"},
		{"POST", "/", 405, "GET, HEAD"},
		{"POST", "/healthz", 405, "GET, HEAD"},
		{"POST", "/api/stream", 405, "GET, HEAD"},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			r := do(t, srv, tt.method, tt.path, nil)
			msg := wantError(t, r, tt.status)
			if got := r.header.Get("Allow"); got != tt.allow {
				t.Errorf("Allow %q, want %q", got, tt.allow)
			}
			if !strings.Contains(msg, tt.path) {
				t.Errorf("error %q does not name the path", msg)
			}
		})
	}
}

func TestNilOptions(t *testing.T) {
	srv := serve(t, New(Options{}))
	for _, path := range []string{"/api/sessions", "/api/sessions/a", "/api/upstreams", "/api/config", "/api/overview", "/api/stream", "/metrics"} {
		t.Run(path, func(t *testing.T) {
			wantError(t, do(t, srv, "GET", path, nil), 404)
		})
	}
	for _, path := range []string{"/reload", "/api/routes/chat/broadcast", "/api/sessions/a/messages"} {
		t.Run(path, func(t *testing.T) {
			wantError(t, do(t, srv, "POST", path, nil), 404)
		})
	}
	for _, path := range []string{"/healthz", "/readyz", "/"} {
		t.Run(path, func(t *testing.T) {
			if r := do(t, srv, "GET", path, nil); r.status != 200 {
				t.Errorf("GET %s: status %d, want 200", path, r.status)
			}
		})
	}
	t.Run("broadcast without Routes", func(t *testing.T) {
		o := testOptions(newFakeSessions())
		o.Routes = nil
		wantError(t, do(t, serve(t, New(o)), "POST", "/api/routes/chat/broadcast", strings.NewReader("hi")), 404)
	})
}

func TestHead(t *testing.T) {
	srv := serve(t, New(testOptions(newFakeSessions())))
	for _, path := range []string{"/healthz", "/api/sessions", "/", "/api/stream"} {
		t.Run(path, func(t *testing.T) {
			if r := do(t, srv, http.MethodHead, path, nil); r.status != 200 {
				t.Errorf("HEAD %s: status %d, want 200", path, r.status)
			}
		})
	}
}
