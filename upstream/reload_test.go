package upstream

import (
	"crypto/tls"
	"testing"
	"time"
)

// attached returns what is attached to t, or nil, without attaching
// anything (Attached would).
func attached(t *Target) any {
	if p := t.ext.Load(); p != nil {
		return *p
	}
	return nil
}

// client stands for a proxy's pooled HTTP client of one target.
type client struct{ url string }

// attachClients attaches a new *client to every target of s and returns
// them by URL.
func attachClients(s *Set) map[string]*client {
	out := map[string]*client{}
	for _, t := range s.Targets() {
		out[t.URL] = t.Attached(func(t *Target) any { return &client{t.URL} }).(*client)
	}
	return out
}

// TestPreviousAttached: a reload's set gives each target whose URL was in
// the previous set what was attached to it there (its pooled connections),
// when the settings connections depend on are the same: connect and
// response timeouts, max_connections, and TLS (present or not, and what it
// was built from). Otherwise, and for targets that are new, nothing is
// attached. The previous set's targets keep theirs either way.
func TestPreviousAttached(t *testing.T) {
	plain := func() *Config {
		// 10.0.0.1 leaves; 10.0.0.2 and 10.0.0.3 stay; 10.0.0.4 is new.
		return &Config{Name: "api", ConnectTimeout: 2 * time.Second, ResponseTimeout: time.Minute, MaxConnections: 10}
	}
	secure := func() *Config {
		c := plain()
		c.TLS = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: "api.internal"}
		c.TLSSource = `server_name="api.internal" insecure=false`
		return c
	}
	tests := []struct {
		name   string
		scheme string
		prev   func() *Config
		next   func(*Config) // edits a copy of prev's config
		keep   bool
	}{
		{"same settings", "http", plain, func(*Config) {}, true},
		{"other settings change", "http", plain, func(c *Config) {
			c.Policy = LeastConn
			c.Retries = 0
			c.TryTimeout = time.Second
			c.RetryBodyLimit = 1
			c.Passive = &Passive{Failures: 1, Window: time.Minute, EjectFor: time.Minute, MaxEjectFor: time.Minute, MaxEjectPercent: 50}
			c.OnTargetRemoved = "close"
		}, true},
		{"connect_timeout", "http", plain, func(c *Config) { c.ConnectTimeout = 3 * time.Second }, false},
		{"response_timeout", "http", plain, func(c *Config) { c.ResponseTimeout = 2 * time.Minute }, false},
		{"max_connections", "http", plain, func(c *Config) { c.MaxConnections = 0 }, false},
		{"same tls", "https", secure, func(c *Config) {
			c.TLS = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: "api.internal"} // rebuilt, equal
		}, true},
		{"tls source", "https", secure, func(c *Config) {
			c.TLS = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: "other.internal"}
			c.TLSSource = `server_name="other.internal" insecure=false`
		}, false},
		{"tls gone", "https", secure, func(c *Config) { c.TLS, c.TLSSource = nil, "" }, false},
		{"tls added", "https", plain, func(c *Config) {
			c.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prevCfg := tt.prev()
			prevCfg.Targets = fakeTargets(3)
			for i := range prevCfg.Targets {
				prevCfg.Targets[i].Scheme = tt.scheme
			}
			prev := newTestSet(t, prevCfg, Options{})
			before := attachClients(prev)

			nextCfg := *prevCfg
			tt.next(&nextCfg)
			all := fakeTargets(4, 1, 1, 5) // 10.0.0.3's weight changes: not a connection setting
			nextCfg.Targets = all[1:]
			for i := range nextCfg.Targets {
				nextCfg.Targets[i].Scheme = tt.scheme
			}
			next := newTestSet(t, &nextCfg, Options{Previous: prev})

			for _, tg := range next.Targets() {
				got := attached(tg)
				want, stayed := before[tg.URL]
				switch {
				case !stayed:
					if got != nil {
						t.Errorf("new target %s: attached %v, want nothing", tg.URL, got)
					}
				case tt.keep:
					if got != want {
						t.Errorf("target %s: attached %v, want the previous set's %p", tg.URL, got, want)
					}
				default:
					if got != nil {
						t.Errorf("target %s: attached %v, want nothing (connection settings changed)", tg.URL, got)
					}
				}
			}
			if n := len(next.Targets()); n != 3 {
				t.Errorf("next set has %d targets, want 3", n)
			}
			for _, tg := range prev.Targets() {
				if got := attached(tg); got != before[tg.URL] {
					t.Errorf("previous set's target %s: attached %v, want its own %p still", tg.URL, got, before[tg.URL])
				}
			}
		})
	}
}

// TestPreviousAttachedDiscovered: a discovered target's connections are
// not handed on, neither to the discovered target of the next set (a new
// object at each lookup) nor to a static target with the same URL (it
// sends another Host and server name).
func TestPreviousAttachedDiscovered(t *testing.T) {
	r := newFakeResolver()
	r.set("svc.test", "10.0.0.1")
	discovered := func() *Config {
		return &Config{Name: "api", Targets: []TargetConfig{{Scheme: "http", Host: "svc.test", Port: "80", Weight: 1}}, ResolveEvery: time.Hour}
	}
	prev := newTestSet(t, discovered(), Options{Resolver: r})
	prev.Start()
	if got := urls(prev.Targets()); len(got) != 1 || got[0] != "http://10.0.0.1:80" {
		t.Fatalf("discovered %v, want http://10.0.0.1:80", got)
	}
	attachClients(prev)

	next := newTestSet(t, discovered(), Options{Resolver: r, Previous: prev})
	next.Start()
	for _, tg := range next.Targets() {
		if got := attached(tg); got != nil {
			t.Errorf("discovered target %s of the next set: attached %v, want nothing", tg.URL, got)
		}
	}

	static := newTestSet(t, &Config{Name: "api", Targets: []TargetConfig{{Scheme: "http", Host: "10.0.0.1", Port: "80", Weight: 1}}},
		Options{Previous: prev})
	tg := static.Targets()[0]
	if tg.URL != "http://10.0.0.1:80" {
		t.Fatalf("static target %s, want the discovered one's URL", tg.URL)
	}
	if got := attached(tg); got != nil {
		t.Errorf("static target %s (Host %s) took %v from the discovered one (Host svc.test), want nothing", tg.URL, tg.Host, got)
	}
}
