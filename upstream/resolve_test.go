package upstream

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

// fakeResolver answers from a map that tests change while the set runs.
// A host missing from the map does not exist.
type fakeResolver struct {
	mu    sync.Mutex
	addrs map[string][]netip.Addr
	errs  map[string]error
	calls map[string]int
	block bool // lookups wait for their context
}

func newFakeResolver() *fakeResolver {
	return &fakeResolver{addrs: map[string][]netip.Addr{}, errs: map[string]error{}, calls: map[string]int{}}
}

func (r *fakeResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	r.calls[host]++
	block := r.block
	addrs, ok := r.addrs[host]
	err := r.errs[host]
	r.mu.Unlock()
	if block {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if network != "ip" {
		return nil, errors.New("unexpected network " + network)
	}
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return slices.Clone(addrs), nil
}

// set makes host resolve to addrs (none: an empty answer without error).
func (r *fakeResolver) set(host string, addrs ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var as []netip.Addr
	for _, a := range addrs {
		as = append(as, netip.MustParseAddr(a))
	}
	r.addrs[host] = as
}

// remove makes host not exist.
func (r *fakeResolver) remove(host string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.addrs, host)
}

// fail makes lookups of host fail with err (nil: answer again).
func (r *fakeResolver) fail(host string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs[host] = err
}

func (r *fakeResolver) lookups(host string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[host]
}

// waitRounds waits until host has been looked up n more times.
func (r *fakeResolver) waitRounds(t *testing.T, host string, n int) {
	t.Helper()
	want := r.lookups(host) + n
	waitFor(t, "more lookups", func() bool { return r.lookups(host) >= want })
}

func discoveryConfig(tcs ...TargetConfig) *Config {
	return &Config{Name: "api", Targets: tcs, ResolveEvery: 20 * time.Millisecond}
}

func hasURLs(s *Set, want ...string) func() bool {
	return func() bool { return slices.Equal(urls(s.Targets()), want) }
}

func TestDiscovery(t *testing.T) {
	r := newFakeResolver()
	r.set("svc.test", "10.0.0.2", "10.0.0.1")
	log, lb := newLogger()
	s := newTestSet(t, discoveryConfig(
		TargetConfig{Scheme: "http", Host: "svc.test", Port: "8080", Weight: 2},
		TargetConfig{Scheme: "http", Host: "10.9.9.9", Port: "80", Weight: 1},
	), Options{Logger: log, Resolver: r})
	if got, want := urls(s.Targets()), []string{"http://10.9.9.9:80"}; !slices.Equal(got, want) {
		t.Errorf("Targets() before Start = %q, want %q (names appear once resolved)", got, want)
	}

	s.Start()
	// Start resolves at once: no waiting here.
	want := []string{"http://10.0.0.1:8080", "http://10.0.0.2:8080", "http://10.9.9.9:80"}
	if got := urls(s.Targets()); !slices.Equal(got, want) {
		t.Fatalf("Targets() right after Start = %q, want %q", got, want)
	}
	first := s.Targets()[0]
	if first.Host != "svc.test" || first.Addr != "10.0.0.1:8080" || first.Weight != 2 || first.Scheme != "http" {
		t.Errorf("discovered target = Host %q Addr %q Weight %d Scheme %q, want svc.test 10.0.0.1:8080 2 http", first.Host, first.Addr, first.Weight, first.Scheme)
	}

	t.Run("address added", func(t *testing.T) {
		r.set("svc.test", "10.0.0.1", "10.0.0.2", "10.0.0.3")
		waitFor(t, "the new address", hasURLs(s, "http://10.0.0.1:8080", "http://10.0.0.2:8080", "http://10.0.0.3:8080", "http://10.9.9.9:80"))
		if !lb.has("upstream targets changed", "upstream=api", "added=http://10.0.0.3:8080", `removed=""`, "targets=4") {
			t.Errorf("no \"upstream targets changed\" line for the added address:\n%s", lb)
		}
		if s.Targets()[0] != first {
			t.Error("the unchanged address got a new Target, want the same one")
		}
	})
	t.Run("address removed", func(t *testing.T) {
		r.set("svc.test", "10.0.0.2", "10.0.0.3")
		waitFor(t, "the address to go", hasURLs(s, "http://10.0.0.2:8080", "http://10.0.0.3:8080", "http://10.9.9.9:80"))
		if !lb.has("upstream targets changed", `added=""`, "removed=http://10.0.0.1:8080", "targets=3") {
			t.Errorf("no \"upstream targets changed\" line for the removed address:\n%s", lb)
		}
		for range 30 {
			if got := pickRelease(s, nil); got.URL == "http://10.0.0.1:8080" {
				t.Fatalf("Next() = removed target %s", u(got))
			}
		}
	})
	t.Run("lookup fails", func(t *testing.T) {
		before := urls(s.Targets())
		r.fail("svc.test", errors.New("server misbehaving"))
		waitFor(t, "the \"resolve failed\" line", func() bool {
			return lb.has("resolve failed; keeping the last addresses", "name=svc.test", `error="server misbehaving"`, "addresses=2")
		})
		r.waitRounds(t, "svc.test", 5)
		if n := lb.count("resolve failed"); n != 1 {
			t.Errorf("%d \"resolve failed\" lines over 6 failing rounds, want 1 (one per change)", n)
		}
		if got := urls(s.Targets()); !slices.Equal(got, before) {
			t.Errorf("Targets() = %q while lookups fail, want the last ones %q", got, before)
		}
		r.fail("svc.test", nil)
		waitFor(t, "the \"resolve recovered\" line", func() bool { return lb.has("resolve recovered", "name=svc.test", "addresses=2") })
	})
	t.Run("name gone", func(t *testing.T) {
		r.remove("svc.test")
		waitFor(t, "the name's targets to go", hasURLs(s, "http://10.9.9.9:80"))
		r.waitRounds(t, "svc.test", 5)
		if n := lb.count("name has no addresses", "name=svc.test"); n != 1 {
			t.Errorf("%d \"name has no addresses\" lines, want 1", n)
		}
		r.set("svc.test", "10.0.0.5")
		waitFor(t, "the name to come back", hasURLs(s, "http://10.0.0.5:8080", "http://10.9.9.9:80"))
	})
	t.Run("empty answer", func(t *testing.T) {
		r.set("svc.test")
		waitFor(t, "the name's targets to go", hasURLs(s, "http://10.9.9.9:80"))
		waitFor(t, "a second \"name has no addresses\" line", func() bool { return lb.count("name has no addresses") == 2 })
	})
}

// TestDiscoveryNotFoundOneName: a name that stops existing loses its
// targets; the other names keep theirs.
func TestDiscoveryNotFoundOneName(t *testing.T) {
	r := newFakeResolver()
	r.set("a.test", "10.0.1.1")
	r.set("b.test", "10.0.2.1")
	s := newTestSet(t, discoveryConfig(
		TargetConfig{Scheme: "http", Host: "a.test", Port: "80", Weight: 1},
		TargetConfig{Scheme: "http", Host: "b.test", Port: "80", Weight: 1},
	), Options{Resolver: r})
	s.Start()
	if got, want := urls(s.Targets()), []string{"http://10.0.1.1:80", "http://10.0.2.1:80"}; !slices.Equal(got, want) {
		t.Fatalf("Targets() = %q, want %q", got, want)
	}
	r.remove("a.test")
	waitFor(t, "a.test's target to go", hasURLs(s, "http://10.0.2.1:80"))
}

func TestDiscoveryAddresses(t *testing.T) {
	cases := []struct {
		name  string
		addrs []string
		want  []string
	}{
		{"sorted", []string{"10.0.0.9", "10.0.0.10", "10.0.0.1"}, []string{"http://10.0.0.1:80", "http://10.0.0.9:80", "http://10.0.0.10:80"}},
		{"duplicates", []string{"10.0.0.2", "10.0.0.2"}, []string{"http://10.0.0.2:80"}},
		{"v4-mapped", []string{"::ffff:10.0.0.1", "10.0.0.1"}, []string{"http://10.0.0.1:80"}},
		{"v6", []string{"2001:db8::1", "10.0.0.1"}, []string{"http://10.0.0.1:80", "http://[2001:db8::1]:80"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newFakeResolver()
			r.set("svc.test", tc.addrs...)
			s := newTestSet(t, discoveryConfig(TargetConfig{Scheme: "http", Host: "svc.test", Port: "80", Weight: 1}), Options{Resolver: r})
			s.Start()
			if got := urls(s.Targets()); !slices.Equal(got, tc.want) {
				t.Errorf("Targets() = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestDiscoverySharedAddress: two names with one address make one target,
// the first name's.
func TestDiscoverySharedAddress(t *testing.T) {
	r := newFakeResolver()
	r.set("a.test", "10.0.0.1")
	r.set("b.test", "10.0.0.1", "10.0.0.2")
	s := newTestSet(t, discoveryConfig(
		TargetConfig{Scheme: "http", Host: "a.test", Port: "80", Weight: 1},
		TargetConfig{Scheme: "http", Host: "b.test", Port: "80", Weight: 1},
		TargetConfig{Scheme: "http", Host: "a.test", Port: "81", Weight: 1}, // same name, other port
	), Options{Resolver: r})
	s.Start()
	want := []string{"http://10.0.0.1:80", "http://10.0.0.2:80", "http://10.0.0.1:81"}
	if got := urls(s.Targets()); !slices.Equal(got, want) {
		t.Fatalf("Targets() = %q, want %q", got, want)
	}
	if h := s.Targets()[0].Host; h != "a.test" {
		t.Errorf("shared address's Host = %q, want the first name a.test", h)
	}
	if n := r.lookups("a.test"); n != 1 {
		t.Errorf("a.test looked up %d times by Start, want 1 (one lookup per name)", n)
	}
}

// TestDiscoveryKeepsStateInUse: a removed target held by an open session
// keeps its counts; when its address comes back the new target shares
// them. An idle removed target's state is forgotten.
func TestDiscoveryKeepsStateInUse(t *testing.T) {
	r := newFakeResolver()
	r.set("svc.test", "10.0.0.2")
	s := newTestSet(t, discoveryConfig(TargetConfig{Scheme: "http", Host: "svc.test", Port: "80", Weight: 1}), Options{Resolver: r})
	s.Start()
	old := openSession(s)
	if old == nil || old.URL != "http://10.0.0.2:80" {
		t.Fatalf("openSession() = %q, want %q", u(old), "http://10.0.0.2:80")
	}

	r.set("svc.test", "10.0.0.3")
	waitFor(t, "the address to change", hasURLs(s, "http://10.0.0.3:80"))
	if old.Active() != 1 || old.Sessions() != 1 {
		t.Errorf("removed target: Active() = %d, Sessions() = %d, want 1 and 1", old.Active(), old.Sessions())
	}
	idle := s.Targets()[0]
	setDown(s, idle, downEjected, true) // state that an idle target's removal forgets

	r.set("svc.test", "10.0.0.2")
	waitFor(t, "the address to come back", hasURLs(s, "http://10.0.0.2:80"))
	back := s.Targets()[0]
	if back.Active() != 1 || back.Sessions() != 1 {
		t.Errorf("re-added target: Active() = %d, Sessions() = %d, want 1 and 1 (the open session)", back.Active(), back.Sessions())
	}
	old.SessionClosed()
	if back.Active() != 0 || back.Sessions() != 0 {
		t.Errorf("after the session closed: Active() = %d, Sessions() = %d, want 0 and 0", back.Active(), back.Sessions())
	}

	r.set("svc.test", "10.0.0.2", "10.0.0.3")
	waitFor(t, "the idle address to come back", hasURLs(s, "http://10.0.0.2:80", "http://10.0.0.3:80"))
	if again := s.Targets()[1]; !again.Healthy() {
		t.Error("an idle removed target's ejection outlived its removal, want its state forgotten")
	}
}

// TestDiscoveryCheckers: discovered targets get a health checker; removed
// ones lose it.
func TestDiscoveryCheckers(t *testing.T) {
	srv := newStatusServer(t, 200)
	tc := localTarget(t, srv.addr())
	r := newFakeResolver()
	r.set("svc.test", tc.Host)
	cfg := discoveryConfig(TargetConfig{Scheme: "http", Host: "svc.test", Port: tc.Port, Weight: 1})
	cfg.Health, cfg.ConnectTimeout = httpHealth(), hangGuard
	s := newTestSet(t, cfg, Options{Resolver: r})
	s.Start()
	waitFor(t, "a check of the discovered target", func() bool { return srv.served(200) > 0 })
	if got := srv.sawHost("svc.test:" + tc.Port); got == 0 {
		t.Error("the check's Host is not the name svc.test")
	}
	checkers := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.checkers)
	}
	if n := checkers(); n != 1 {
		t.Errorf("%d checkers, want 1", n)
	}
	r.remove("svc.test")
	waitFor(t, "the target to go", hasURLs(s))
	if n := checkers(); n != 0 {
		t.Errorf("%d checkers after the target went, want 0", n)
	}
}

// TestDiscoveryCloseDuringLookup: Close ends a lookup that hangs.
func TestDiscoveryCloseDuringLookup(t *testing.T) {
	r := newFakeResolver()
	r.set("svc.test", "10.0.0.1")
	log, lb := newLogger()
	s := New(discoveryConfig(TargetConfig{Scheme: "http", Host: "svc.test", Port: "80", Weight: 1}), Options{Resolver: r, Logger: log})
	s.Start()
	r.mu.Lock()
	r.block = true
	r.mu.Unlock()
	r.waitRounds(t, "svc.test", 1) // a lookup is now waiting for its context (5s)
	done := make(chan struct{})
	go func() {
		s.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(hangGuard):
		t.Fatal("Close did not return while a lookup hung")
	}
	if lb.has("resolve failed") {
		t.Errorf("a lookup cut by Close was logged as a failure:\n%s", lb)
	}
}

// TestDiscoveryStartTimeout: the first lookup, in Start, is bounded: a
// hanging resolver leaves the name without targets, and Start returns.
func TestDiscoveryStartTimeout(t *testing.T) {
	r := newFakeResolver()
	r.block = true
	log, lb := newLogger()
	s := newTestSet(t, discoveryConfig(TargetConfig{Scheme: "http", Host: "svc.test", Port: "80", Weight: 1}), Options{Resolver: r, Logger: log})
	s.Start()
	if n := len(s.Targets()); n != 0 {
		t.Errorf("%d targets after a hanging first lookup, want 0", n)
	}
	if !lb.has("resolve failed", "name=svc.test", "addresses=0") {
		t.Errorf("no \"resolve failed\" line after the first lookup timed out:\n%s", lb)
	}
}

// TestDiscoveryReaddedEjected: a target whose address went away while it
// was ejected (a session kept its state) and came back after the ejection
// ended must be back in rotation.
func TestDiscoveryReaddedEjected(t *testing.T) {
	r := newFakeResolver()
	r.set("svc.test", "10.0.0.1", "10.0.0.2")
	cfg := discoveryConfig(TargetConfig{Scheme: "http", Host: "svc.test", Port: "80", Weight: 1})
	cfg.Passive = &Passive{Failures: 1, Window: time.Minute, EjectFor: 50 * time.Millisecond, MaxEjectFor: time.Minute, MaxEjectPercent: 100}
	s := newTestSet(t, cfg, Options{Resolver: r})
	s.Start()
	gone, other := s.Targets()[0], s.Targets()[1]
	openSessionOn(t, s, gone) // keeps its state while its address is away
	failOn(t, s, gone, ConnectFailed, 1)
	until := gone.st.ejectedUntil.Load()
	r.set("svc.test", "10.0.0.2")
	waitFor(t, "the address to go", hasURLs(s, "http://10.0.0.2:80"))
	waitFor(t, "the ejection's end", func() bool { return time.Now().UnixNano() > until })
	// Another ejection makes the ejector run once more and settle: it no
	// longer sees the removed target.
	failOn(t, s, other, ConnectFailed, 1)
	waitFor(t, "the other target's ejection to end", other.Healthy)

	r.set("svc.test", "10.0.0.1", "10.0.0.2")
	waitFor(t, "the address to come back", hasURLs(s, "http://10.0.0.1:80", "http://10.0.0.2:80"))
	back := s.Targets()[0]
	waitFor(t, "the re-added target, whose ejection has ended, in rotation", back.Healthy)
}
