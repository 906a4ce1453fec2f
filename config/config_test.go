package config

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wsgate/wsgate/routes"
	wsupstream "github.com/wsgate/wsgate/upstream"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// TestGolden loads each testdata/*.yaml and compares the result, a summary
// of the config or the exact error text, with the .golden file beside it.
func TestGolden(t *testing.T) {
	t.Setenv("WSGATE_TEST_PORT", "9001")
	t.Setenv("WSGATE_TEST_EMPTY", "")
	unsetenv(t, "WSGATE_TEST_HOST")
	unsetenv(t, "WSGATE_TEST_UNSET")

	files, err := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata: %v", err)
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".yaml"), func(t *testing.T) {
			cfg, err := Load(file)
			var got string
			if err != nil {
				got = err.Error() + "\n"
			} else {
				got = summarize(t, cfg, "testdata")
			}
			golden := strings.TrimSuffix(file, ".yaml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./config -update)", err)
			}
			if got != string(want) {
				t.Errorf("Load(%q) =\n%s\nwant (%s):\n%s", file, got, golden, want)
			}
		})
	}
}

// unsetenv unsets key for the test, restoring it afterwards.
func unsetenv(t *testing.T, key string) {
	t.Setenv(key, "") // registers the restore
	os.Unsetenv(key)
}

// summarize dumps what the rest of wsgate reads from cfg as indented JSON,
// with file paths relative to base so that the dump is the same anywhere.
func summarize(t *testing.T, cfg *Config, base string) string {
	t.Helper()
	absBase, err := filepath.Abs(base)
	if err != nil {
		t.Fatal(err)
	}
	rel := func(p string) string {
		if !filepath.IsAbs(p) {
			t.Errorf("path %q is not absolute", p)
		}
		r, err := filepath.Rel(absBase, p)
		if err != nil {
			t.Fatal(err)
		}
		return filepath.ToSlash(r)
	}

	type listener struct {
		Addr, Builtin string
		Certificates  []CertPair `json:",omitempty"`
		MinVersionTLS uint16     `json:",omitempty"`
	}
	type upstreamTLS struct {
		ServerName         string
		InsecureSkipVerify bool
		RootCAs            bool
		MinVersion         uint16
	}
	type health struct {
		Path, Interval, Timeout      string
		Expect                       []wsupstream.StatusRange
		HealthyAfter, UnhealthyAfter int
		Headers                      []wsupstream.Header                               `json:",omitempty"`
		WebSocket                    *struct{ Path, Subprotocol, Send, Expect string } `json:",omitempty"`
	}
	type passive struct {
		Failures                      int
		Window, EjectFor, MaxEjectFor string
		MaxEjectPercent               int
		Count5xx                      bool
	}
	type target struct {
		Scheme, Addr string
		Weight       int `json:",omitempty"`
	}
	type upstream struct {
		Targets         []target
		TLS             *upstreamTLS
		ConnectTimeout  string
		ResponseTimeout string
		MaxConnections  int
		Policy          string
		Key             string             `json:",omitempty"`
		Sticky          *wsupstream.Sticky `json:",omitempty"`
		Health          *health            `json:",omitempty"`
		Passive         *passive           `json:",omitempty"`
		Retries         int
		TryTimeout      string
		RetryBodyLimit  int64
		ResolveEvery    string   `json:",omitempty"`
		Resolvers       []string `json:",omitempty"`
		OnTargetRemoved string
	}
	type webSocket struct {
		Enabled                       bool
		Origins                       []string
		MaxMessageSize                int64
		IdleTimeout, HandshakeTimeout string
		OnChange                      string
		CloseCode                     uint16
		CloseReason                   string
		Subprotocols                  []string `json:",omitempty"`
		RequireSubprotocol            bool
		MaxSessions, MaxSessionsPerIP int    `json:",omitempty"`
		Ping                          string `json:",omitempty"` // interval/timeout
		TCPUserTimeout                string
		MaxMessagesPerSecond          float64 `json:",omitempty"`
		MessageBurst                  int     `json:",omitempty"`
		DropOverRate                  bool    `json:",omitempty"`
		ValidateUTF8                  bool
	}
	type route struct {
		Name, ID, Upstream              string
		Index                           int
		Hosts, Methods                  []string
		Path, PathPrefix                string
		StripPrefix                     bool
		MaxRequestBody                  int64
		RequestHeaders, ResponseHeaders routes.HeaderOps
		WebSocket                       webSocket
		Respond                         *routes.Respond  `json:",omitempty"`
		Redirect                        *routes.Redirect `json:",omitempty"`
		Static                          *routes.Static   `json:",omitempty"`
		Limits                          *routes.Limits   `json:",omitempty"`
		Auth                            *routes.Auth     `json:",omitempty"`
	}
	var s struct {
		Warnings  []string `json:",omitempty"`
		Listeners []listener
		Upstreams map[string]upstream
		Routes    []route
		Limits    Limits
		Timeouts  map[string]string
		Trusted   []string
		Admin     *Admin `json:",omitempty"`
	}

	for _, w := range cfg.Warnings {
		s.Warnings = append(s.Warnings, w.Error())
	}
	for _, l := range cfg.Listeners {
		sl := listener{Addr: l.Addr, Builtin: l.Builtin}
		if l.TLS != nil {
			for _, c := range l.TLS.Certificates {
				sl.Certificates = append(sl.Certificates, CertPair{Cert: rel(c.Cert), Key: rel(c.Key)})
			}
			sl.MinVersionTLS = l.TLS.MinVersionTLS
		}
		s.Listeners = append(s.Listeners, sl)
	}
	s.Upstreams = map[string]upstream{}
	ups := map[*routes.Upstream]bool{}
	for _, r := range cfg.Table.Routes() {
		if r.Upstream != nil {
			ups[r.Upstream] = true
		}
	}
	for ru := range ups {
		u := cfg.UpstreamConfigs[ru.Name]
		su := upstream{
			ConnectTimeout:  u.ConnectTimeout.String(),
			ResponseTimeout: u.ResponseTimeout.String(),
			MaxConnections:  u.MaxConnections,
		}
		for _, tc := range u.Targets {
			w := tc.Weight
			if w == 1 {
				w = 0 // the default: not shown
			}
			su.Targets = append(su.Targets, target{tc.Scheme, tc.Addr(), w})
		}
		su.Policy, su.Key = u.Policy.String(), u.Key.String()
		if u.Policy == wsupstream.Cookie {
			su.Sticky = &u.Sticky
		}
		if h := u.Health; h != nil {
			sh := &health{Path: h.Path, Interval: h.Interval.String(), Timeout: h.Timeout.String(), Expect: h.Expect,
				HealthyAfter: h.HealthyAfter, UnhealthyAfter: h.UnhealthyAfter, Headers: h.Headers}
			if w := h.WebSocket; w != nil {
				sh.WebSocket = &struct{ Path, Subprotocol, Send, Expect string }{w.Path, w.Subprotocol, w.Send, ""}
				if w.Expect != nil {
					sh.WebSocket.Expect = w.Expect.String()
				}
			}
			su.Health = sh
		}
		if p := u.Passive; p != nil {
			su.Passive = &passive{p.Failures, p.Window.String(), p.EjectFor.String(), p.MaxEjectFor.String(), p.MaxEjectPercent, p.Count5xx}
		}
		su.Retries, su.TryTimeout, su.RetryBodyLimit = u.Retries, u.TryTimeout.String(), u.RetryBodyLimit
		if u.ResolveEvery > 0 {
			su.ResolveEvery = u.ResolveEvery.String()
		}
		su.Resolvers = u.Resolvers
		su.OnTargetRemoved = u.OnTargetRemoved
		if c := u.TLS; c != nil {
			su.TLS = &upstreamTLS{c.ServerName, c.InsecureSkipVerify, c.RootCAs != nil, c.MinVersion}
		}
		s.Upstreams[u.Name] = su
	}
	for _, r := range cfg.Table.Routes() {
		sr := route{
			Name: r.Name, ID: r.ID, Index: r.Index, Hosts: r.Hosts, Methods: r.Methods,
			Path: r.Path, PathPrefix: r.PathPrefix, StripPrefix: r.StripPrefix,
			MaxRequestBody: r.MaxRequestBody,
			RequestHeaders: r.RequestHeaders, ResponseHeaders: r.ResponseHeaders,
			WebSocket: webSocket{
				Enabled: r.WebSocket.Enabled, Origins: r.WebSocket.Origins,
				MaxMessageSize: r.WebSocket.MaxMessageSize,
				IdleTimeout:    r.WebSocket.IdleTimeout.String(), HandshakeTimeout: r.WebSocket.HandshakeTimeout.String(),
				OnChange:  r.WebSocket.OnChange.String(),
				CloseCode: r.WebSocket.CloseCode, CloseReason: r.WebSocket.CloseReason,
				Subprotocols: r.WebSocket.Subprotocols, RequireSubprotocol: r.WebSocket.RequireSubprotocol,
				MaxSessions: r.WebSocket.MaxSessions, MaxSessionsPerIP: r.WebSocket.MaxSessionsPerIP,
				TCPUserTimeout:       r.WebSocket.TCPUserTimeout.String(),
				MaxMessagesPerSecond: r.WebSocket.MaxMessagesPerSecond, MessageBurst: r.WebSocket.MessageBurst,
				DropOverRate: r.WebSocket.DropOverRate, ValidateUTF8: r.WebSocket.ValidateUTF8,
			},
			Respond: r.Respond, Redirect: r.Redirect, Auth: r.Auth,
		}
		if r.WebSocket.PingInterval > 0 {
			sr.WebSocket.Ping = r.WebSocket.PingInterval.String() + "/" + r.WebSocket.PingTimeout.String()
		}
		if r.Limits != (routes.Limits{}) {
			sr.Limits = &r.Limits
		}
		if r.Auth != nil && r.Auth.JWT != nil {
			j := *r.Auth.JWT
			j.KeyFiles = append([]string(nil), j.KeyFiles...)
			for i := range j.KeyFiles {
				j.KeyFiles[i] = rel(j.KeyFiles[i])
			}
			if j.JWKSFile != "" {
				j.JWKSFile = rel(j.JWKSFile)
			}
			sr.Auth = &routes.Auth{Forward: r.Auth.Forward, JWT: &j}
		}
		if r.Upstream != nil {
			sr.Upstream = r.Upstream.Name
		}
		if r.Static != nil {
			sr.Static = &routes.Static{Root: rel(r.Static.Root)}
		}
		s.Routes = append(s.Routes, sr)
	}
	s.Limits = cfg.Limits
	tm := cfg.Timeouts
	s.Timeouts = map[string]string{
		"request_header": tm.RequestHeader.String(), "request_body": tm.RequestBody.String(),
		"write": tm.Write.String(), "idle": tm.Idle.String(), "drain": tm.Drain.String(),
		"reload_drain": tm.ReloadDrain.String(), "shutdown_delay": tm.ShutdownDelay.String(),
	}
	for _, p := range cfg.Trusted {
		s.Trusted = append(s.Trusted, p.String())
	}
	s.Admin = cfg.Admin
	out, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return string(out) + "\n"
}

// TestExampleOptionalBlocks uncomments the health and passive blocks of
// the example's demo upstream, which state their defaults in comments,
// and checks that they compile to the defaults.
func TestExampleOptionalBlocks(t *testing.T) {
	data, err := os.ReadFile("../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	in := false
	found := 0
	for i, l := range lines {
		switch {
		case strings.HasPrefix(l, "    # health:"), strings.HasPrefix(l, "    # passive:"):
			in = true
			found++
		case !strings.HasPrefix(l, "    # "):
			in = false
		}
		if in {
			lines[i] = "    " + strings.TrimPrefix(l, "    # ")
		}
	}
	if found != 2 {
		t.Fatalf("found %d of the commented health and passive blocks in config.example.yaml, want 2", found)
	}
	cfg, err := Parse("config.example.yaml", []byte(strings.Join(lines, "\n")))
	if err != nil {
		t.Fatalf("example with its health and passive blocks uncommented: %v", err)
	}
	got := cfg.UpstreamConfigs["demo"]
	want := loadString(t, `
listeners: [{addr: "127.0.0.1:0"}]
upstreams:
  demo:
    targets: ["http://127.0.0.1:8081"]
    health: {path: /healthz, websocket: {path: /echo}}
    passive: {}
routes: [{match: {path_prefix: /}, upstream: demo}]
`).UpstreamConfigs["demo"]
	if !reflect.DeepEqual(got.Health, want.Health) {
		t.Errorf("health = %+v, want the defaults %+v", got.Health, want.Health)
	}
	if !reflect.DeepEqual(got.Passive, want.Passive) {
		t.Errorf("passive = %+v, want the defaults %+v", got.Passive, want.Passive)
	}
}

// TestExample loads config.example.yaml, which must work as it is and
// state every default.
func TestExample(t *testing.T) {
	unsetenv(t, "WSGATE_ADMIN_TOKEN")
	cfg, err := Load("../config.example.yaml")
	if err != nil {
		t.Fatalf("Load(config.example.yaml): %v", err)
	}
	if cfg.Limits != defaultLimits {
		t.Errorf("limits = %+v, want the defaults %+v", cfg.Limits, defaultLimits)
	}
	if cfg.Timeouts != defaultTimeouts {
		t.Errorf("timeouts = %+v, want the defaults %+v", cfg.Timeouts, defaultTimeouts)
	}
	if len(cfg.Trusted) != 0 {
		t.Errorf("trusted_proxies = %v, want none", cfg.Trusted)
	}
	// The example turns the admin listener on, on loopback, without a
	// token unless WSGATE_ADMIN_TOKEN is set.
	if want := (Admin{Addr: "127.0.0.1:9901"}); cfg.Admin == nil || *cfg.Admin != want {
		t.Errorf("admin = %+v, want %+v", cfg.Admin, want)
	}
	if len(cfg.Warnings) != 0 {
		t.Errorf("warnings = %v, want none", cfg.Warnings)
	}

	// The demo: a public listener serving the routes, and the built-in
	// demo backend that upstream "demo" points at.
	if len(cfg.Listeners) != 2 ||
		cfg.Listeners[0].Addr != "127.0.0.1:8080" || cfg.Listeners[0].Builtin != "" || cfg.Listeners[0].TLS != nil ||
		cfg.Listeners[1].Addr != "127.0.0.1:8081" || cfg.Listeners[1].Builtin != BuiltinDemo {
		t.Errorf("listeners = %+v, want 127.0.0.1:8080 (routes) and 127.0.0.1:8081 (demo)", cfg.Listeners)
	}
	r := cfg.Table.Match([]byte("GET"), []byte("127.0.0.1:8080"), []byte("/echo"))
	if r == nil || r.Upstream == nil || r.Upstream.Name != "demo" {
		t.Fatalf("Match(/echo) = %+v, want a route to upstream demo", r)
	}
	u := cfg.UpstreamConfigs[r.Upstream.Name]
	if len(u.Targets) != 1 || u.Targets[0].URL() != "http://127.0.0.1:8081" {
		t.Errorf("upstream demo targets = %+v, want http 127.0.0.1:8081", u.Targets)
	}
	// The demo upstream states every default: it compiles to what an
	// upstream with only its targets compiles to.
	bare := loadString(t, `
listeners: [{addr: "127.0.0.1:0"}]
upstreams: {demo: {targets: ["http://127.0.0.1:8081"]}}
routes: [{match: {path_prefix: /}, upstream: demo}]
`).UpstreamConfigs["demo"]
	if !reflect.DeepEqual(u, bare) {
		t.Errorf("upstream demo = %+v, want the defaults %+v", u, bare)
	}
	wantWS := routes.WebSocket{Enabled: true, MaxMessageSize: defaultMaxMessageSize, IdleTimeout: defaultIdleTimeout, HandshakeTimeout: defaultHandshakeTimeout,
		OnChange: routes.Drain, CloseCode: defaultOnChangeCode, CloseReason: defaultOnChangeReason}
	if r.WebSocket.Enabled != wantWS.Enabled || len(r.WebSocket.Origins) != 0 || r.WebSocket.MaxMessageSize != wantWS.MaxMessageSize ||
		r.WebSocket.IdleTimeout != wantWS.IdleTimeout || r.WebSocket.HandshakeTimeout != wantWS.HandshakeTimeout ||
		r.WebSocket.OnChange != wantWS.OnChange || r.WebSocket.CloseCode != wantWS.CloseCode || r.WebSocket.CloseReason != wantWS.CloseReason {
		t.Errorf("websocket = %+v, want the defaults %+v", r.WebSocket, wantWS)
	}
	if r.MaxRequestBody != defaultLimits.RequestBody || r.StripPrefix || len(r.Hosts) != 0 || len(r.Methods) != 0 ||
		len(r.RequestHeaders.Set)+len(r.RequestHeaders.Remove)+len(r.ResponseHeaders.Set)+len(r.ResponseHeaders.Remove) != 0 {
		t.Errorf("demo route = %+v, want the defaults", r)
	}

	// Every route of the example states the defaults of the keys it leaves
	// out; comparing with the same file minus those keys would need a YAML
	// rewriter, so check the compiled defaults of one minimal route instead.
	minimal := loadString(t, `
listeners: [{addr: "127.0.0.1:0"}]
upstreams: {demo: {targets: ["http://127.0.0.1:8081"]}}
routes: [{match: {path_prefix: /}, upstream: demo}]
`)
	m := minimal.Table.Routes()[0]
	if m.WebSocket.Enabled != r.WebSocket.Enabled || m.WebSocket.MaxMessageSize != r.WebSocket.MaxMessageSize ||
		m.WebSocket.IdleTimeout != r.WebSocket.IdleTimeout || m.WebSocket.HandshakeTimeout != r.WebSocket.HandshakeTimeout ||
		m.WebSocket.OnChange != r.WebSocket.OnChange || m.WebSocket.CloseCode != r.WebSocket.CloseCode ||
		m.WebSocket.CloseReason != r.WebSocket.CloseReason || m.MaxRequestBody != r.MaxRequestBody {
		t.Errorf("minimal route = %+v, example route = %+v: the example does not state the defaults", m, r)
	}
	if minimal.Limits != cfg.Limits || minimal.Timeouts != cfg.Timeouts {
		t.Errorf("minimal limits/timeouts = %+v %+v, example = %+v %+v", minimal.Limits, minimal.Timeouts, cfg.Limits, cfg.Timeouts)
	}

	h := cfg.Table.Match([]byte("GET"), []byte("localhost:8080"), []byte("/healthz"))
	if h == nil || h.Respond == nil || h.Respond.Status != 200 || h.Respond.Body != "ok" {
		t.Errorf("Match(/healthz) = %+v, want respond 200 \"ok\"", h)
	}
}

func loadString(t *testing.T, yaml string) *Config {
	t.Helper()
	cfg, err := Parse(filepath.Join(t.TempDir(), "config.yaml"), []byte(yaml))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return cfg
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		err  string
	}{
		{"0", 0, ""},
		{"512", 512, ""},
		{"64KiB", 64 << 10, ""},
		{"1MiB", 1 << 20, ""},
		{"2GiB", 2 << 30, ""},
		{"5KB", 5000, ""},
		{"3MB", 3e6, ""},
		{"1GB", 1e9, ""},
		{"", 0, `invalid size ""`},
		{"KiB", 0, `invalid size "KiB"`},
		{"1.5MiB", 0, `invalid size "1.5MiB"`},
		{"+5", 0, `invalid size "+5"`},
		{"5 KiB", 0, `invalid size "5 KiB"`},
		{"5kib", 0, `invalid size "5kib"`},
		{"-1", 0, `size "-1" must not be negative`},
		{"9223372036854775807", 1<<63 - 1, ""},
		{"9223372036854775808", 0, "too large"},
		{"8589934592GiB", 0, "too large"},
	}
	for _, tt := range tests {
		got, err := parseSize(tt.in)
		switch {
		case tt.err == "" && (err != nil || got != tt.want):
			t.Errorf("parseSize(%q) = %d, %v, want %d", tt.in, got, err, tt.want)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("parseSize(%q) = %d, %v, want error containing %q", tt.in, got, err, tt.err)
		}
	}
}

func TestExpand(t *testing.T) {
	env := map[string]string{"A": "alpha", "EMPTY": "", "NL": "x\ny"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	tests := []struct {
		name, in, want, err string
	}{
		{"plain", "a: b\n", "a: b\n", ""},
		{"var", "a: ${A}\n", "a: alpha\n", ""},
		{"default unused", "a: ${A:-z}\n", "a: alpha\n", ""},
		{"default unset", "a: ${B:-z y}\n", "a: z y\n", ""},
		{"default empty", "a: ${EMPTY:-z}\n", "a: z\n", ""},
		{"empty without default", "a: [${EMPTY}]\n", "a: []\n", ""},
		{"empty default", "a: '${B:-}'\n", "a: ''\n", ""},
		{"dollar", "a: $$5 $$$${A}\n", "a: $5 $${A}\n", ""},
		{"lone dollar", "a: $5 $A $\n", "a: $5 $A $\n", ""},
		{"no newline at end", "a: ${A}", "a: alpha", ""},
		{"comment line", "  # ${B} $$\na: ${A}\n", "  # ${B} $$\na: alpha\n", ""},
		{"unset", "\n\na: ${B}\n", "", `x.yaml:3: environment variable "B" is not set`},
		{"unterminated", "a: ${A\nb: }\n", "", `x.yaml:1: unterminated "${"`},
		{"bad name", "a: ${A-B}\n", "", `x.yaml:1: invalid variable name "A-B"`},
		{"line break", "a: ${NL}\n", "", `x.yaml:1: environment variable "NL" contains a line break`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &problems{file: "x.yaml", loc: newLocator(nil)}
			got := string(expand(p, []byte(tt.in), lookup))
			err := p.err()
			if tt.err != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.err) {
					t.Errorf("expand(%q) error = %v, want %q", tt.in, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("expand(%q) = %q, %v, want %q", tt.in, got, err, tt.want)
			}
			if strings.Count(got, "\n") != strings.Count(tt.in, "\n") {
				t.Errorf("expand(%q) changed the number of lines: %q", tt.in, got)
			}
		})
	}
}

func TestLoadReadError(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "missing.yaml"))
	if err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("Load(missing) = %v, want an error naming the file", err)
	}
}

// TestParseRelativePaths checks that relative paths resolve against the
// directory of the config file, not the working directory.
func TestParseRelativePaths(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "public"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse(filepath.Join(dir, "wsgate.yaml"), []byte(`
listeners: [{addr: "127.0.0.1:0"}]
routes: [{match: {path_prefix: /}, static: {root: public}}]
`))
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(dir, "public")
	if got := cfg.Routes[0].Static.Root; got != want {
		t.Errorf("static root = %q, want %q", got, want)
	}
	if got := cfg.Table.Routes()[0].Static.Root; got != want {
		t.Errorf("compiled static root = %q, want %q", got, want)
	}
}

func TestDefaultsApplied(t *testing.T) {
	cfg := loadString(t, `
listeners: [{addr: "127.0.0.1:0"}]
upstreams: {app: {targets: ["https://backend.internal"]}}
routes:
  - {match: {path_prefix: /}, upstream: app}
  - {match: {path: /r}, redirect: {to: /}}
  - {match: {path: /ok}, respond: {}}
`)
	r := cfg.Routes[0]
	if r.Name != "routes[0]" || r.WebSocket.Enabled == nil || !*r.WebSocket.Enabled ||
		r.WebSocket.IdleTimeout != time.Hour || r.MaxRequestBody != 100<<20 {
		t.Errorf("route = %+v, want defaults applied", r)
	}
	u := cfg.Upstreams["app"]
	if u.ConnectTimeout != 5*time.Second || u.ResponseTimeout != 60*time.Second || u.MaxConnections != 0 ||
		u.Balance.Policy != "round_robin" || *u.Retries != 2 || u.TryTimeout != 10*time.Second || u.RetryBodyLimit != 64<<10 {
		t.Errorf("upstream = %+v, want defaults applied", u)
	}
	compiled := cfg.Table.Routes()
	if up := cfg.UpstreamConfigs[compiled[0].Upstream.Name]; up.TLS == nil || up.TLS.MinVersion != 0x0303 || up.TLS.RootCAs != nil ||
		up.Targets[0].URL() != "https://backend.internal:443" {
		t.Errorf("upstream = %+v, want https on port 443 with a default TLS config", up)
	}
	if compiled[1].Redirect.Status != 302 || compiled[2].Respond.Status != 200 {
		t.Errorf("redirect %+v, respond %+v: want status 302 and 200", compiled[1].Redirect, compiled[2].Respond)
	}
	for _, r := range compiled {
		if ws := r.WebSocket; ws.OnChange != routes.Drain || ws.CloseCode != 1012 || ws.CloseReason != "service restart" {
			t.Errorf("route %s: on_change %s, code %d, reason %q; want drain, 1012, %q", r.Name, ws.OnChange, ws.CloseCode, ws.CloseReason, "service restart")
		}
	}
	if got := cfg.UpstreamConfigs["app"].OnTargetRemoved; got != "drain" {
		t.Errorf("on_target_removed = %q, want drain", got)
	}
	if got := cfg.Timeouts.ReloadDrain; got != 30*time.Second {
		t.Errorf("reload_drain = %v, want 30s", got)
	}
}

// TestRouteIDs: a named route's ID is "name:" and its name, whatever it
// matches; an unnamed route's is "match:" and its match, the same in
// every parse of the same file, wherever the route sits in it, and
// different when the match changes (but not when only the spelling of
// the same match does).
func TestRouteIDs(t *testing.T) {
	const head = `
listeners: [{addr: "127.0.0.1:0"}]
upstreams: {app: {targets: ["http://127.0.0.1:9001"]}, other: {targets: ["http://127.0.0.1:9002"]}}
routes:
`
	// ids parses head and routes (one YAML flow mapping a line) and
	// returns the route IDs in file order.
	ids := func(t *testing.T, routes ...string) []string {
		t.Helper()
		doc := head
		for _, r := range routes {
			doc += "  - " + r + "\n"
		}
		var out []string
		for _, r := range loadString(t, doc).Table.Routes() {
			out = append(out, r.ID)
		}
		return out
	}
	const (
		named   = `{name: chat, match: {path: /ws}, upstream: app}`
		unnamed = `{match: {host: [api.example.com, "*.api.example.com"], path_prefix: /api/, methods: [GET, POST]}, upstream: app}`
		static  = `{match: {path: /healthz}, respond: {body: ok}}`
	)
	base := ids(t, named, unnamed, static)
	if base[0] != "name:chat" {
		t.Errorf("named route: ID %q, want %q", base[0], "name:chat")
	}
	for i, id := range base[1:] {
		if !strings.HasPrefix(id, "match:") {
			t.Errorf("unnamed route %d: ID %q, want one starting with %q", i+1, id, "match:")
		}
	}
	if base[1] == base[2] {
		t.Errorf("two unnamed routes share the ID %q", base[1])
	}
	if again := ids(t, named, unnamed, static); !slices.Equal(again, base) {
		t.Errorf("a second parse of the same file: IDs %q, want %q", again, base)
	}

	// Each case replaces one of the three routes; same says whether
	// its ID must stay what it was.
	tests := []struct {
		name  string
		index int
		route string
		same  bool
	}{
		{"named: another match", 0, `{name: chat, match: {path_prefix: /v2/ws, host: x.example.com}, upstream: other}`, true},
		{"named: another name", 0, `{name: chat2, match: {path: /ws}, upstream: app}`, false},
		{"unnamed: another upstream and settings", 1, `{match: {host: [api.example.com, "*.api.example.com"], path_prefix: /api/, methods: [GET, POST]}, upstream: other, strip_prefix: true, websocket: {max_message_size: 1KiB, on_change: close}}`, true},
		{"unnamed: spelled in another case, prefix without its slash", 1, `{match: {host: [API.example.com, "*.API.example.com"], path_prefix: /api, methods: [get, post]}, upstream: app}`, true},
		{"unnamed: another host", 1, `{match: {host: [api.example.com], path_prefix: /api/, methods: [GET, POST]}, upstream: app}`, false},
		{"unnamed: another prefix", 1, `{match: {host: [api.example.com, "*.api.example.com"], path_prefix: /api/v2, methods: [GET, POST]}, upstream: app}`, false},
		{"unnamed: a path for the prefix", 1, `{match: {host: [api.example.com, "*.api.example.com"], path: /api, methods: [GET, POST]}, upstream: app}`, false},
		{"unnamed: another method", 1, `{match: {host: [api.example.com, "*.api.example.com"], path_prefix: /api/, methods: [GET]}, upstream: app}`, false},
		{"unnamed: any method", 1, `{match: {host: [api.example.com, "*.api.example.com"], path_prefix: /api/}, upstream: app}`, false},
		{"unnamed: another body", 2, `{match: {path: /healthz}, respond: {status: 503, body: down}}`, true},
		{"unnamed: another path", 2, `{match: {path: /health}, respond: {body: ok}}`, false},
		{"unnamed, now named", 2, `{name: health, match: {path: /healthz}, respond: {body: ok}}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := []string{named, unnamed, static}
			rs[tt.index] = tt.route
			got := ids(t, rs...)
			if same := got[tt.index] == base[tt.index]; same != tt.same {
				t.Errorf("ID %q, before %q: same = %t, want %t", got[tt.index], base[tt.index], same, tt.same)
			}
			for i := range got {
				if i != tt.index && got[i] != base[i] {
					t.Errorf("route %d, unchanged: ID %q, before %q", i, got[i], base[i])
				}
			}
		})
	}

	// Where an unnamed route sits in the file does not matter.
	moved := ids(t, static, named, unnamed)
	if moved[0] != base[2] || moved[1] != base[0] || moved[2] != base[1] {
		t.Errorf("routes in another order: IDs %q, want %q", moved, []string{base[2], base[0], base[1]})
	}
}

func TestSharedUpstream(t *testing.T) {
	cfg := loadString(t, `
listeners: [{addr: "127.0.0.1:0"}]
upstreams: {app: {targets: ["http://127.0.0.1:9001"]}}
routes:
  - {match: {path: /a}, upstream: app}
  - {match: {path: /b}, upstream: app}
`)
	rs := cfg.Table.Routes()
	if rs[0].Upstream != rs[1].Upstream {
		t.Error("routes naming the same upstream got different *routes.Upstream values")
	}
}

// FuzzParse checks that Parse never panics and that every line of an error
// names the file and a line of it.
func FuzzParse(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	if err != nil {
		f.Fatal(err)
	}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	prefix := regexp.MustCompile(`^fuzz\.yaml:([1-9][0-9]*): `)
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.yaml", data)
		if err == nil {
			if cfg == nil || cfg.Table == nil {
				t.Fatal("Parse returned no error and no compiled config")
			}
			cfg.Table.Match([]byte("GET"), []byte("example.com"), []byte("/"))
			if _, err := json.Marshal(cfg.Redacted()); err != nil {
				t.Errorf("json.Marshal(Redacted()): %v", err)
			}
			return
		}
		if cfg != nil {
			t.Error("Parse returned a config and an error")
		}
		lines := bytes.Count(data, []byte("\n")) + 1
		for _, msg := range strings.Split(err.Error(), "\n") {
			m := prefix.FindStringSubmatch(msg)
			if m == nil {
				t.Errorf("error line %q does not start with fuzz.yaml:LINE:", msg)
				continue
			}
			if n, _ := strconv.Atoi(m[1]); n > lines {
				t.Errorf("error line %q: the input has %d lines", msg, lines)
			}
		}
		joined, ok := err.(interface{ Unwrap() []error })
		if !ok {
			t.Fatalf("error %T is not a list of *FieldError", err)
		}
		for _, e := range joined.Unwrap() {
			if _, ok := e.(*FieldError); !ok {
				t.Errorf("error %T (%v) is not a *FieldError", e, e)
			}
		}
	})
}
