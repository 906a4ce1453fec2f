package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/wsgate/wsgate/upstream"
	"github.com/wsgate/wsgate/wsrelay"
)

// t0 is the start of the fake sessions.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// fakeSessions is a registry in memory that records what the API asked
// of it.
type fakeSessions struct {
	mu       sync.Mutex
	infos    []wsrelay.Info   // guarded by mu
	closeErr map[string]error // guarded by mu; an error Close returns for an id
	sendErr  map[string]error // guarded by mu; an error Send returns for an id
	closes   []closeCall      // guarded by mu
	sends    []sendCall       // guarded by mu
	casts    []sendCall       // guarded by mu; id is the route
	perRoute map[string]int   // guarded by mu; what Broadcast returns
	filters  []wsrelay.Filter // guarded by mu
}

type closeCall struct {
	id     string
	code   uint16
	reason string
}

type sendCall struct {
	id     string
	binary bool
	msg    []byte
}

// newFakeSessions returns a registry with three sessions: a and b on
// route chat, c on route feed (closing).
func newFakeSessions() *fakeSessions {
	return &fakeSessions{
		infos: []wsrelay.Info{
			{ID: "a", Route: "chat", Upstream: "chat", Target: "ws://10.0.0.1:8080", Client: "192.0.2.1:5000", Started: t0, LastActive: t0.Add(time.Second),
				FromClient: wsrelay.Flow{Messages: 3, Bytes: 30}, FromBackend: wsrelay.Flow{Messages: 4, Bytes: 40}},
			{ID: "b", Route: "chat", Upstream: "chat", Target: "ws://10.0.0.2:8080", Client: "192.0.2.2:5001", Started: t0.Add(time.Second), LastActive: t0.Add(2 * time.Second)},
			{ID: "c", Route: "feed", Upstream: "feed", Target: "ws://10.0.0.3:8080", Client: "192.0.2.1:5002", Started: t0.Add(2 * time.Second), LastActive: t0.Add(3 * time.Second), Closing: true},
		},
		closeErr: map[string]error{"c": wsrelay.ErrClosing, "boom": errors.New("disk on fire")},
		sendErr:  map[string]error{"c": wsrelay.ErrClosing, "big": wsrelay.ErrTooBig, "busy": wsrelay.ErrBusy, "boom": errors.New("disk on fire")},
		perRoute: map[string]int{"chat": 2, "feed": 1},
	}
}

func (f *fakeSessions) List(flt wsrelay.Filter) []wsrelay.Info {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.filters = append(f.filters, flt)
	var out []wsrelay.Info
	for _, in := range f.infos {
		host, _, _ := net.SplitHostPort(in.Client)
		switch {
		case flt.Route != "" && flt.Route != in.Route,
			flt.Upstream != "" && flt.Upstream != in.Upstream,
			flt.Target != "" && flt.Target != in.Target,
			flt.Client != "" && flt.Client != in.Client && flt.Client != host:
			continue
		}
		out = append(out, in)
	}
	return out
}

func (f *fakeSessions) Get(id string) (wsrelay.Info, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, in := range f.infos {
		if in.ID == id {
			return in, true
		}
	}
	return wsrelay.Info{}, false
}

func (f *fakeSessions) has(id string) bool {
	for _, in := range f.infos {
		if in.ID == id {
			return true
		}
	}
	return false
}

func (f *fakeSessions) Close(id string, code uint16, reason string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err, ok := f.closeErr[id]; ok {
		return err
	}
	if !f.has(id) {
		return wsrelay.ErrNotFound
	}
	f.closes = append(f.closes, closeCall{id, code, reason})
	return nil
}

func (f *fakeSessions) Send(id string, binary bool, msg []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err, ok := f.sendErr[id]; ok {
		return err
	}
	if !f.has(id) {
		return wsrelay.ErrNotFound
	}
	f.sends = append(f.sends, sendCall{id, binary, bytes.Clone(msg)})
	return nil
}

func (f *fakeSessions) Broadcast(route string, binary bool, msg []byte) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.casts = append(f.casts, sendCall{route, binary, bytes.Clone(msg)})
	return f.perRoute[route]
}

// lastFilter returns the filter of the last List.
func (f *fakeSessions) lastFilter() wsrelay.Filter {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.filters) == 0 {
		return wsrelay.Filter{}
	}
	return f.filters[len(f.filters)-1]
}

// calls returns copies of what the registry was asked.
func (f *fakeSessions) calls() (closes []closeCall, sends, casts []sendCall) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]closeCall(nil), f.closes...), append([]sendCall(nil), f.sends...), append([]sendCall(nil), f.casts...)
}

// testUpstreams is what Options.Upstreams returns in tests.
var testUpstreams = []upstream.SetStatus{{
	Name: "chat", Policy: "round_robin",
	Targets: []upstream.TargetStatus{
		{URL: "ws://10.0.0.1:8080", Host: "10.0.0.1:8080", Weight: 1, Healthy: true, State: "up", Sessions: 1},
		{URL: "ws://10.0.0.2:8080", Host: "10.0.0.2:8080", Weight: 1, State: "unhealthy,ejected", Ejections: 2, Sessions: 1, InFlight: 3},
	},
}}

// testOptions returns options with every endpoint on, backed by fakes.
func testOptions(s *fakeSessions) Options {
	return Options{
		Sessions:  s,
		Upstreams: func() []upstream.SetStatus { return testUpstreams },
		Routes:    func() []string { return []string{"chat", "feed"} },
		Config:    func() any { return map[string]any{"admin": map[string]any{"token": "REDACTED"}} },
		Reload:    func() ReloadResult { return ReloadResult{OK: true, Changes: map[string]any{"routes": 1}} },
		Ready:     func() (bool, string) { return true, "" },
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; version=0.0.4")
			io.WriteString(w, "wsgate_up 1\n")
		}),
		Overview: func() Overview {
			return Overview{
				Time:          t0.Add(time.Minute),
				Routes:        []RouteOverview{{Route: "chat", Sessions: 2, FromClient: wsrelay.Flow{Messages: 10, Bytes: 100}, Handshakes: 5, Refused: 1}},
				Upstreams:     testUpstreams,
				Sessions:      s.List(wsrelay.Filter{}),
				SessionsTotal: 3,
			}
		},
	}
}

// serve starts h on 127.0.0.1:0 for the test.
func serve(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// response is an answer read whole.
type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends one request to srv with the given headers ("Host" sets the
// request's Host) and reads the answer.
func do(t *testing.T, srv *httptest.Server, method, path string, body io.Reader, hdr ...string) response {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return response{res.StatusCode, res.Header, b}
}

// jsonOf decodes a JSON answer into a generic value, for comparisons.
func jsonOf(t *testing.T, b []byte) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("answer %q is not JSON: %v", b, err)
	}
	return v
}

// wantJSON checks that r has status and a JSON body equal to want (a
// JSON text).
func wantJSON(t *testing.T, r response, status int, want string) {
	t.Helper()
	if r.status != status {
		t.Errorf("status %d, want %d (body %s)", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	got, _ := json.Marshal(jsonOf(t, r.body))
	wantN, _ := json.Marshal(jsonOf(t, []byte(want)))
	if !bytes.Equal(got, wantN) {
		t.Errorf("body %s, want %s", got, wantN)
	}
}

// wantError checks that r is a JSON error with status.
func wantError(t *testing.T, r response, status int) string {
	t.Helper()
	if r.status != status {
		t.Errorf("status %d, want %d (body %s)", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var e struct {
		Error *string `json:"error"`
	}
	if err := json.Unmarshal(r.body, &e); err != nil || e.Error == nil || *e.Error == "" {
		t.Errorf("body %s, want {\"error\": \"...\"}", r.body)
		return ""
	}
	return *e.Error
}
