package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// httpHealth returns an HTTP check of /health every 20ms.
func httpHealth() *Health {
	return &Health{
		Path:           "/health",
		Interval:       20 * time.Millisecond,
		Timeout:        hangGuard,
		Expect:         []StatusRange{{200, 399}},
		HealthyAfter:   2,
		UnhealthyAfter: 3,
	}
}

func TestHealthHTTPTransitions(t *testing.T) {
	flip, steady := newStatusServer(t, 200), newStatusServer(t, 200)
	log, lb := newLogger()
	s := newTestSet(t, &Config{
		Name:           "api",
		Targets:        []TargetConfig{localTarget(t, flip.addr()), localTarget(t, steady.addr())},
		ConnectTimeout: hangGuard,
		Health:         httpHealth(),
	}, Options{Logger: log})
	s.Start()
	tgt := s.Targets()[0]
	waitFor(t, "3 passing checks", func() bool { return flip.served(200) >= 3 })
	if !tgt.Healthy() {
		t.Fatal("Healthy() = false while checks pass, want true")
	}

	flip.set(500)
	waitFor(t, "the target to go unhealthy", func() bool { return !tgt.Healthy() })
	if n := flip.served(500); n < 3 {
		t.Errorf("unhealthy after %d failed checks, want at least UnhealthyAfter (3)", n)
	}
	want := []string{"level=WARN", "target unhealthy", "upstream=api", "target=" + tgt.URL, `reason="health check failed: GET /health: status 500"`, "failures=3"}
	waitFor(t, "the \"target unhealthy\" line", func() bool { return lb.has(want...) })
	if n := lb.count(want...); n != 1 {
		t.Errorf("%d lines with %q, want 1:\n%s", n, want, lb)
	}
	for range 20 {
		if got := pickRelease(s, nil); got == tgt {
			t.Fatalf("Next() = unhealthy target %s", tgt.URL)
		}
	}
	if got := s.RetryAfter(); got != 1 {
		t.Errorf("RetryAfter() = %d with interval 20ms × 2 passes, want 1", got)
	}

	flip.set(204)
	waitFor(t, "the target to come back", tgt.Healthy)
	if n := flip.served(204); n < 2 {
		t.Errorf("healthy after %d passing checks, want at least HealthyAfter (2)", n)
	}
	// Healthy() turns true just before the line is written.
	want = []string{"level=INFO", "target healthy", "target=" + tgt.URL, `reason="health check passed"`, "passes=2"}
	waitFor(t, "the \"target healthy\" line", func() bool { return lb.has(want...) })
	if n := lb.count("target unhealthy"); n != 1 {
		t.Errorf("%d \"target unhealthy\" lines, want 1 (logged once per change)", n)
	}
	seen := false
	for range 10 {
		seen = seen || pickRelease(s, nil) == tgt
	}
	if !seen {
		t.Error("healthy again target never picked in 10 round-robin picks")
	}
}

// alternatingServer answers 500 and 200 in turn.
func alternatingServer(t *testing.T) (addr string, served *atomic.Int64) {
	served = &atomic.Int64{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if served.Add(1)%2 == 1 {
			w.WriteHeader(500)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String(), served
}

// TestHealthInARow: UnhealthyAfter and HealthyAfter count checks in a
// row; alternating answers move the target neither way.
func TestHealthInARow(t *testing.T) {
	for _, startDown := range []bool{false, true} {
		name := "up"
		if startDown {
			name = "down"
		}
		t.Run(name, func(t *testing.T) {
			addr, served := alternatingServer(t)
			log, lb := newLogger()
			h := httpHealth()
			h.HealthyAfter, h.UnhealthyAfter = 2, 2
			s := newTestSet(t, &Config{Targets: []TargetConfig{localTarget(t, addr)}, ConnectTimeout: hangGuard, Health: h}, Options{Logger: log})
			tgt := s.Targets()[0]
			if startDown {
				setDown(s, tgt, downUnhealthy, true)
			}
			s.Start()
			waitFor(t, "20 checks", func() bool { return served.Load() >= 20 })
			s.Close()
			if got := tgt.Healthy(); got == startDown {
				t.Errorf("Healthy() = %v after alternating checks, want %v", got, !startDown)
			}
			if lb.has("target unhealthy") || lb.has("target healthy") {
				t.Errorf("a transition was logged:\n%s", lb)
			}
		})
	}
}

// checkOnce runs one check of the set's first target.
func checkOnce(s *Set) error {
	c := newChecker(s, s.Targets()[0])
	defer c.close()
	return c.check(context.Background())
}

func TestHealthHTTPExpect(t *testing.T) {
	cases := []struct {
		name    string
		status  int
		expect  []StatusRange
		wantErr string // "" for a pass
	}{
		{"204 in 200-399", 204, []StatusRange{{200, 399}}, ""},
		{"200 in 200-399", 200, []StatusRange{{200, 399}}, ""},
		{"302 not followed", 302, []StatusRange{{200, 399}}, ""},
		{"399 edge", 399, []StatusRange{{200, 399}}, ""},
		{"400 edge", 400, []StatusRange{{200, 399}}, "GET /health: status 400"},
		{"500", 500, []StatusRange{{200, 399}}, "GET /health: status 500"},
		{"second range", 404, []StatusRange{{200, 299}, {404, 404}}, ""},
		{"only 5xx", 200, []StatusRange{{500, 599}}, "GET /health: status 200"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := newStatusServer(t, tc.status)
			h := httpHealth()
			h.Expect = tc.expect
			s := newTestSet(t, &Config{Targets: []TargetConfig{localTarget(t, srv.addr())}, ConnectTimeout: hangGuard, Health: h}, Options{})
			err := checkOnce(s)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("check() = %v, want a pass", err)
			case tc.wantErr != "" && (err == nil || err.Error() != tc.wantErr):
				t.Errorf("check() = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestHealthHTTPHeaders(t *testing.T) {
	cases := []struct {
		name     string
		headers  []Header
		wantHost string // "" for the target's host:port
		wantUA   string
	}{
		{"defaults", nil, "", "wsgate-health-check"},
		{"host", []Header{{"Host", "api.internal"}}, "api.internal", "wsgate-health-check"},
		{"host lower case", []Header{{"host", "api.internal:8443"}}, "api.internal:8443", "wsgate-health-check"},
		{"user agent", []Header{{"User-Agent", "probe/1"}}, "", "probe/1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := newStatusServer(t, 200)
			h := httpHealth()
			h.Headers = tc.headers
			s := newTestSet(t, &Config{Targets: []TargetConfig{localTarget(t, srv.addr())}, ConnectTimeout: hangGuard, Health: h}, Options{})
			if err := checkOnce(s); err != nil {
				t.Fatalf("check() = %v, want a pass", err)
			}
			wantHost := tc.wantHost
			if wantHost == "" {
				wantHost = srv.addr()
			}
			if srv.sawHost(wantHost) != 1 {
				t.Errorf("server did not see Host %q", wantHost)
			}
			if srv.sawAgent(tc.wantUA) != 1 {
				t.Errorf("server did not see User-Agent %q", tc.wantUA)
			}
		})
	}
}

func TestHealthHTTPOtherHeaders(t *testing.T) {
	got := make(chan http.Header, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case got <- r.Header.Clone():
		default:
		}
	}))
	t.Cleanup(srv.Close)
	h := httpHealth()
	h.Headers = []Header{{"X-Check", "yes"}, {"Authorization", "Bearer t"}}
	s := newTestSet(t, &Config{Targets: []TargetConfig{localTarget(t, srv.Listener.Addr().String())}, ConnectTimeout: hangGuard, Health: h}, Options{})
	if err := checkOnce(s); err != nil {
		t.Fatalf("check() = %v, want a pass", err)
	}
	hd := <-got
	for _, want := range h.Headers {
		if v := hd.Get(want.Name); v != want.Value {
			t.Errorf("header %s = %q, want %q", want.Name, v, want.Value)
		}
	}
}

func TestHealthHTTPFailures(t *testing.T) {
	t.Run("refused", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close() // nothing listens there now
		s := newTestSet(t, &Config{Targets: []TargetConfig{localTarget(t, addr)}, ConnectTimeout: hangGuard, Health: httpHealth()}, Options{})
		err = checkOnce(s)
		if err == nil || !strings.HasPrefix(err.Error(), "GET /health: ") || !strings.Contains(err.Error(), "refused") {
			t.Errorf("check() = %v, want GET /health: … connection refused", err)
		}
	})
	t.Run("no answer", func(t *testing.T) {
		release := make(chan struct{})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}))
		t.Cleanup(srv.Close)
		t.Cleanup(func() { close(release) }) // runs first: frees the handlers
		h := httpHealth()
		h.Timeout = 100 * time.Millisecond
		s := newTestSet(t, &Config{Targets: []TargetConfig{localTarget(t, srv.Listener.Addr().String())}, ConnectTimeout: hangGuard, Health: h}, Options{})
		if err := checkOnce(s); err == nil || err.Error() != "GET /health: no answer within 100ms" {
			t.Errorf("check() = %v, want GET /health: no answer within 100ms", err)
		}
	})
}

// TestHealthReadmitsEjected: a passing check ends a passive ejection at
// once, long before EjectFor.
func TestHealthReadmitsEjected(t *testing.T) {
	srv := newStatusServer(t, 200)
	log, lb := newLogger()
	s := newTestSet(t, &Config{
		Targets:        []TargetConfig{localTarget(t, srv.addr())},
		ConnectTimeout: hangGuard,
		Health:         httpHealth(),
		Passive:        &Passive{Failures: 2, Window: time.Minute, EjectFor: time.Hour, MaxEjectFor: time.Hour, MaxEjectPercent: 100},
	}, Options{Logger: log})
	tgt := s.Targets()[0]
	failOn(t, s, tgt, ConnectFailed, 2) // before Start: no check can readmit it yet
	if tgt.Healthy() {
		t.Fatal("Healthy() = true after 2 failures, want ejected")
	}
	s.Start()
	waitFor(t, "a passing check to readmit the target", tgt.Healthy)
	waitFor(t, "a \"target healthy\" line naming the check", func() bool {
		return lb.has("target healthy", "target="+tgt.URL, `reason="health check passed"`)
	})
}

// TestHealthKeepsEjectedUnhealthy: an ejection that ends does not bring
// back a target its checks hold out.
func TestHealthKeepsEjectedUnhealthy(t *testing.T) {
	s := newTestSet(t, passiveConfig(2, Passive{Failures: 1, Window: time.Minute, EjectFor: time.Hour, MaxEjectFor: time.Hour, MaxEjectPercent: 100}), Options{})
	s.cfg.Health = httpHealth() // not started: no checker runs
	tgt := s.Targets()[0]
	failOn(t, s, tgt, ConnectFailed, 1)
	setDown(s, tgt, downUnhealthy, true)
	s.mu.Lock()
	s.readmit(tgt, time.Now().UnixNano(), "ejection ended")
	s.mu.Unlock()
	if tgt.Healthy() {
		t.Error("Healthy() = true after the ejection ended, want false: its checks still fail")
	}
	s.checkPassed(tgt, 1)
	if tgt.Healthy() {
		t.Error("Healthy() = true after 1 of 2 passes, want false")
	}
	s.checkPassed(tgt, 2)
	if !tgt.Healthy() {
		t.Error("Healthy() = false after 2 passes, want true")
	}
}

func TestHealthHTTPS(t *testing.T) {
	var hosts sync.Map
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hosts.Store(r.TLS.ServerName, true)
	}))
	srv.Config.ErrorLog = slog.NewLogLogger(slog.DiscardHandler, slog.LevelError) // the untrusted case's handshake error
	srv.StartTLS()
	t.Cleanup(srv.Close)
	tc := localTarget(t, srv.Listener.Addr().String())
	tc.Scheme = "https"
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	cases := []struct {
		name    string
		tls     *tls.Config
		wantErr string
	}{
		{"trusted", &tls.Config{RootCAs: pool}, ""},
		{"server name from config", &tls.Config{RootCAs: pool, ServerName: "example.com"}, ""},
		{"untrusted", nil, "certificate"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newTestSet(t, &Config{Targets: []TargetConfig{tc}, TLS: c.tls, ConnectTimeout: hangGuard, Health: httpHealth()}, Options{})
			err := checkOnce(s)
			switch {
			case c.wantErr == "" && err != nil:
				t.Errorf("check() = %v, want a pass", err)
			case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
				t.Errorf("check() = %v, want an error about %s", err, c.wantErr)
			}
		})
	}
	// The trusted case verified the certificate's IP SAN (no SNI is sent
	// for an IP); the configured name went out as SNI.
	if _, ok := hosts.Load("example.com"); !ok {
		t.Error("server never saw SNI \"example.com\"")
	}
}
