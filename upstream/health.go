package upstream

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"time"
)

// startChecker starts the health checker of t, when the set checks
// health and runs. s.mu is held.
func (s *Set) startChecker(t *Target) {
	if s.cfg.Health == nil || !s.started || s.closed || s.checkers[t] != nil {
		return
	}
	ctx, cancel := context.WithCancel(s.ctx)
	s.checkers[t] = cancel
	s.spawn("health checker", func() { s.checkLoop(ctx, t) })
}

// stopChecker stops the health checker of t (a target discovery
// removed); Close waits for it. s.mu is held.
func (s *Set) stopChecker(t *Target) {
	if cancel := s.checkers[t]; cancel != nil {
		cancel()
		delete(s.checkers, t)
	}
}

// checkLoop checks t every Health.Interval (±10 %, so that checks of many
// targets spread out), one check at a time, until ctx is done. The first
// check comes within a second.
func (s *Set) checkLoop(ctx context.Context, t *Target) {
	h := s.cfg.Health
	c := newChecker(s, t)
	defer c.close()
	timer := time.NewTimer(jitter(min(h.Interval, time.Second), 1))
	defer timer.Stop()
	passes, fails := 0, 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		err := c.check(ctx)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			passes, fails = passes+1, 0
			s.checkPassed(t, passes)
		} else {
			passes, fails = 0, fails+1
			s.checkFailed(t, fails, err)
		}
		timer.Reset(h.Interval + jitter(h.Interval/5, 1) - h.Interval/10)
	}
}

// jitter returns a random duration in [0, d·f).
func jitter(d time.Duration, f float64) time.Duration {
	if d <= 0 {
		return 0
	}
	return time.Duration(rand.Float64() * f * float64(d))
}

// checkPassed brings t back after HealthyAfter passes in a row (one for
// a target that started unhealthy and was never checked), and ends an
// ejection at once.
func (s *Set) checkPassed(t *Target, passes int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := t.st
	down := st.down.Load()
	if down&downEjected != 0 {
		s.readmit(t, time.Now().UnixNano(), "health check passed")
	}
	need, reason := s.cfg.Health.HealthyAfter, "health check passed"
	if st.unchecked.Swap(false) {
		need, reason = 1, "first health check passed"
	}
	if down&downUnhealthy != 0 && passes >= need && st.clearDown(downUnhealthy) {
		s.rebuild()
		if st.down.Load() == 0 {
			s.log.Info("target healthy", "target", t.URL, "reason", reason, "passes", passes)
		}
	}
}

// checkFailed takes t out after UnhealthyAfter failures in a row.
func (s *Set) checkFailed(t *Target, fails int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := t.st
	// A target that started unhealthy fails its first check: it now
	// needs HealthyAfter passes, as any unhealthy target.
	st.unchecked.Store(false)
	if fails < s.cfg.Health.UnhealthyAfter || !st.setDown(downUnhealthy) {
		return
	}
	s.rebuild()
	s.log.Warn("target unhealthy", "target", t.URL, "reason", "health check failed: "+err.Error(), "failures", fails)
}

// checker runs the checks of one target.
type checker struct {
	s      *Set
	t      *Target
	h      *Health
	client *http.Client
	dialer net.Dialer
	tls    *tls.Config // for https targets
	host   string      // the Host header
}

func newChecker(s *Set, t *Target) *checker {
	h := s.cfg.Health
	c := &checker{s: s, t: t, h: h, dialer: net.Dialer{Timeout: s.cfg.ConnectTimeout}, host: hostHeader(t)}
	for _, hd := range h.Headers {
		if strings.EqualFold(hd.Name, "Host") {
			c.host = hd.Value
		}
	}
	if t.TLS() {
		c.tls = targetTLS(s.cfg.TLS, t)
	}
	if h.Path != "" {
		c.client = &http.Client{
			Transport: &http.Transport{
				Proxy:       nil, // never HTTP_PROXY from the environment
				DialContext: c.dialer.DialContext,
				// A fresh connection per check: a target that stops
				// accepting must fail its check.
				DisableKeepAlives:      true,
				TLSClientConfig:        c.tls,
				MaxResponseHeaderBytes: 64 << 10,
			},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return c
}

func (c *checker) close() {
	if c.client != nil {
		c.client.CloseIdleConnections()
	}
}

// check runs the HTTP check, then the WebSocket check, each within
// Health.Timeout; the first failure is the result.
func (c *checker) check(ctx context.Context) error {
	if c.h.Path != "" {
		if err := c.httpCheck(ctx); err != nil {
			return err
		}
	}
	if c.h.WebSocket != nil {
		return c.wsCheck(ctx)
	}
	return nil
}

func (c *checker) httpCheck(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.h.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.t.Scheme+"://"+c.t.Addr+c.h.Path, nil)
	if err != nil {
		return fmt.Errorf("GET %s: %w", c.h.Path, err)
	}
	req.Host = c.host
	for _, hd := range c.h.Headers {
		if !strings.EqualFold(hd.Name, "Host") {
			req.Header.Set(hd.Name, hd.Value)
		}
	}
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", "wsgate-health-check")
	}
	resp, err := c.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("GET %s: no answer within %s", c.h.Path, c.h.Timeout)
		}
		return fmt.Errorf("GET %s: %w", c.h.Path, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	for _, r := range c.h.Expect {
		if r.Min <= resp.StatusCode && resp.StatusCode <= r.Max {
			return nil
		}
	}
	return fmt.Errorf("GET %s: status %d", c.h.Path, resp.StatusCode)
}

// hostHeader returns the Host a check sends: the target's host as
// written, with its port unless it is the scheme's default.
func hostHeader(t *Target) string {
	_, port, _ := net.SplitHostPort(t.Addr)
	if (t.Scheme == "http" && port == "80") || (t.Scheme == "https" && port == "443") {
		if strings.Contains(t.Host, ":") {
			return "[" + t.Host + "]"
		}
		return t.Host
	}
	return net.JoinHostPort(t.Host, port)
}

// targetTLS returns the TLS client configuration for t: the upstream's,
// with the target's host as server name unless one is configured, and
// HTTP/1.1 only.
func targetTLS(base *tls.Config, t *Target) *tls.Config {
	var c *tls.Config
	if base == nil {
		c = &tls.Config{MinVersion: tls.VersionTLS12}
	} else {
		c = base.Clone()
	}
	if c.ServerName == "" {
		c.ServerName = t.Host
	}
	c.NextProtos = []string{"http/1.1"}
	return c
}

// TLSConfig returns the TLS client configuration for an https target:
// the upstream's, with the host written in the config as server name
// (not the address a discovered target is dialled at) unless the config
// names one, and HTTP/1.1 only. It is built anew on each call.
func (t *Target) TLSConfig() *tls.Config { return targetTLS(t.set.cfg.TLS, t) }
