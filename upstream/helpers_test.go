package upstream

import (
	"bytes"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// hangGuard is how long a test waits for something that must happen
// eventually. It is a guard against a hang, not a speed requirement.
const hangGuard = 20 * time.Second

// waitFor polls cond until it holds, failing the test after hangGuard.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", hangGuard, what)
		}
		<-tick.C
	}
}

// logBuf collects a logger's text output for assertions.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// lines returns the log lines that contain every one of subs.
func (l *logBuf) lines(subs ...string) []string {
	var out []string
	for line := range strings.Lines(l.String()) {
		ok := true
		for _, s := range subs {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			out = append(out, strings.TrimRight(line, "\n"))
		}
	}
	return out
}

// count returns how many log lines contain every one of subs.
func (l *logBuf) count(subs ...string) int { return len(l.lines(subs...)) }

// has reports whether a log line contains every one of subs.
func (l *logBuf) has(subs ...string) bool { return l.count(subs...) > 0 }

// newLogger returns a debug-level text logger writing into a logBuf.
func newLogger() (*slog.Logger, *logBuf) {
	lb := &logBuf{}
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), lb
}

// seededRand returns a deterministic random source, safe for concurrent
// use, for Options.Rand.
func seededRand(seed uint64) func() uint64 {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var mu sync.Mutex
	return func() uint64 {
		mu.Lock()
		defer mu.Unlock()
		return r.Uint64()
	}
}

// fakeTargets returns n http targets at 10.0.0.1:8080, 10.0.0.2:8080, …
// with the given weights (1 when weights is shorter). Nothing listens
// there: the balancing tests never dial.
func fakeTargets(n int, weights ...int) []TargetConfig {
	tcs := make([]TargetConfig, n)
	for i := range tcs {
		w := 1
		if i < len(weights) {
			w = weights[i]
		}
		tcs[i] = TargetConfig{Scheme: "http", Host: fmt.Sprintf("10.0.0.%d", i+1), Port: "8080", Weight: w}
	}
	return tcs
}

// newTestSet builds a set that is closed when the test ends. A nil
// Logger becomes a logger into a buffer the test does not read.
func newTestSet(t testing.TB, cfg *Config, o Options) *Set {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "test"
	}
	if o.Logger == nil {
		o.Logger, _ = newLogger()
	}
	if o.Rand == nil {
		o.Rand = seededRand(1)
	}
	s := New(cfg, o)
	t.Cleanup(s.Close)
	return s
}

// pick runs one attempt's first try and returns its target, held (the
// caller releases it).
func pick(s *Set, key []byte) *Target {
	var a Attempt
	s.Begin(&a, time.Now(), key)
	return a.Next()
}

// pickRelease picks a target and releases it at once, as a request that
// got its response would.
func pickRelease(s *Set, key []byte) *Target {
	t := pick(s, key)
	if t != nil {
		t.Release()
	}
	return t
}

// openSession picks a target and opens a WebSocket session on it.
func openSession(s *Set) *Target {
	t := pick(s, nil)
	if t != nil {
		t.SessionOpened()
	}
	return t
}

// setDown sets or clears a down bit of t the way the set's own code does:
// under the set's mutex, then a new table.
func setDown(s *Set, t *Target, bit uint32, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if on {
		t.st.down.Or(bit)
	} else {
		t.st.down.And(^bit)
	}
	s.rebuild()
}

// targetByURL returns the target of s with the given URL, or nil.
func targetByURL(s *Set, url string) *Target {
	for _, t := range s.Targets() {
		if t.URL == url {
			return t
		}
	}
	return nil
}

// urls returns the URLs of ts.
func urls(ts []*Target) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.URL
	}
	return out
}

// localTarget returns the target config of a server listening at addr
// (127.0.0.1:port).
func localTarget(t testing.TB, addr string) TargetConfig {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("SplitHostPort(%q): %v", addr, err)
	}
	return TargetConfig{Scheme: "http", Host: host, Port: port, Weight: 1}
}

// statusServer is an HTTP backend whose answer to every request can be
// changed while it runs.
type statusServer struct {
	srv    *httptest.Server
	status sync.Mutex
	code   int
	hits   map[int]int    // guarded by status: requests answered, by status
	hosts  map[string]int // guarded by status: Host headers seen
	agents map[string]int // guarded by status: User-Agent headers seen
}

// newStatusServer starts a server on 127.0.0.1:0 answering code.
func newStatusServer(t testing.TB, code int) *statusServer {
	t.Helper()
	ss := &statusServer{code: code, hits: map[int]int{}, hosts: map[string]int{}, agents: map[string]int{}}
	ss.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ss.status.Lock()
		c := ss.code
		ss.hits[c]++
		ss.hosts[r.Host]++
		ss.agents[r.UserAgent()]++
		ss.status.Unlock()
		w.WriteHeader(c)
		_, _ = w.Write([]byte("ok")) // refused for a 204: no body then

	}))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ss.srv.Listener = l
	ss.srv.Start()
	t.Cleanup(ss.srv.Close)
	return ss
}

func (ss *statusServer) addr() string { return ss.srv.Listener.Addr().String() }

func (ss *statusServer) set(code int) {
	ss.status.Lock()
	defer ss.status.Unlock()
	ss.code = code
}

// served returns how many requests were answered with code.
func (ss *statusServer) served(code int) int {
	ss.status.Lock()
	defer ss.status.Unlock()
	return ss.hits[code]
}

func (ss *statusServer) sawHost(h string) int {
	ss.status.Lock()
	defer ss.status.Unlock()
	return ss.hosts[h]
}

func (ss *statusServer) sawAgent(ua string) int {
	ss.status.Lock()
	defer ss.status.Unlock()
	return ss.agents[ua]
}

// u returns t's URL for messages, "<nil>" for no target.
func u(t *Target) string {
	if t == nil {
		return "<nil>"
	}
	return t.URL
}
