package config

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// redactedYAML holds a secret of every kind, each with "hunter2" in it,
// next to values that are not secrets.
const redactedYAML = `
listeners:
  - addr: 127.0.0.1:0
upstreams:
  app:
    targets: [http://127.0.0.1:9001, {url: http://127.0.0.1:9002, weight: 3}]
    balance: {policy: cookie, secret: hunter2-sticky}
    health:
      path: /healthz
      headers: {Authorization: "Bearer hunter2-health", Host: app.internal}
    passive: {}
  other:
    targets: [http://127.0.0.1:9003]
    balance: {policy: hash, key: "header:Authorization"}
routes:
  - name: app
    match: {host: [App.example.com], path_prefix: /api, methods: [get]}
    upstream: app
    strip_prefix: true
    request_headers:
      set:
        Cookie: session=hunter2-cookie
        Proxy-Authorization: Basic hunter2-proxy
        X-Api-Key: hunter2-key
        x-client-SECRET: hunter2-secret
        X-Upstream-Password: hunter2-password
        X-Gateway: wsgate
      remove: [X-Debug]
    response_headers:
      set: {Set-Cookie: "sid=hunter2-set"}
    websocket: {origins: [https://app.example.com], idle_timeout: 90s, on_change_reason: ""}
  - match: {path: /healthz}
    respond: {body: ok}
  - match: {path: /old}
    redirect: {to: https://example.com/}
  - match: {path: /files}
    static: {root: public}
timeouts: {drain: 45s}
trusted_proxies: [10.0.0.0/8]
admin:
  addr: 127.0.0.1:9901
  token: hunter2-admin-token-0123456789
  ready_requires_healthy_targets: true
`

// loadRedacted parses redactedYAML in a directory with a public
// directory for the static route.
func loadRedacted(t *testing.T) *Config {
	t.Helper()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "public"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse(filepath.Join(dir, "config.yaml"), []byte(redactedYAML))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// at returns the value at a path of map keys and list indexes in a
// decoded JSON value, or nil.
func at(v any, path ...any) any {
	for _, p := range path {
		switch p := p.(type) {
		case string:
			m, _ := v.(map[string]any)
			v = m[p]
		case int:
			l, _ := v.([]any)
			if p >= len(l) {
				return nil
			}
			v = l[p]
		}
	}
	return v
}

func TestRedacted(t *testing.T) {
	cfg := loadRedacted(t)
	data, err := json.Marshal(cfg.Redacted())
	if err != nil {
		t.Fatalf("json.Marshal(Redacted()): %v", err)
	}
	if bytes.Contains(data, []byte("hunter2")) {
		t.Errorf("Redacted() shows a secret:\n%s", data)
	}
	var got any
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}

	// Keys are the YAML keys: the top level holds exactly those of the file.
	var keys []string
	for k := range got.(map[string]any) {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if want := []string{"admin", "limits", "listeners", "routes", "timeouts", "trusted_proxies", "upstreams"}; !slices.Equal(keys, want) {
		t.Errorf("top-level keys %q, want %q", keys, want)
	}

	const r = RedactedValue
	tests := []struct {
		path []any
		want any
	}{
		// Secrets.
		{[]any{"admin", "token"}, r},
		{[]any{"upstreams", "app", "balance", "secret"}, r},
		{[]any{"upstreams", "app", "health", "headers", "Authorization"}, r},
		{[]any{"routes", 0, "request_headers", "set", "Cookie"}, r},
		{[]any{"routes", 0, "request_headers", "set", "Proxy-Authorization"}, r},
		{[]any{"routes", 0, "request_headers", "set", "X-Api-Key"}, r},
		{[]any{"routes", 0, "request_headers", "set", "x-client-SECRET"}, r},
		{[]any{"routes", 0, "request_headers", "set", "X-Upstream-Password"}, r},
		{[]any{"routes", 0, "response_headers", "set", "Set-Cookie"}, r},
		// Not secrets.
		{[]any{"upstreams", "app", "health", "headers", "Host"}, "app.internal"},
		{[]any{"routes", 0, "request_headers", "set", "X-Gateway"}, "wsgate"},
		{[]any{"routes", 0, "request_headers", "remove", 0}, "X-Debug"},
		{[]any{"upstreams", "other", "balance", "key"}, "header:Authorization"},
		{[]any{"admin", "addr"}, "127.0.0.1:9901"},
		{[]any{"admin", "ready_requires_healthy_targets"}, true},
		// Values as loaded, defaults filled in.
		{[]any{"listeners", 0, "addr"}, "127.0.0.1:0"},
		{[]any{"upstreams", "app", "targets", 0, "url"}, "http://127.0.0.1:9001"},
		{[]any{"upstreams", "app", "targets", 0, "weight"}, 1.0},
		{[]any{"upstreams", "app", "targets", 1, "weight"}, 3.0},
		{[]any{"upstreams", "app", "balance", "policy"}, "cookie"},
		{[]any{"upstreams", "app", "balance", "cookie"}, "wsgate_sticky"},
		{[]any{"upstreams", "app", "connect_timeout"}, "5s"},
		{[]any{"upstreams", "app", "retries"}, 2.0},
		{[]any{"upstreams", "app", "retry_body_limit"}, 65536.0},
		{[]any{"upstreams", "app", "resolve"}, false},
		{[]any{"upstreams", "app", "health", "interval"}, "10s"},
		{[]any{"upstreams", "app", "passive", "max_eject_for"}, "5m0s"},
		{[]any{"routes", 0, "name"}, "app"},
		{[]any{"routes", 0, "match", "host", 0}, "app.example.com"},
		{[]any{"routes", 0, "match", "methods", 0}, "GET"},
		{[]any{"routes", 0, "strip_prefix"}, true},
		{[]any{"routes", 0, "max_request_body"}, 104857600.0},
		{[]any{"routes", 0, "websocket", "enabled"}, true},
		{[]any{"routes", 0, "websocket", "idle_timeout"}, "1m30s"},
		{[]any{"routes", 0, "websocket", "on_change_code"}, 1012.0},
		{[]any{"routes", 1, "name"}, "routes[1]"},
		{[]any{"routes", 1, "respond", "status"}, 200.0},
		{[]any{"routes", 2, "redirect", "to"}, "https://example.com/"},
		{[]any{"limits", "header_bytes"}, 16384.0},
		{[]any{"timeouts", "drain"}, "45s"},
		{[]any{"timeouts", "shutdown_delay"}, "0s"},
		{[]any{"trusted_proxies", 0}, "10.0.0.0/8"},
		// Left out: empty and absent.
		{[]any{"listeners", 0, "builtin"}, nil},
		{[]any{"listeners", 0, "tls"}, nil},
		{[]any{"upstreams", "app", "tls"}, nil},
		{[]any{"upstreams", "app", "resolvers"}, nil},
		{[]any{"routes", 0, "respond"}, nil},
		{[]any{"routes", 1, "request_headers"}, nil},
		// Set, but empty: not the default.
		{[]any{"routes", 0, "websocket", "on_change_reason"}, ""},
		{[]any{"routes", 1, "upstream"}, nil},
		// Compiled fields are not shown.
		{[]any{"table"}, nil},
		{[]any{"listeners", 0, "tls", "min_version_tls"}, nil},
	}
	for _, tt := range tests {
		if v := at(got, tt.path...); !reflect.DeepEqual(v, tt.want) {
			t.Errorf("Redacted() at %v = %#v, want %#v", tt.path, v, tt.want)
		}
	}
	if root, _ := at(got, "routes", 3, "static", "root").(string); !filepath.IsAbs(root) {
		t.Errorf("static root %q, want an absolute path", root)
	}
}

// TestRedactedRoundTrip checks that Redacted survives encoding/json, and
// that its JSON, which is YAML, loads (strictly: so every key is a YAML
// key) into a config with the same Redacted view.
func TestRedactedRoundTrip(t *testing.T) {
	for _, tt := range []struct {
		name string
		cfg  func(t *testing.T) *Config
	}{
		{"secrets", loadRedacted},
		{"minimal", func(t *testing.T) *Config {
			return loadString(t, `{listeners: [{addr: "127.0.0.1:0"}]}`)
		}},
		{"example", func(t *testing.T) *Config {
			unsetenv(t, "WSGATE_ADMIN_TOKEN")
			cfg, err := Load("../config.example.yaml")
			if err != nil {
				t.Fatal(err)
			}
			return cfg
		}},
		{"tls", func(t *testing.T) *Config {
			dir := t.TempDir()
			writeCert(t, dir, "site", "example.com", nil, nil)
			writeCert(t, dir, "ca", "wsgate test CA", nil, nil)
			cfg, err := Parse(filepath.Join(dir, "config.yaml"), []byte(`
listeners: [{addr: "127.0.0.1:0", tls: {certificates: [{cert: site.pem, key: site-key.pem}], min_version: "1.3"}}]
upstreams: {app: {targets: ["https://127.0.0.1:9001"], tls: {ca: ca.pem, server_name: app.internal, insecure_skip_verify: true}}}
routes: [{match: {path_prefix: /}, upstream: app}]
`))
			if err != nil {
				t.Fatal(err)
			}
			key := cfg.Listeners[0].TLS.Certificates[0].Key
			if v := at(cfg.Redacted(), "listeners", 0, "tls", "certificates", 0, "key"); v != key || !filepath.IsAbs(key) {
				t.Errorf("Redacted() key path %v, want the absolute path %q", v, key)
			}
			return cfg
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg(t)
			data, err := json.Marshal(cfg.Redacted())
			if err != nil {
				t.Fatal(err)
			}
			var v any
			if err := json.Unmarshal(data, &v); err != nil {
				t.Fatal(err)
			}
			again, err := json.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again, data) {
				t.Errorf("JSON round trip:\n%s\nwant\n%s", again, data)
			}

			reloaded, err := Parse(filepath.Join(t.TempDir(), "redacted.yaml"), data)
			if err != nil {
				t.Fatalf("the Redacted JSON does not load as a config: %v\n%s", err, data)
			}
			data2, err := json.Marshal(reloaded.Redacted())
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(data2, data) {
				t.Errorf("Redacted() of its own JSON:\n%s\nwant\n%s", data2, data)
			}
		})
	}
}

// TestRedactedShares checks that changing Redacted's result leaves the
// config alone.
func TestRedactedShares(t *testing.T) {
	cfg := loadRedacted(t)
	v := cfg.Redacted().(map[string]any)
	v["trusted_proxies"].([]any)[0] = "0.0.0.0/0"
	v["routes"].([]any)[0].(map[string]any)["match"].(map[string]any)["host"].([]any)[0] = "x"
	if cfg.TrustedProxies[0] != "10.0.0.0/8" || cfg.Routes[0].Match.Host[0] != "app.example.com" {
		t.Errorf("changing Redacted's result changed the config: %q %q", cfg.TrustedProxies, cfg.Routes[0].Match.Host)
	}
	if (*Config)(nil).Redacted() != nil {
		t.Error("(*Config)(nil).Redacted() is not nil")
	}
}

// TestRedactTags checks that every field a secret may hide in carries a
// redact tag: fields named like a secret, and header maps.
func TestRedactTags(t *testing.T) {
	seen := map[reflect.Type]bool{}
	var walk func(t reflect.Type, path string)
	check := func(tb *testing.T, f reflect.StructField, path string) {
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		tag := f.Tag.Get("redact")
		lower := strings.ToLower(name)
		switch {
		case strings.HasSuffix(lower, "_file"):
			// The path of a file that holds a secret (token_file), not
			// the secret: shown, so that an operator sees which file.
		case strings.Contains(lower, "token") || strings.Contains(lower, "secret") || strings.Contains(lower, "password"):
			if tag != redactSecret {
				tb.Errorf("%s.%s: want the tag redact:%q", path, name, redactSecret)
			}
		case f.Type == reflect.TypeFor[map[string]string]() && (strings.Contains(lower, "header") || name == "set") &&
			name != "claims_to_headers": // claim → header name: no header values
			if tag != redactHeaders {
				tb.Errorf("%s.%s: want the tag redact:%q", path, name, redactHeaders)
			}
		}
	}
	walk = func(typ reflect.Type, path string) {
		for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice || typ.Kind() == reflect.Map {
			typ = typ.Elem()
		}
		if typ.Kind() != reflect.Struct || seen[typ] || typ == reflect.TypeFor[time.Duration]() {
			return
		}
		seen[typ] = true
		for i := range typ.NumField() {
			f := typ.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if !f.IsExported() || name == "-" {
				continue
			}
			check(t, f, path)
			walk(f.Type, path+"."+name)
		}
	}
	walk(reflect.TypeFor[Config](), "config")
	if !seen[reflect.TypeFor[Admin]()] || !seen[reflect.TypeFor[Balance]()] || !seen[reflect.TypeFor[Health]()] {
		t.Errorf("the walk missed types: %v", seen)
	}
}

func TestIsSecretHeader(t *testing.T) {
	for name, want := range map[string]bool{
		"Authorization": true, "authorization": true, "Proxy-Authorization": true, "Cookie": true,
		"Set-Cookie": true, "X-Api-Key": true, "X-Auth-Token": true, "X-Client-Secret": true,
		"X-DB-PASSWORD": true, "X-Session-Id": true, "X-Amz-Signature": true,
		"Host": false, "X-Gateway": false, "X-Forwarded-For": false, "User-Agent": false,
	} {
		if got := isSecretHeader(name); got != want {
			t.Errorf("isSecretHeader(%q) = %t, want %t", name, got, want)
		}
	}
}
