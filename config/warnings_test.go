package config

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestWarnings checks the warnings of valid configs that likely do not
// do what their author meant, each on its file:line and key.
func TestWarnings(t *testing.T) {
	const head = `listeners: [{addr: "127.0.0.1:8080"}]
upstreams: {app: {targets: ["http://127.0.0.1:9001"]}}
`
	const hijack = "any web page the user visits can open a WebSocket to this route that carries the user's cookies (cross-site WebSocket hijacking); list the allowed origins in websocket.origins"
	const jwks = `jwks: "https://issuer.example/jwks.json"`
	tests := []struct {
		name string
		body string   // after head, which takes lines 1 and 2
		want []string // "LINE: key.path: message"
	}{
		{"idle timeout under the ping interval", `routes:
  - match: {path: /ws}
    upstream: app
    websocket:
      idle_timeout: 20s
      ping: {interval: 30s}
`, []string{"7: routes[0].websocket.idle_timeout: idle_timeout 20s is not longer than ping.interval 30s: a quiet session is closed as idle before wsgate's first ping, so the pings never keep it open"}},
		{"idle timeout equal to the ping interval", `routes:
  - {match: {path: /ws}, upstream: app, websocket: {idle_timeout: 30s, ping: {}}}
`, []string{"4: routes[0].websocket.idle_timeout: idle_timeout 30s is not longer than ping.interval 30s: a quiet session is closed as idle before wsgate's first ping, so the pings never keep it open"}},
		{"default idle timeout under the ping interval", `routes:
  - match: {path: /ws}
    upstream: app
    websocket:
      ping:
        interval: 2h
`, []string{"8: routes[0].websocket.ping.interval: idle_timeout 1h is not longer than ping.interval 2h: a quiet session is closed as idle before wsgate's first ping, so the pings never keep it open"}},
		{"idle timeout over the ping interval", `routes:
  - {match: {path: /ws}, upstream: app, websocket: {idle_timeout: 31s, ping: {}}}
`, nil},
		{"ping on a route without WebSocket", `routes:
  - {match: {path: /ws}, upstream: app, websocket: {enabled: false, idle_timeout: 1s, ping: {}}}
`, nil},

		{"JWT from a cookie without origins", `routes:
  - match: {path: /ws}
    upstream: app
    auth:
      jwt:
        ` + jwks + `
        from: cookie:session
`, []string{`9: routes[0].auth.jwt.from: the token comes from cookie "session" and websocket.origins is empty: ` + hijack}},
		{"JWT from a cookie with origins", `routes:
  - match: {path: /ws}
    upstream: app
    websocket: {origins: ["https://app.example.com"]}
    auth: {jwt: {` + jwks + `, from: "cookie:session"}}
`, nil},
		{"JWT from a cookie, no WebSocket", `routes:
  - match: {path: /ws}
    upstream: app
    websocket: {enabled: false}
    auth: {jwt: {` + jwks + `, from: "cookie:session"}}
`, nil},
		{"JWT from the query", `routes:
  - {match: {path: /ws}, upstream: app, auth: {jwt: {` + jwks + `, from: "query:access_token"}}}
`, nil},
		{"forward auth copying Cookie by default", `routes:
  - match: {path: /ws}
    upstream: app
    auth:
      forward: {url: "http://127.0.0.1:9100/auth"}
`, []string{"7: routes[0].auth.forward: the auth service is sent the client's Cookie header (copy_request_headers includes it by default) and websocket.origins is empty: " + hijack}},
		{"forward auth copying cookie", `routes:
  - match: {path: /ws}
    upstream: app
    auth:
      forward:
        url: "http://127.0.0.1:9100/auth"
        copy_request_headers: [Authorization, cookie]
`, []string{"9: routes[0].auth.forward.copy_request_headers: the auth service is sent the client's Cookie header and websocket.origins is empty: " + hijack}},
		{"forward auth without Cookie", `routes:
  - {match: {path: /ws}, upstream: app, auth: {forward: {url: "http://127.0.0.1:9100/auth", copy_request_headers: [Authorization]}}}
`, nil},
		{"forward auth with origins", `routes:
  - match: {path: /ws}
    upstream: app
    websocket: {origins: ["https://app.example.com"]}
    auth: {forward: {url: "http://127.0.0.1:9100/auth"}}
`, nil},

		{"admin on every interface", `routes: [{match: {path: /}, upstream: app}]
admin:
  addr: ":9901"
  token: 0123456789abcdef0123456789abcdef
`, []string{`5: admin.addr: ":9901" is not a loopback address: the admin API (list, close and message WebSocket sessions, reload) is reachable over plain HTTP, guarded only by the token; keep the port off untrusted networks (a firewall or NetworkPolicy)`}},
		{"admin on loopback with a token", `routes: [{match: {path: /}, upstream: app}]
admin: {addr: "[::1]:9901", token: 0123456789abcdef0123456789abcdef}
`, nil},

		{"drain and shutdown delay over 30s", `routes: [{match: {path: /}, upstream: app}]
timeouts:
  shutdown_delay: 5s
  drain: 30s
`, []string{"6: timeouts.drain: shutdown_delay 5s + drain 30s = 35s is longer than 30s, Kubernetes' default terminationGracePeriodSeconds: under Kubernetes, raise the pod's terminationGracePeriodSeconds above 35s (plus any preStop sleep), or wsgate is killed before it has drained"}},
		{"shutdown delay over the default drain", `routes: [{match: {path: /}, upstream: app}]
timeouts:
  shutdown_delay: 1s
`, []string{"5: timeouts.shutdown_delay: shutdown_delay 1s + drain 30s = 31s is longer than 30s, Kubernetes' default terminationGracePeriodSeconds: under Kubernetes, raise the pod's terminationGracePeriodSeconds above 31s (plus any preStop sleep), or wsgate is killed before it has drained"}},
		{"drain and shutdown delay of 30s", `routes: [{match: {path: /}, upstream: app}]
timeouts: {shutdown_delay: 10s, drain: 20s}
`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := filepath.Join(t.TempDir(), "config.yaml")
			cfg, err := Parse(name, []byte(head+tt.body))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, w := range cfg.Warnings {
				got = append(got, strings.TrimPrefix(w.Error(), name+":"))
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

// TestExampleWarnings: config.example.yaml has no warnings, with or
// without an admin token in the environment.
func TestExampleWarnings(t *testing.T) {
	for _, token := range []string{"", "0123456789abcdef0123456789abcdef"} {
		t.Setenv("WSGATE_ADMIN_TOKEN", token)
		cfg, err := Load("../config.example.yaml")
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range cfg.Warnings {
			t.Errorf("WSGATE_ADMIN_TOKEN=%q: warning: %v", token, w)
		}
	}
}
