package proxy

import (
	"net/url"
	"strings"
	"testing"
)

// TestReview14RedirectToHTTPSKept: a backend behind a plain-HTTP listener
// that enforces HTTPS answers "Location: https://<the Host it was sent>/…"
// (Django's SECURE_SSL_REDIRECT, Rails' force_ssl, …). rewrite_redirects
// turns it into the path "/app/login", which the client resolves against
// the http:// URL it used: the scheme upgrade is lost, the client comes
// back over plain HTTP, and the backend redirects again — a redirect loop.
// underPrefix treats a missing port as matching on both sides whatever the
// scheme, although docs/config.md says "A missing port is the scheme's
// default" (https → 443, while the client's Host on plain HTTP is port 80).
func TestReview14RedirectToHTTPSKept(t *testing.T) {
	r := wsRoute(testUpstream(redirectBackend(t)))
	r.PathPrefix, r.StripPrefix, r.RewriteRedirects = "/app/", true, true
	p := startProxy(t, r)
	loc := url.QueryEscape("https://example.com/login")
	resp, _ := rawStatus(t, p.addr, "GET /app/x?loc="+loc+" HTTP/1.1\r\nHost: example.com\r\n\r\n")
	got := resp.Header.Get("Location")
	if !strings.HasPrefix(got, "https://") {
		t.Errorf("plain-HTTP client, backend Location %q: client got %q; the https:// upgrade was dropped (redirect loop)",
			"https://example.com/login", got)
	}
}
