package upstream

import "testing"

func TestParsePolicy(t *testing.T) {
	cases := []struct {
		in      string
		want    Policy
		wantErr string
	}{
		{"round_robin", RoundRobin, ""},
		{"least_conn", LeastConn, ""},
		{"random", Random, ""},
		{"hash", Hash, ""},
		{"cookie", Cookie, ""},
		{"Round_Robin", 0, `unknown policy "Round_Robin" (want round_robin, least_conn, random, hash, cookie)`},
		{"", 0, `unknown policy "" (want round_robin, least_conn, random, hash, cookie)`},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParsePolicy(tc.in)
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Errorf("ParsePolicy(%q) error = %v, want %q", tc.in, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("ParsePolicy(%q) = %v, %v, want %v", tc.in, got, err, tc.want)
			}
			if s := got.String(); s != tc.in {
				t.Errorf("Policy.String() = %q, want %q", s, tc.in)
			}
		})
	}
	if s := Policy(9).String(); s != "Policy(9)" {
		t.Errorf("Policy(9).String() = %q, want %q", s, "Policy(9)")
	}
}

func TestParseKey(t *testing.T) {
	cases := []struct {
		in      string
		want    Key
		wantErr bool
	}{
		{"client_ip", Key{Kind: KeyClientIP}, false},
		{"header:X-User", Key{Kind: KeyHeader, Name: "X-User"}, false},
		{"cookie:sid", Key{Kind: KeyCookie, Name: "sid"}, false},
		{"query:room", Key{Kind: KeyQuery, Name: "room"}, false},
		{"header:", Key{}, true},
		{"header", Key{}, true},
		{"path:x", Key{}, true},
		{"", Key{}, true},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseKey(tc.in)
			if tc.wantErr {
				if err == nil {
					t.Errorf("ParseKey(%q) = %+v, want an error", tc.in, got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("ParseKey(%q) = %+v, %v, want %+v", tc.in, got, err, tc.want)
			}
			if s := got.String(); s != tc.in {
				t.Errorf("Key.String() = %q, want %q", s, tc.in)
			}
		})
	}
	if s := (Key{}).String(); s != "" {
		t.Errorf("Key{}.String() = %q, want \"\"", s)
	}
}

func TestTargetConfigURL(t *testing.T) {
	cases := []struct {
		tc       TargetConfig
		addr     string
		url      string
		wantHost string
	}{
		{TargetConfig{Scheme: "http", Host: "10.0.0.1", Port: "80"}, "10.0.0.1:80", "http://10.0.0.1:80", "10.0.0.1"},
		{TargetConfig{Scheme: "https", Host: "api.internal", Port: "443"}, "api.internal:443", "https://api.internal:443", "api.internal"},
		{TargetConfig{Scheme: "http", Host: "::1", Port: "8080"}, "[::1]:8080", "http://[::1]:8080", "::1"},
	}
	for _, c := range cases {
		t.Run(c.url, func(t *testing.T) {
			if got := c.tc.Addr(); got != c.addr {
				t.Errorf("Addr() = %q, want %q", got, c.addr)
			}
			if got := c.tc.URL(); got != c.url {
				t.Errorf("URL() = %q, want %q", got, c.url)
			}
			s := newTestSet(t, &Config{Targets: []TargetConfig{c.tc}}, Options{})
			tgt := s.Targets()[0]
			if tgt.URL != c.url || tgt.Addr != c.addr || tgt.Host != c.wantHost || tgt.Weight != 1 {
				t.Errorf("Target = URL %q Addr %q Host %q Weight %d, want %q %q %q 1 (weight 0 taken as 1)", tgt.URL, tgt.Addr, tgt.Host, tgt.Weight, c.url, c.addr, c.wantHost)
			}
		})
	}
}

// TestSetAccessors: a set names itself and its config, and dials a name
// without discovery as written.
func TestSetAccessors(t *testing.T) {
	cfg := &Config{Name: "api", Targets: []TargetConfig{{Scheme: "http", Host: "api.internal", Port: "80", Weight: 3}}}
	s := newTestSet(t, cfg, Options{})
	if s.Name() != "api" || s.Config() != cfg {
		t.Errorf("Name() = %q, Config() = %p, want %q and %p", s.Name(), s.Config(), "api", cfg)
	}
	tgt := s.Targets()[0]
	if tgt.Addr != "api.internal:80" || tgt.Weight != 3 {
		t.Errorf("target without discovery: Addr %q Weight %d, want api.internal:80 and 3", tgt.Addr, tgt.Weight)
	}
}
