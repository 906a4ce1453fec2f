package config

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestAdmin(t *testing.T) {
	const token = "0123456789abcdef" // 16 bytes: no warning
	// A token makes a non-loopback address valid, and warned about.
	const publicAdmin = "is not a loopback address: the admin API (list, close and message WebSocket sessions, reload) is reachable over plain HTTP, guarded only by the token; keep the port off untrusted networks (a firewall or NetworkPolicy)"
	tests := []struct {
		name  string
		admin string // the admin section, one YAML flow mapping
		want  *Admin // when err is ""
		err   string // the expected error, after "config.yaml:LINE: "
		warn  string // the expected warning, after "config.yaml:LINE: "
	}{
		{name: "absent", admin: "", want: nil},
		{name: "loopback v4", admin: `{addr: "127.0.0.1:9901"}`, want: &Admin{Addr: "127.0.0.1:9901"}},
		{name: "loopback v4 range", admin: `{addr: "127.8.9.10:9901"}`, want: &Admin{Addr: "127.8.9.10:9901"}},
		{name: "loopback v6", admin: `{addr: "[::1]:9901"}`, want: &Admin{Addr: "[::1]:9901"}},
		{name: "loopback v4 in v6", admin: `{addr: "[::ffff:127.0.0.1]:9901"}`, want: &Admin{Addr: "[::ffff:127.0.0.1]:9901"}},
		{name: "localhost", admin: `{addr: "LocalHost:9901"}`, want: &Admin{Addr: "LocalHost:9901"}},
		{name: "port 0, as a listener's", admin: `{addr: "127.0.0.1:0"}`, want: &Admin{Addr: "127.0.0.1:0"}},
		{name: "every interface with a token", admin: `{addr: ":9901", token: ` + token + `, ready_requires_healthy_targets: true}`,
			want: &Admin{Addr: ":9901", Token: token, ReadyRequiresHealthyTargets: true}, warn: `admin.addr: ":9901" ` + publicAdmin},
		{name: "public IP with a token", admin: `{addr: "192.0.2.7:9901", token: ` + token + `}`, want: &Admin{Addr: "192.0.2.7:9901", Token: token},
			warn: `admin.addr: "192.0.2.7:9901" ` + publicAdmin},
		{name: "short token", admin: `{addr: "127.0.0.1:9901", token: abc}`, want: &Admin{Addr: "127.0.0.1:9901", Token: "abc"},
			warn: `admin.token: 3 bytes is short for a bearer token (want 16 or more, such as from "openssl rand -hex 16")`},

		{name: "no value: the default loopback address", admin: ``, want: &Admin{Addr: "127.0.0.1:9901"}},
		{name: "empty: the default loopback address", admin: `{}`, want: &Admin{Addr: "127.0.0.1:9901"}},
		{name: "no port", admin: `{addr: 127.0.0.1}`, err: `admin.addr: invalid address "127.0.0.1" (want host:port)`},
		{name: "bad port", admin: `{addr: "127.0.0.1:99999"}`, err: `admin.addr: invalid port "99999" (want 0 to 65535)`},
		{name: "host name", admin: `{addr: "admin.internal:9901", token: ` + token + `}`,
			err: `admin.addr: invalid host "admin.internal" in "admin.internal:9901" (want an IP address, "localhost", or none for every interface)`},
		{name: "every interface", admin: `{addr: ":9901"}`, err: `admin.addr: ":9901" is not a loopback address; set admin.token to expose the admin API`},
		{name: "every IPv4 interface", admin: `{addr: "0.0.0.0:9901"}`, err: `admin.addr: "0.0.0.0:9901" is not a loopback address; set admin.token to expose the admin API`},
		{name: "every IPv6 interface", admin: `{addr: "[::]:9901", token: ""}`, err: `admin.addr: "[::]:9901" is not a loopback address; set admin.token to expose the admin API`},
		{name: "public IP", admin: `{addr: "10.1.2.3:9901"}`, err: `admin.addr: "10.1.2.3:9901" is not a loopback address; set admin.token to expose the admin API`},
		{name: "a listener's address", admin: `{addr: "127.0.0.1:8080"}`,
			err: `admin.addr: "127.0.0.1:8080" overlaps listeners[0].addr "127.0.0.1:8080" (line 2); the admin API needs an address of its own`},
		{name: "a listener's address, spelled otherwise", admin: `{addr: "[::ffff:127.0.0.1]:8080"}`,
			err: `admin.addr: "[::ffff:127.0.0.1]:8080" overlaps listeners[0].addr "127.0.0.1:8080" (line 2)`},
		{name: "localhost on a listener's port", admin: `{addr: "localhost:8080"}`,
			err: `admin.addr: "localhost:8080" overlaps listeners[0].addr "127.0.0.1:8080" (line 2)`},
		{name: "within a wildcard listener", admin: `{addr: "127.0.0.1:8443"}`,
			err: `admin.addr: "127.0.0.1:8443" overlaps listeners[1].addr ":8443" (line 3)`},
		{name: "within an IPv4 wildcard listener", admin: `{addr: "[::1]:9000"}`, want: &Admin{Addr: "[::1]:9000"}},
		{name: "wildcard over a listener", admin: `{addr: "0.0.0.0:8080", token: ` + token + `}`,
			err: `admin.addr: "0.0.0.0:8080" overlaps listeners[0].addr "127.0.0.1:8080" (line 2)`},
		{name: "token with a space", admin: `{addr: "127.0.0.1:9901", token: "secret token value"}`,
			err: `admin.token: must be visible ASCII without spaces (it is sent as "Authorization: Bearer TOKEN")`},
		{name: "token with a control character", admin: `{addr: "127.0.0.1:9901", token: "secret\ttoken-value"}`,
			err: `admin.token: must be visible ASCII without spaces`},
		{name: "unknown key", admin: `{addr: "127.0.0.1:9901", tokn: x}`, err: `admin: unknown key "tokn"`},
		{name: "not a mapping", admin: `yes`, err: `admin: invalid value "yes" (want a mapping)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := `listeners:
  - addr: 127.0.0.1:8080
  - addr: ":8443"
  - addr: 0.0.0.0:9000
  - addr: 127.0.0.1:0
routes: [{match: {path: /}, respond: {}}]
`
			if tt.admin != "" || tt.err != "" || tt.want != nil {
				doc += "admin: " + tt.admin + "\n"
			}
			name := filepath.Join(t.TempDir(), "config.yaml")
			cfg, err := Parse(name, []byte(doc))
			if tt.err != "" {
				if err == nil || !strings.HasPrefix(err.Error(), name+":7: "+tt.err) || strings.Contains(err.Error(), "\n") {
					t.Fatalf("admin: %s: error %v, want the one error %q on line 7", tt.admin, err, tt.err)
				}
				if strings.Contains(tt.admin, "secret") && strings.Contains(err.Error(), "secret") {
					t.Errorf("admin: %s: error %v shows the token", tt.admin, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("admin: %s: %v", tt.admin, err)
			}
			if !reflect.DeepEqual(cfg.Admin, tt.want) {
				t.Errorf("admin: %s: Admin = %+v, want %+v", tt.admin, cfg.Admin, tt.want)
			}
			var warnings []string
			for _, w := range cfg.Warnings {
				warnings = append(warnings, strings.TrimPrefix(w.Error(), name+":7: "))
			}
			if got := strings.Join(warnings, "\n"); got != tt.warn {
				t.Errorf("admin: %s: warnings %q, want %q", tt.admin, got, tt.warn)
			}
		})
	}
}

func TestHostsOverlap(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"127.0.0.1", "127.0.0.1", true},
		{"127.0.0.1", "127.0.0.2", false},
		{"", "127.0.0.1", true},
		{"", "::1", true},
		{"::", "127.0.0.1", true},
		{"0.0.0.0", "127.0.0.1", true},
		{"0.0.0.0", "::1", false},
		{"0.0.0.0", "::ffff:10.0.0.1", true},
		{"0.0.0.0", "localhost", true},
		{"localhost", "::1", true},
		{"localhost", "127.0.0.1", true},
		{"LOCALHOST", "localhost", true},
		{"localhost", "10.0.0.1", false},
		{"example.com", "127.0.0.1", false},
		{"example.com", "", true},
		{"Example.com", "example.COM", true},
	}
	for _, tt := range tests {
		if got := hostsOverlap(tt.a, tt.b); got != tt.want {
			t.Errorf("hostsOverlap(%q, %q) = %t, want %t", tt.a, tt.b, got, tt.want)
		}
		if got := hostsOverlap(tt.b, tt.a); got != tt.want {
			t.Errorf("hostsOverlap(%q, %q) = %t, want %t", tt.b, tt.a, got, tt.want)
		}
	}
}
