package config

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestSubprotocols: websocket.subprotocols is a list of distinct tokens,
// compiled with require_subprotocol (default true) into the route.
func TestSubprotocols(t *testing.T) {
	for _, tt := range []struct {
		name    string
		ws      string
		want    []string
		require bool
		err     string
	}{
		{name: "default", ws: `{}`, want: nil, require: true},
		{name: "list", ws: `{subprotocols: [graphql-transport-ws, chat.v2]}`, want: []string{"graphql-transport-ws", "chat.v2"}, require: true},
		{name: "not required", ws: `{subprotocols: [chat.v2], require_subprotocol: false}`, want: []string{"chat.v2"}, require: false},
		{name: "not a token", ws: `{subprotocols: ["chat v2"]}`, err: `routes[0].websocket.subprotocols[0]: invalid subprotocol "chat v2"`},
		{name: "duplicate", ws: `{subprotocols: [a, b, a]}`, err: `routes[0].websocket.subprotocols[2]: duplicate subprotocol "a" (first at subprotocols[0])`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			doc := "listeners: [{addr: 127.0.0.1:0}]\nupstreams: {app: {targets: [\"http://127.0.0.1:1\"]}}\n" +
				"routes:\n  - match: {path_prefix: /}\n    upstream: app\n    websocket: " + tt.ws + "\n"
			name := filepath.Join(t.TempDir(), "config.yaml")
			cfg, err := Parse(name, []byte(doc))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("websocket: %s: error %v, want %q", tt.ws, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("websocket: %s: %v", tt.ws, err)
			}
			ws := cfg.Table.Routes()[0].WebSocket
			if !slices.Equal(ws.Subprotocols, tt.want) || ws.RequireSubprotocol != tt.require {
				t.Errorf("websocket: %s: Subprotocols %q, RequireSubprotocol %v; want %q, %v", tt.ws, ws.Subprotocols, ws.RequireSubprotocol, tt.want, tt.require)
			}
		})
	}
}

// TestSessionCaps: websocket.max_sessions and max_sessions_per_ip are
// compiled into the route; negative values are errors.
func TestSessionCaps(t *testing.T) {
	parse := func(ws string) (*Config, error) {
		doc := "listeners: [{addr: 127.0.0.1:0}]\nupstreams: {app: {targets: [\"http://127.0.0.1:1\"]}}\n" +
			"routes:\n  - match: {path_prefix: /}\n    upstream: app\n    websocket: " + ws + "\n"
		return Parse(filepath.Join(t.TempDir(), "config.yaml"), []byte(doc))
	}
	cfg, err := parse(`{max_sessions: 100, max_sessions_per_ip: 5}`)
	if err != nil {
		t.Fatal(err)
	}
	if ws := cfg.Table.Routes()[0].WebSocket; ws.MaxSessions != 100 || ws.MaxSessionsPerIP != 5 {
		t.Errorf("MaxSessions, MaxSessionsPerIP = %d, %d; want 100, 5", ws.MaxSessions, ws.MaxSessionsPerIP)
	}
	for _, c := range []struct{ ws, err string }{
		{`{max_sessions: -1}`, `routes[0].websocket.max_sessions: must not be negative`},
		{`{max_sessions_per_ip: -2}`, `routes[0].websocket.max_sessions_per_ip: must not be negative`},
	} {
		if _, err := parse(c.ws); err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("websocket: %s: error %v, want %q", c.ws, err, c.err)
		}
	}
}
