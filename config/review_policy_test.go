package config

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// reviewRoute is a config with one WebSocket route whose websocket (and
// limits) mappings are ws (and limits).
func reviewRoute(ws, limits string) string {
	y := `listeners: [{addr: "127.0.0.1:0"}]
upstreams:
  app: {targets: ["http://127.0.0.1:9001"]}
routes:
  - match: {path_prefix: /}
    upstream: app
    websocket: ` + ws + "\n"
	if limits != "" {
		y += "    limits: " + limits + "\n"
	}
	return y
}

// TestReviewPolicyValidation: each bad value of the new keys is an
// error naming its key; good ones load with the documented defaults.
func TestReviewPolicyValidation(t *testing.T) {
	bad := []struct {
		name, ws, limits, want string
	}{
		{"burst without rate", "{burst: 5}", "", "websocket.burst"},
		{"negative rate", "{max_messages_per_second: -1}", "", "max_messages_per_second"},
		{"negative burst", "{max_messages_per_second: 5, burst: -1}", "", "websocket.burst"},
		{"nan rate", "{max_messages_per_second: .nan}", "", "max_messages_per_second"},
		{"unknown action", "{rate_limit_action: drip}", "", "rate_limit_action"},
		{"ping interval under 100ms", "{ping: {interval: 50ms}}", "", "ping.interval"},
		{"negative ping timeout", "{ping: {timeout: -1s}}", "", "ping.timeout"},
		{"user timeout under 1s", "{tcp_user_timeout: 500ms}", "", "tcp_user_timeout"},
		{"limits burst without rate", "{}", "{burst: 3}", "limits.burst"},
		{"negative request rate", "{}", "{requests_per_second_per_ip: -2}", "requests_per_second_per_ip"},
		// Values that overflow the unix-nanosecond sums of pingDue
		// (lastRead + interval, pingAt + timeout): wsgate would ping
		// on every pong, or find every pinged side dead at once.
		{"ping interval beyond int64 nanoseconds", "{ping: {interval: 2500000h}}", "", "ping.interval"},
		{"ping timeout beyond int64 nanoseconds", "{ping: {timeout: 2500000h}}", "", "ping.timeout"},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse(filepath.Join(t.TempDir(), "config.yaml"), []byte(reviewRoute(c.ws, c.limits)))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Parse(websocket: %s, limits: %s) = %v, want an error about %s", c.ws, c.limits, err, c.want)
			}
		})
	}
	t.Run("defaults", func(t *testing.T) {
		cfg := loadString(t, reviewRoute("{ping: {}, max_messages_per_second: 2.5}", "{requests_per_second_per_ip: 0.5}"))
		r := cfg.Table.Routes()[0]
		ws := r.WebSocket
		if ws.PingInterval != 30*time.Second || ws.PingTimeout != 10*time.Second || ws.TCPUserTimeout != 60*time.Second ||
			ws.MessageBurst != 3 || ws.DropOverRate || !ws.ValidateUTF8 || r.Limits.RequestBurst != 1 {
			t.Errorf("websocket = %+v, limits = %+v; want the documented defaults", ws, r.Limits)
		}
	})
}
