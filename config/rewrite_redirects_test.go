package config

import "testing"

// TestRewriteRedirects: on by default with strip_prefix, off when the
// route says so, and never without strip_prefix.
func TestRewriteRedirects(t *testing.T) {
	for _, tc := range []struct {
		route string
		want  bool
	}{
		{`{match: {path_prefix: /app}, upstream: a, strip_prefix: true}`, true},
		{`{match: {path_prefix: /app}, upstream: a, strip_prefix: true, rewrite_redirects: true}`, true},
		{`{match: {path_prefix: /app}, upstream: a, strip_prefix: true, rewrite_redirects: false}`, false},
		{`{match: {path_prefix: /app}, upstream: a}`, false},
		{`{match: {path_prefix: /app}, upstream: a, rewrite_redirects: true}`, false},
	} {
		cfg := loadString(t, `
listeners: [{addr: "127.0.0.1:0"}]
upstreams: {a: {targets: ["http://127.0.0.1:8081"]}}
routes: [`+tc.route+`]
`)
		if got := cfg.Table.Routes()[0].RewriteRedirects; got != tc.want {
			t.Errorf("%s: RewriteRedirects = %v, want %v", tc.route, got, tc.want)
		}
	}
}
