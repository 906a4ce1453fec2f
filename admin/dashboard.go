package admin

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"net/http"
	"strings"
)

// dashboardHTML is the dashboard: one page with its style and script
// inline, nothing loaded from elsewhere.
//
//go:embed dashboard.html
var dashboardHTML []byte

// dashboardPage returns the page and its Content-Security-Policy. The
// policy allows the page's own inline <style> and <script> by their
// SHA-256 (so no injected script or style could run) and connections to
// this origin only.
func dashboardPage() (page []byte, csp string) {
	style := inlineHash(dashboardHTML, "<style>", "</style>")
	script := inlineHash(dashboardHTML, "<script>", "</script>")
	csp = strings.Join([]string{
		"default-src 'none'",
		"script-src " + script,
		"style-src " + style,
		"connect-src 'self'",
		"img-src 'self' data:",
		"base-uri 'none'",
		"form-action 'none'",
		"frame-ancestors 'none'",
	}, "; ")
	return dashboardHTML, csp
}

// inlineHash returns the CSP source ('sha256-…') of the text between the
// first open and the close after it, or 'none' when page has none.
func inlineHash(page []byte, open, close string) string {
	_, rest, ok := bytes.Cut(page, []byte(open))
	if !ok {
		return "'none'"
	}
	body, _, ok := bytes.Cut(rest, []byte(close))
	if !ok {
		return "'none'"
	}
	sum := sha256.Sum256(body)
	return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
}

func (h *handler) dashboard(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Type", "text/html; charset=utf-8")
	hd.Set("Cache-Control", "no-store")
	hd.Set("Content-Security-Policy", h.pageCSP)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	w.WriteHeader(http.StatusOK)
	w.Write(h.page)
}
