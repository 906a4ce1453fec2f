package admin

import (
	"crypto/sha256"
	"encoding/base64"
	"regexp"
	"strings"
	"testing"
)

func TestDashboardPage(t *testing.T) {
	o := testOptions(newFakeSessions())
	o.Token = "s3cret"
	srv := serve(t, New(o))
	// No Authorization: the page itself is exempt.
	r := do(t, srv, "GET", "/", nil)
	if r.status != 200 {
		t.Fatalf("GET / status %d, want 200", r.status)
	}
	if ct := r.header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("Content-Type %q, want text/html; charset=utf-8", ct)
	}
	page := string(r.body)
	for _, want := range []string{
		`id="status"`, `id="token-form"`, `id="token"`, `id="token-submit"`,
		`id="sessions"`, `id="routes"`, `id="upstreams"`, `id="closes"`,
		// The rows and cells are made by the script: their attributes
		// are in it.
		`"data-session-id"`, `"data-close"`, `"from_client_messages"`, `"from_backend_messages"`,
		`"from_client_bytes"`, `"from_backend_bytes"`, `"last_active"`,
		`"/api/stream"`, `"/api/sessions/"`, `"?code=4000&reason=closed%20from%20dashboard"`,
		`sessionStorage`, `getReader()`, `"Authorization"`, `setStatus("live", "live")`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %s", want)
		}
	}
	for _, banned := range []string{"prompt(", "EventSource", "innerHTML"} {
		if strings.Contains(page, banned) {
			t.Errorf("page uses %s", banned)
		}
	}
}

// TestDashboardSelfContained checks that the page loads nothing from
// elsewhere: no absolute URL at all, and every src and href local.
func TestDashboardSelfContained(t *testing.T) {
	page := string(dashboardHTML)
	if m := regexp.MustCompile(`(?i)\b(https?|wss?|ftp):`).FindString(page); m != "" {
		t.Errorf("page contains a URL scheme %q", m)
	}
	for _, m := range regexp.MustCompile(`(?i)\b(src|href|action)\s*=\s*["']?([^"'\s>]*)`).FindAllStringSubmatch(page, -1) {
		if v := m[2]; !strings.HasPrefix(v, "data:") && !strings.HasPrefix(v, "#") {
			t.Errorf("%s=%q: want data: or a fragment", m[1], v)
		}
	}
	for _, m := range regexp.MustCompile(`fetch\(\s*([^,)]*)`).FindAllStringSubmatch(page, -1) {
		if v := m[1]; !strings.HasPrefix(v, `"/`) && v != "path" {
			t.Errorf("fetch(%s: want a path on this origin", v)
		}
	}
	for _, banned := range []string{"//cdn", "@import", "url(", "<link rel=\"stylesheet\"", "<script src", "<iframe", "<img"} {
		if strings.Contains(page, banned) {
			t.Errorf("page contains %q", banned)
		}
	}
}

// TestDashboardCSP checks that the Content-Security-Policy allows the
// page's one inline script and one inline style, and that the page
// has nothing the policy would block: inline handlers or style
// attributes.
func TestDashboardCSP(t *testing.T) {
	page := string(dashboardHTML)
	if n := strings.Count(page, "<script"); n != 1 {
		t.Errorf("page has %d script elements, want 1", n)
	}
	if n := strings.Count(page, "<style"); n != 1 {
		t.Errorf("page has %d style elements, want 1", n)
	}
	if m := regexp.MustCompile(`(?i)<[^>]*\son[a-z]+\s*=`).FindString(page); m != "" {
		t.Errorf("inline event handler %q: the CSP blocks it", m)
	}
	if m := regexp.MustCompile(`(?i)<[^>]*\sstyle\s*=`).FindString(page); m != "" {
		t.Errorf("style attribute %q: the CSP blocks it", m)
	}
	if strings.Contains(page, `setAttribute("style"`) {
		t.Error("the script sets a style attribute: the CSP blocks it")
	}

	hash := func(open, close string) string {
		_, rest, _ := strings.Cut(page, open)
		body, _, _ := strings.Cut(rest, close)
		sum := sha256.Sum256([]byte(body))
		return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
	}
	srv := serve(t, New(testOptions(newFakeSessions())))
	csp := do(t, srv, "GET", "/", nil).header.Get("Content-Security-Policy")
	for _, want := range []string{
		"default-src 'none'",
		"script-src " + hash("<script>", "</script>"),
		"style-src " + hash("<style>", "</style>"),
		"connect-src 'self'",
		"frame-ancestors 'none'",
	} {
		if !strings.Contains(csp, want) {
			t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
		}
	}
}

func TestInlineHash(t *testing.T) {
	tests := []struct {
		name, page, want string
	}{
		{"found", "<p><script>x()</script>", "'sha256-" + b64sum("x()") + "'"},
		{"empty", "<script></script>", "'sha256-" + b64sum("") + "'"},
		{"none", "<p>", "'none'"},
		{"unclosed", "<script>x()", "'none'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := inlineHash([]byte(tt.page), "<script>", "</script>"); got != tt.want {
				t.Errorf("inlineHash(%q) = %s, want %s", tt.page, got, tt.want)
			}
		})
	}
}

func b64sum(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base64.StdEncoding.EncodeToString(sum[:])
}
