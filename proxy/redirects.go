package proxy

import (
	"net/netip"
	"strings"

	"github.com/valyala/fasthttp"

	"github.com/wsgate/wsgate/routes"
	"github.com/wsgate/wsgate/upstream"
)

// Response fields rewriteRedirects rewrites.
var (
	hdrLocation        = []byte("Location")
	hdrContentLocation = []byte("Content-Location")
)

// rewriteRedirects puts a backend's Location and Content-Location back
// under the prefix a strip_prefix route removed (routes[].rewrite_redirects,
// nginx's proxy_redirect default): the backend answers in its own paths,
// which the client reaches below the prefix. t is the target that
// answered and host the Host sent to it, clientScheme the scheme the
// client used ("http" or "https"): an absolute URL naming the target with
// the target's scheme, or host with the client's scheme, is the
// backend's, and becomes a path the client resolves against the URL it
// used (its own scheme and host). A URL that changes the scheme the
// client would get ("https://" + the Host, to a client on plain HTTP: an
// app that enforces HTTPS) is left alone, as nginx's proxy_redirect
// default, which matches the proxy_pass URL scheme included, would. Call it only for a route with
// RewriteRedirects, before the route's response_headers (a Location set
// there wins). It does not allocate for values up to 512 bytes.
func rewriteRedirects(h *fasthttp.ResponseHeader, r *routes.Route, t *upstream.Target, host []byte, clientScheme string) {
	prefix := strings.TrimSuffix(r.PathPrefix, "/")
	if prefix == "" {
		return // the prefix "/" strips nothing
	}
	for _, name := range [...][]byte{hdrLocation, hdrContentLocation} {
		v := h.PeekBytes(name)
		if len(v) == 0 {
			continue
		}
		var buf [512]byte
		if out, ok := underPrefix(buf[:0], v, prefix, t, host, clientScheme); ok {
			h.SetCanonical(name, out)
		}
	}
}

// clientScheme is the scheme the client used, as the backend is told in
// X-Forwarded-Proto: https on a TLS listener, or what a trusted proxy
// said (one X-Forwarded-Proto: https), else http.
func clientScheme(ctx *fasthttp.RequestCtx, trusted []netip.Prefix) string {
	if ctx.IsTLS() {
		return "https"
	}
	if len(trusted) > 0 {
		if v := ctx.Request.Header.PeekAll("X-Forwarded-Proto"); len(v) == 1 && equalFoldBytes(v[0], "https") && isTrusted(peerAddr(ctx), trusted) {
			return "https"
		}
	}
	return "http"
}

// underPrefix appends to dst the value of a Location-like field v
// rewritten under prefix (without a final "/") and reports whether it
// changed:
//
//   - a path ("/login") outside the prefix gets the prefix ("/app/login");
//     one already under it is left alone (a backend that knows its public
//     prefix);
//   - an absolute URL ("http://backend:8080/login", "//backend/login")
//     whose authority is the target's address or name (and its scheme
//     the target's), or the Host sent to the backend (and its scheme the
//     client's), becomes its path, with the prefix when outside it;
//   - anything else (another host, a relative path such as "login", which
//     the client resolves against a request path that has the prefix) is
//     left alone.
func underPrefix(dst, v []byte, prefix string, t *upstream.Target, host []byte, clientScheme string) ([]byte, bool) {
	var path []byte
	absolute := false
	switch {
	case len(v) >= 2 && v[0] == '/' && v[1] == '/':
		auth, rest := splitAuthority(v[2:])
		if !isBackend(auth, "", t, host, clientScheme) {
			return dst, false
		}
		path, absolute = rest, true
	case v[0] == '/':
		path = v
	default:
		scheme, rest, ok := cutHTTPScheme(v)
		if !ok {
			return dst, false
		}
		auth, p := splitAuthority(rest)
		if !isBackend(auth, scheme, t, host, clientScheme) {
			return dst, false
		}
		path, absolute = p, true
	}
	if len(path) == 0 || path[0] != '/' {
		// "http://backend" or "http://backend?x": the backend's root.
		dst = append(dst, prefix...)
		dst = append(dst, '/')
		return append(dst, path...), true
	}
	if hasPathPrefix(path, prefix) {
		if !absolute {
			return dst, false
		}
		return append(dst, path...), true
	}
	dst = append(dst, prefix...)
	return append(dst, path...), true
}

// hasPathPrefix reports whether the path of a URL reference (it may go on
// with a query or a fragment) is prefix or below it.
func hasPathPrefix(p []byte, prefix string) bool {
	if len(p) < len(prefix) || string(p[:len(prefix)]) != prefix {
		return false
	}
	if len(p) == len(prefix) {
		return true
	}
	c := p[len(prefix)]
	return c == '/' || c == '?' || c == '#'
}

// cutHTTPScheme cuts "http://" or "https://" (any case) off v and returns
// the scheme in lower case.
func cutHTTPScheme(v []byte) (scheme string, rest []byte, ok bool) {
	for _, s := range [...]string{"http", "https"} {
		if len(v) > len(s)+3 && equalFoldASCII(v[:len(s)], s) && string(v[len(s):len(s)+3]) == "://" {
			return s, v[len(s)+3:], true
		}
	}
	return "", nil, false
}

// splitAuthority splits what follows "//" in a URL into the authority and
// the rest (path, query, fragment).
func splitAuthority(b []byte) (auth, rest []byte) {
	for i, c := range b {
		if c == '/' || c == '?' || c == '#' {
			return b[:i], b[i:]
		}
	}
	return b, nil
}

// isBackend reports whether the authority of a URL with scheme ("" when
// the URL has none: it keeps the client's) names the backend: the target
// t, by address or by the name it was configured with, with t's scheme;
// or host, the Host sent to it, with clientScheme. A missing port is the
// scheme's default. Userinfo never matches.
func isBackend(auth []byte, scheme string, t *upstream.Target, host []byte, clientScheme string) bool {
	if len(auth) == 0 {
		return false
	}
	for _, c := range auth {
		if c == '@' {
			return false
		}
	}
	ah, ap := splitHostPort(auth)
	if t != nil && (scheme == "" || scheme == t.Scheme) {
		th, tp := splitHostPort(t.Addr)
		if samePort(ap, tp, t.Scheme) && (equalFoldBytes(ah, th) || equalFoldBytes(ah, t.Host)) {
			return true
		}
	}
	if len(host) > 0 && (scheme == "" || scheme == clientScheme) {
		hh, hp := splitHostPort(host)
		if samePort(ap, hp, clientScheme) && equalFoldBytes(ah, hh) {
			return true
		}
	}
	return false
}

// splitHostPort splits "host:port", "[v6]:port", "host" or "[v6]".
func splitHostPort[T []byte | string](a T) (host, port T) {
	if len(a) > 0 && a[0] == '[' {
		for i := 1; i < len(a); i++ {
			if a[i] == ']' {
				host, rest := a[1:i], a[i+1:]
				if len(rest) > 0 && rest[0] == ':' {
					return host, rest[1:]
				}
				return host, a[:0]
			}
		}
		return a, a[:0]
	}
	for i := len(a) - 1; i >= 0; i-- {
		if a[i] == ':' {
			return a[:i], a[i+1:]
		}
	}
	return a, a[:0]
}

// samePort compares two ports of a URL with scheme, a missing one being
// the scheme's default.
func samePort[A, B []byte | string](a A, b B, scheme string) bool {
	def := ""
	switch scheme {
	case "http":
		def = "80"
	case "https":
		def = "443"
	}
	switch {
	case len(a) == 0 && len(b) == 0:
		return true
	case len(a) == 0:
		return string(b) == def
	case len(b) == 0:
		return string(a) == def
	}
	return string(a) == string(b)
}

// equalFoldBytes compares ASCII case-insensitively.
func equalFoldBytes[T []byte | string](a []byte, b T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
