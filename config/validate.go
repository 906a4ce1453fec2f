package config

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"github.com/wsgate/wsgate/routes"
	"github.com/wsgate/wsgate/upstream"
)

// validator applies defaults to a decoded document, checks it and compiles
// it, recording every problem with its key path.
type validator struct {
	*problems
	dir      string        // absolute directory of the config file
	warnings []*FieldError // see warnf
}

// config returns the Config for doc; it is nil when there were problems.
func (v *validator) config(doc *document) *Config {
	cfg := &Config{
		Listeners:      doc.Listeners,
		Upstreams:      doc.Upstreams,
		Routes:         doc.Routes,
		Limits:         Limits{HeaderBytes: int64(doc.Limits.HeaderBytes), RequestBody: int64(doc.Limits.RequestBody)},
		Timeouts:       doc.Timeouts,
		TrustedProxies: doc.TrustedProxies,
		Admin:          doc.Admin,
	}
	v.limits(&cfg.Limits)
	v.timeouts(&cfg.Timeouts)
	v.listeners(cfg.Listeners)
	// "admin:" with no value is present: it turns the listener on, at
	// the default address.
	if cfg.Admin == nil && v.loc.has("admin") {
		cfg.Admin = &Admin{}
	}
	if cfg.Admin != nil {
		v.admin("admin", cfg.Admin, cfg.Listeners)
	}
	ups, compiled := v.upstreams(cfg.Upstreams)
	cfg.UpstreamConfigs = compiled
	rs := v.routes(cfg, ups)
	cfg.Trusted = v.trustedProxies(cfg.TrustedProxies)
	for i, l := range cfg.Listeners {
		if l.ProxyProtocol && len(cfg.TrustedProxies) == 0 {
			v.atf(fmt.Sprintf("listeners[%d].proxy_protocol", i),
				"needs trusted_proxies: the addresses of the load balancers that send the header")
		}
	}
	if len(v.errs) > 0 {
		return nil
	}
	v.upstreamWarnings(cfg, rs)
	v.routeWarnings(cfg)
	v.shutdownWarnings(&cfg.Timeouts)
	slices.SortStableFunc(v.warnings, func(a, b *FieldError) int { return a.Line - b.Line })
	cfg.Warnings = v.warnings
	t, err := routes.New(rs)
	if err != nil {
		v.at("routes", err) // validation should have caught it
		return nil
	}
	cfg.Table = t
	return cfg
}

func (v *validator) limits(l *Limits) {
	// Sizes are never negative: Size.UnmarshalYAML rejects them.
	if l.HeaderBytes == 0 {
		l.HeaderBytes = defaultLimits.HeaderBytes
	}
	if l.RequestBody == 0 {
		l.RequestBody = defaultLimits.RequestBody
	}
}

func (v *validator) timeouts(t *Timeouts) {
	v.duration("timeouts.request_header", &t.RequestHeader, defaultTimeouts.RequestHeader)
	v.duration("timeouts.request_body", &t.RequestBody, defaultTimeouts.RequestBody)
	v.duration("timeouts.write", &t.Write, defaultTimeouts.Write)
	v.duration("timeouts.idle", &t.Idle, defaultTimeouts.Idle)
	v.duration("timeouts.drain", &t.Drain, defaultTimeouts.Drain)
	v.duration("timeouts.reload_drain", &t.ReloadDrain, defaultTimeouts.ReloadDrain)
	v.duration("timeouts.shutdown_delay", &t.ShutdownDelay, defaultTimeouts.ShutdownDelay)
}

// defaultCopyRequestHeaders are the headers forward auth sends the auth
// service by default.
var defaultCopyRequestHeaders = []string{"Authorization", "Cookie", "Origin"}

// auth checks a route's auth block.
func (v *validator) auth(path string, a *Auth) *routes.Auth {
	out := &routes.Auth{}
	if a.Forward == nil && a.JWT == nil {
		v.atf(path, "needs forward or jwt")
		return out
	}
	if a.JWT != nil {
		out.JWT = v.jwt(path+".jwt", a.JWT)
	}
	if a.Forward == nil {
		return out
	}
	f := a.Forward
	fpath := path + ".forward"
	if f.URL == "" {
		v.atf(fpath+".url", "required")
	} else if u, err := url.Parse(f.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		v.atf(fpath+".url", "invalid URL %q (want http:// or https:// with a host, such as %q)", f.URL, "http://127.0.0.1:9000/auth")
	} else if u.User != nil || u.Fragment != "" {
		v.atf(fpath+".url", "URL %q must not have user info or a fragment", f.URL)
	}
	v.duration(fpath+".timeout", &f.Timeout, defaultAuthTimeout)
	if f.CopyRequestHeaders == nil {
		f.CopyRequestHeaders = slices.Clone(defaultCopyRequestHeaders)
	}
	names := func(key string, list []string) []string {
		out := make([]string, 0, len(list))
		for i, n := range list {
			if !isToken(n) {
				v.atf(fmt.Sprintf("%s.%s[%d]", fpath, key, i), "invalid header name %q", n)
				continue
			}
			out = append(out, http.CanonicalHeaderKey(n))
		}
		return out
	}
	out.Forward = &routes.ForwardAuth{
		URL:                 f.URL,
		Timeout:             f.Timeout,
		CopyRequestHeaders:  names("copy_request_headers", f.CopyRequestHeaders),
		CopyResponseHeaders: names("copy_response_headers", f.CopyResponseHeaders),
	}
	return out
}

// rate checks a rate (key under path, per second) and its burst, and
// returns the burst: by default the rate, at least 1.
func (v *validator) rate(path, key string, rate float64, burst int) int {
	if rate < 0 || math.IsNaN(rate) || math.IsInf(rate, 0) {
		v.atf(path+"."+key, "must be a positive number (0: no limit)")
	}
	if burst < 0 {
		v.atf(path+".burst", "must not be negative")
	}
	if burst > 0 && rate == 0 {
		v.atf(path+".burst", "needs %s", key)
	}
	if burst == 0 && rate > 0 {
		burst = max(1, int(math.Ceil(min(rate, 1e9))))
	}
	return burst
}

// duration checks the duration at path and replaces zero with def.
func (v *validator) duration(path string, d *time.Duration, def time.Duration) {
	if *d < 0 {
		v.atf(path, "duration %q must not be negative", d.String())
	}
	if *d == 0 {
		*d = def
	}
}

func (v *validator) listeners(ls []Listener) {
	if len(ls) == 0 {
		v.atf("listeners", "at least one listener is required")
		return
	}
	first := map[string]string{} // normalised address → path where it was first seen
	for i := range ls {
		l := &ls[i]
		path := fmt.Sprintf("listeners[%d]", i)
		v.listenAddr(path+".addr", l.Addr, first)
		switch l.Builtin {
		case "", BuiltinDemo:
		default:
			v.atf(path+".builtin", "unknown builtin %q (want %q or none)", l.Builtin, BuiltinDemo)
		}
		if l.TLS != nil {
			v.listenerTLS(path+".tls", l.TLS)
		}
	}
}

func (v *validator) listenAddr(path, addr string, first map[string]string) {
	if addr == "" {
		v.atf(path, "required (want host:port, such as %q)", "127.0.0.1:8080")
		return
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		v.atf(path, "invalid address %q (want host:port)", addr)
		return
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		v.atf(path, "invalid port %q (want 0 to 65535)", port)
		return
	}
	if n == 0 {
		return // every port-0 listener gets its own free port
	}
	key := net.JoinHostPort(strings.ToLower(host), strconv.FormatUint(n, 10))
	if p, dup := first[key]; dup {
		v.atf(path, "duplicate listener address %q (first defined at line %d)", addr, v.loc.line(p))
		return
	}
	first[key] = path
}

// minAdminToken is the length in bytes below which an admin token gets a
// warning. 16 hex digits are 64 random bits; "openssl rand -hex 16" prints
// 32 (128 bits).
const minAdminToken = 16

// admin checks the admin listener's settings against the listeners.
func (v *validator) admin(path string, a *Admin, ls []Listener) {
	apath := path + ".addr"
	if a.TokenFile != "" {
		if a.Token != "" {
			v.atf(path+".token_file", "set token or token_file, not both")
		} else if data, ok := v.readFile(path+".token_file", "token file", &a.TokenFile); ok {
			a.Token = strings.TrimSpace(string(data))
			if a.Token == "" {
				v.atf(path+".token_file", "token file %q is empty", a.TokenFile)
			}
		}
	}
	for i := 0; i < len(a.Token); i++ {
		// The token is sent in a header line: no control character and,
		// since "Bearer TOKEN" is split at spaces, no space. The message
		// never shows the token.
		if c := a.Token[i]; c <= ' ' || c >= 0x7f {
			v.atf(path+".token", "must be visible ASCII without spaces (it is sent as %q)", "Authorization: Bearer TOKEN")
			break
		}
	}
	if n := len(a.Token); n > 0 && n < minAdminToken {
		v.warnf(path+".token", "%d bytes is short for a bearer token (want %d or more, such as from %q)", n, minAdminToken, "openssl rand -hex 16")
	}
	if a.Addr == "" {
		a.Addr = defaultAdminAddr // loopback: no token needed
	}
	host, port, err := net.SplitHostPort(a.Addr)
	if err != nil {
		v.atf(apath, "invalid address %q (want host:port)", a.Addr)
		return
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		v.atf(apath, "invalid port %q (want 0 to 65535)", port)
		return
	}
	loopback := strings.EqualFold(host, "localhost")
	if !loopback && host != "" {
		ip, err := netip.ParseAddr(host)
		if err != nil {
			v.atf(apath, "invalid host %q in %q (want an IP address, \"localhost\", or none for every interface)", host, a.Addr)
			return
		}
		loopback = ip.IsLoopback()
	}
	if !loopback && a.Token == "" {
		v.atf(apath, "%q is not a loopback address; set admin.token to expose the admin API", a.Addr)
	} else if !loopback {
		// The admin listener is plain HTTP: the token crosses the
		// network in clear, and with it the session API.
		v.warnf(apath, "%q is not a loopback address: the admin API (list, close and message WebSocket sessions, reload) is reachable over plain HTTP, guarded only by the token; keep the port off untrusted networks (a firewall or NetworkPolicy)", a.Addr)
	}
	if n == 0 {
		return // a port-0 listener gets a free port of its own
	}
	for i, l := range ls {
		lhost, lport, err := net.SplitHostPort(l.Addr)
		if err != nil {
			continue // reported with the listener
		}
		if ln, err := strconv.ParseUint(lport, 10, 16); err != nil || ln != n || !hostsOverlap(host, lhost) {
			continue
		}
		lpath := fmt.Sprintf("listeners[%d].addr", i)
		v.atf(apath, "%q overlaps %s %q (line %d); the admin API needs an address of its own", a.Addr, lpath, l.Addr, v.loc.line(lpath))
		return
	}
}

// hostsOverlap reports whether listening on hosts a and b with the same
// port would clash: the same address, or one of them taking every
// interface. An empty host and "::" take every address (Go listens
// dual-stack), "0.0.0.0" every IPv4 one; "localhost" is 127.0.0.1 or ::1.
// Other names are not known until they are resolved at bind time.
func hostsOverlap(a, b string) bool {
	if strings.EqualFold(a, b) {
		return true
	}
	as, bs := listenIPs(a), listenIPs(b)
	if slices.Contains(as, netip.IPv6Unspecified()) || slices.Contains(bs, netip.IPv6Unspecified()) {
		return true // even a name, whatever it resolves to
	}
	for _, x := range as {
		for _, y := range bs {
			if x == y || x == netip.IPv4Unspecified() && y.Is4() || y == netip.IPv4Unspecified() && x.Is4() {
				return true
			}
		}
	}
	return false
}

// listenIPs returns the addresses a listener's host may stand for, IPv4
// ones unmapped; none for a name other than localhost.
func listenIPs(host string) []netip.Addr {
	switch {
	case host == "":
		return []netip.Addr{netip.IPv6Unspecified()}
	case strings.EqualFold(host, "localhost"):
		return []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 1}), netip.IPv6Loopback()}
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return nil
	}
	return []netip.Addr{ip.Unmap()}
}

func (v *validator) listenerTLS(path string, t *ListenerTLS) {
	if len(t.Certificates) == 0 {
		v.atf(path+".certificates", "at least one certificate is required")
	}
	for i := range t.Certificates {
		c := &t.Certificates[i]
		p := fmt.Sprintf("%s.certificates[%d]", path, i)
		cert, key := c.Cert, c.Key // as written, for messages
		certPEM, certOK := v.readFile(p+".cert", "certificate", &c.Cert)
		keyPEM, keyOK := v.readFile(p+".key", "key", &c.Key)
		if !certOK || !keyOK {
			continue
		}
		if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
			v.atf(p, "certificate %q with key %q: %v", cert, key, err)
		}
	}
	switch t.MinVersion {
	case "", "1.2":
		t.MinVersion, t.MinVersionTLS = "1.2", tls.VersionTLS12
	case "1.3":
		t.MinVersionTLS = tls.VersionTLS13
	default:
		v.atf(path+".min_version", "unsupported TLS version %q (want \"1.2\" or \"1.3\")", t.MinVersion)
	}
}

// readFile makes *file absolute and reads it; what names the file in
// messages. It reports whether the file could be read.
func (v *validator) readFile(path, what string, file *string) ([]byte, bool) {
	name := *file
	if name == "" {
		v.atf(path, "required")
		return nil, false
	}
	*file = v.abs(name)
	data, err := os.ReadFile(*file)
	if err != nil {
		v.atf(path, "%s %q: %v", what, name, pathErr(err))
		return nil, false
	}
	return data, true
}

// abs resolves a path from the config against the config file's directory.
func (v *validator) abs(name string) string {
	if filepath.IsAbs(name) {
		return name
	}
	return filepath.Join(v.dir, name)
}

// pathErr drops the operation and the absolute path from a file error:
// messages name the file as written in the config.
func pathErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// upstreams checks the upstreams and compiles each once, so that routes
// share it. Every name gets an entry, even an invalid one, so a route
// naming it gets no second error.
func (v *validator) upstreams(m map[string]*Upstream) (map[string]*routes.Upstream, map[string]*upstream.Config) {
	out := make(map[string]*routes.Upstream, len(m))
	compiled := make(map[string]*upstream.Config, len(m))
	for _, name := range slices.Sorted(maps.Keys(m)) {
		u := m[name]
		if u == nil { // "name:" with no value
			u = &Upstream{}
			m[name] = u
		}
		out[name] = &routes.Upstream{Name: name}
		compiled[name] = v.upstream("upstreams."+name, name, u)
	}
	return out, compiled
}

// upstream applies an upstream's defaults, checks and compiles it.
func (v *validator) upstream(path, name string, u *Upstream) *upstream.Config {
	uc := &upstream.Config{Name: name}
	if len(u.Targets) == 0 {
		v.atf(path+".targets", "at least one target is required")
	}
	https, valid := false, true
	first := map[string]int{} // URL → index
	for i := range u.Targets {
		t := &u.Targets[i]
		tpath := fmt.Sprintf("%s.targets[%d]", path, i)
		v.unknownKeys(tpath, t.unknown)
		if t.Weight == 0 {
			t.Weight = 1
		}
		if t.Weight < 1 || t.Weight > upstream.MaxWeight {
			v.atf(tpath+".weight", "invalid weight %d (want 1 to %d)", t.Weight, upstream.MaxWeight)
		}
		if v.loc.has(tpath+".url") || (t.URL == "" && v.loc.has(tpath+".weight")) {
			tpath += ".url"
		}
		if t.URL == "" {
			v.atf(tpath, "required (a URL such as %q)", "http://127.0.0.1:9001")
			valid = false
			continue
		}
		tc, err := parseTarget(t.URL)
		if err != nil {
			v.at(tpath, err)
			valid = false
			continue
		}
		tc.Weight = t.Weight
		if j, dup := first[tc.URL()]; dup {
			v.atf(strings.TrimSuffix(tpath, ".url"), "duplicate target %q (first at targets[%d])", tc.URL(), j)
			continue
		}
		first[tc.URL()] = i
		https = https || tc.Scheme == "https"
		uc.Targets = append(uc.Targets, tc)
	}
	if u.TLS != nil && !https && valid {
		v.atf(path+".tls", "set, but no target uses https")
	}
	if https {
		uc.TLS = v.upstreamTLS(path+".tls", u.TLS, &uc.TLSSource)
	}
	v.duration(path+".connect_timeout", &u.ConnectTimeout, defaultConnectTimeout)
	v.duration(path+".response_timeout", &u.ResponseTimeout, defaultResponseTimeout)
	if u.MaxConnections < 0 {
		v.atf(path+".max_connections", "must not be negative")
	}
	if u.MaxConnections == 0 {
		u.MaxConnections = defaultMaxConnections
	}
	uc.ConnectTimeout = u.ConnectTimeout
	uc.ResponseTimeout = u.ResponseTimeout
	uc.MaxConnections = u.MaxConnections

	v.balance(path+".balance", &u.Balance, uc)
	// "health:" or "passive:" with no value is present: it turns the
	// feature on with its defaults, as {} does.
	if u.Health == nil && v.loc.has(path+".health") {
		u.Health = &Health{}
	}
	if u.Passive == nil && v.loc.has(path+".passive") {
		u.Passive = &Passive{}
	}
	if u.Health != nil {
		uc.Health = v.health(path+".health", u.Health)
	}
	if u.Passive != nil {
		uc.Passive = v.passive(path+".passive", u.Passive)
	}
	if u.Retries == nil {
		r := defaultRetries
		u.Retries = &r
	}
	if *u.Retries < 0 || *u.Retries > maxRetries {
		v.atf(path+".retries", "invalid retries %d (want 0 to %d)", *u.Retries, maxRetries)
	}
	uc.Retries = *u.Retries
	v.duration(path+".try_timeout", &u.TryTimeout, defaultTryTimeout)
	uc.TryTimeout = u.TryTimeout
	if u.RetryBodyLimit == 0 {
		u.RetryBodyLimit = defaultRetryBodyLimit
	}
	if u.RetryBodyLimit > maxRetryBodyLimit {
		v.atf(path+".retry_body_limit", "%d bytes is over the limit of 16MiB", int64(u.RetryBodyLimit))
	}
	uc.RetryBodyLimit = int64(u.RetryBodyLimit)
	v.discovery(path, u, uc)
	if u.OnTargetRemoved == "" {
		u.OnTargetRemoved = defaultOnChange
	}
	if _, ok := routes.ParseChangeAction(u.OnTargetRemoved); !ok {
		v.atf(path+".on_target_removed", "unknown action %q (want drain, keep or close)", u.OnTargetRemoved)
	}
	uc.OnTargetRemoved = u.OnTargetRemoved
	return uc
}

// unknownKeys reports the keys a mapping-or-scalar value did not know.
func (v *validator) unknownKeys(path string, keys []*yaml.Node) {
	for _, k := range keys {
		v.add(path, k.Line, v.unknownKey(path, k.Value))
	}
}

// balance checks and compiles an upstream's balancing policy.
func (v *validator) balance(path string, b *Balance, uc *upstream.Config) {
	v.unknownKeys(path, b.unknown)
	ppath := path
	if v.loc.has(path + ".policy") {
		ppath = path + ".policy"
	}
	if b.Policy == "" {
		b.Policy = defaultPolicy
	}
	p, err := upstream.ParsePolicy(b.Policy)
	if err != nil {
		v.at(ppath, err)
	}
	uc.Policy = p
	if b.Key != "" && p != upstream.Hash {
		v.atf(path+".key", "only the hash policy takes a key (policy is %s)", b.Policy)
	}
	if (b.Cookie != "" || b.Secret != "") && p != upstream.Cookie {
		field := "cookie"
		if b.Cookie == "" {
			field = "secret"
		}
		v.atf(path+"."+field, "only the cookie policy takes %s (policy is %s)", field, b.Policy)
	}
	switch p {
	case upstream.Hash:
		if b.Key == "" {
			b.Key = defaultHashKey
		}
		k, err := upstream.ParseKey(b.Key)
		if err != nil {
			v.at(path+".key", err)
		}
		if (k.Kind == upstream.KeyHeader || k.Kind == upstream.KeyCookie) && !isToken(k.Name) {
			v.atf(path+".key", "invalid name %q in key %q", k.Name, b.Key)
		}
		uc.Key = k
	case upstream.Cookie:
		if b.Cookie == "" {
			b.Cookie = defaultStickyCookie
		}
		if !isToken(b.Cookie) {
			v.atf(path+".cookie", "invalid cookie name %q", b.Cookie)
		}
		uc.Sticky = upstream.Sticky{Cookie: b.Cookie, Secret: b.Secret}
	}
}

// health checks and compiles an upstream's active health checks.
func (v *validator) health(path string, h *Health) *upstream.Health {
	hc := &upstream.Health{Path: h.Path}
	if h.Path == "" && h.WebSocket == nil {
		v.atf(path, "needs path (an HTTP check) or websocket (a WebSocket check)")
	}
	if h.Path != "" {
		v.requestPath(path+".path", h.Path)
	}
	v.duration(path+".interval", &h.Interval, defaultHealthInterval)
	if h.Timeout == 0 && h.Interval > 0 {
		h.Timeout = min(defaultHealthTimeout, h.Interval) // a short interval shortens the default
	}
	v.duration(path+".timeout", &h.Timeout, defaultHealthTimeout)
	if h.Timeout > h.Interval && h.Interval > 0 {
		v.atf(path+".timeout", "%s is longer than interval %s", h.Timeout, h.Interval)
	}
	hc.Interval, hc.Timeout = h.Interval, h.Timeout
	if h.ExpectStatus == "" {
		h.ExpectStatus = defaultExpectStatus
	}
	ranges, err := parseStatuses(h.ExpectStatus)
	if err != nil {
		v.at(path+".expect_status", err)
	}
	hc.Expect = ranges
	v.count(path+".healthy_after", &h.HealthyAfter, defaultHealthyAfter)
	v.count(path+".unhealthy_after", &h.UnhealthyAfter, defaultUnhealthyAfter)
	hc.HealthyAfter, hc.UnhealthyAfter = h.HealthyAfter, h.UnhealthyAfter
	hc.StartUnhealthy = h.StartUnhealthy
	for _, hd := range v.headerSet(path+".headers", h.Headers) {
		hc.Headers = append(hc.Headers, upstream.Header{Name: hd.Name, Value: hd.Value})
	}
	if w := h.WebSocket; w != nil {
		wpath := path + ".websocket"
		wc := &upstream.WebSocketCheck{Path: w.Path, Subprotocol: w.Subprotocol, Send: w.Send}
		if w.Path == "" {
			v.atf(wpath+".path", "required (the path of the upgrade, such as \"/ws\")")
		} else {
			v.requestPath(wpath+".path", w.Path)
		}
		if w.Subprotocol != "" && !isToken(w.Subprotocol) {
			v.atf(wpath+".subprotocol", "invalid subprotocol %q", w.Subprotocol)
		}
		if w.Expect != "" {
			if w.Send == "" {
				v.atf(wpath+".expect", "needs send (without it the check sends a ping and waits for the pong)")
			}
			re, err := regexp.Compile(w.Expect)
			if err != nil {
				v.atf(wpath+".expect", "invalid regular expression %q: %v", w.Expect, err)
			}
			wc.Expect = re
		}
		hc.WebSocket = wc
	}
	return hc
}

// requestPath checks a path sent as is in a request line: it starts with
// "/" and holds no space or control character.
func (v *validator) requestPath(path, p string) {
	if p[0] != '/' {
		v.atf(path, "%q must start with \"/\"", p)
		return
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c <= ' ' || c == 0x7f {
			v.atf(path, "%q has a space or control character (percent-encode it)", p)
			return
		}
	}
}

// count replaces a zero count with def and rejects a negative one.
func (v *validator) count(path string, n *int, def int) {
	if *n < 0 {
		v.atf(path, "must not be negative")
	}
	if *n == 0 {
		*n = def
	}
}

// parseStatuses parses "200-299, 304, 4xx" into ranges.
func parseStatuses(s string) ([]upstream.StatusRange, error) {
	var out []upstream.StatusRange
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		var r upstream.StatusRange
		switch {
		case len(part) == 3 && strings.HasSuffix(part, "xx") && part[0] >= '1' && part[0] <= '5':
			r.Min = int(part[0]-'0') * 100
			r.Max = r.Min + 99
		case isRange:
			a, err1 := strconv.Atoi(strings.TrimSpace(lo))
			b, err2 := strconv.Atoi(strings.TrimSpace(hi))
			if err1 != nil || err2 != nil {
				return nil, fmt.Errorf("invalid status range %q in %q (want codes, ranges like 200-299 or classes like 2xx)", part, s)
			}
			r = upstream.StatusRange{Min: a, Max: b}
		default:
			a, err := strconv.Atoi(part)
			if err != nil {
				return nil, fmt.Errorf("invalid status %q in %q (want codes, ranges like 200-299 or classes like 2xx)", part, s)
			}
			r = upstream.StatusRange{Min: a, Max: a}
		}
		if r.Min < 100 || r.Max > 599 || r.Min > r.Max {
			return nil, fmt.Errorf("invalid status %q in %q (want 100 to 599)", part, s)
		}
		out = append(out, r)
	}
	return out, nil
}

// passive checks and compiles an upstream's passive ejection.
func (v *validator) passive(path string, p *Passive) *upstream.Passive {
	v.count(path+".failures", &p.Failures, defaultPassiveFailures)
	if p.Failures > maxPassiveFailures {
		v.atf(path+".failures", "invalid count %d (want 1 to %d)", p.Failures, maxPassiveFailures)
	}
	v.duration(path+".window", &p.Window, defaultPassiveWindow)
	v.duration(path+".eject_for", &p.EjectFor, defaultEjectFor)
	if p.MaxEjectFor == 0 {
		p.MaxEjectFor = max(defaultMaxEjectFor, p.EjectFor) // a long eject_for raises the default cap
	}
	v.duration(path+".max_eject_for", &p.MaxEjectFor, defaultMaxEjectFor)
	if p.MaxEjectFor < p.EjectFor {
		v.atf(path+".max_eject_for", "%s is shorter than eject_for %s", p.MaxEjectFor, p.EjectFor)
	}
	v.count(path+".max_eject_percent", &p.MaxEjectPercent, defaultMaxEjectPercent)
	if p.MaxEjectPercent > 100 {
		v.atf(path+".max_eject_percent", "invalid percentage %d (want 1 to 100)", p.MaxEjectPercent)
	}
	return &upstream.Passive{
		Failures: p.Failures, Window: p.Window, EjectFor: p.EjectFor, MaxEjectFor: p.MaxEjectFor,
		MaxEjectPercent: p.MaxEjectPercent, Count5xx: p.Count5xx,
	}
}

// discovery checks and compiles an upstream's DNS discovery.
func (v *validator) discovery(path string, u *Upstream, uc *upstream.Config) {
	if !v.loc.has(path+".resolve") && v.loc.has(path+".resolve_every") && u.ResolveEvery > 0 {
		u.Resolve = true // resolve_every alone turns discovery on
	}
	v.duration(path+".resolve_every", &u.ResolveEvery, defaultResolveEvery)
	if len(u.Resolvers) > 0 && !u.Resolve {
		v.atf(path+".resolvers", "set, but resolve is off")
	}
	for i, r := range u.Resolvers {
		addr, err := resolverAddr(r)
		if err != nil {
			v.at(fmt.Sprintf("%s.resolvers[%d]", path, i), err)
			continue
		}
		uc.Resolvers = append(uc.Resolvers, addr)
	}
	if !u.Resolve {
		if v.loc.has(path+".resolve_every") && v.loc.has(path+".resolve") && u.ResolveEvery != defaultResolveEvery {
			v.warnf(path+".resolve_every", "has no effect: resolve is false")
		}
		return
	}
	uc.ResolveEvery = u.ResolveEvery
	if !slices.ContainsFunc(uc.Targets, func(t upstream.TargetConfig) bool { _, err := netip.ParseAddr(t.Host); return err != nil }) && len(uc.Targets) > 0 {
		v.warnf(path+".resolve", "has no effect: every target is an IP address")
	}
}

// warnf records a warning on a key path: a valid config that likely does
// not do what its author meant.
func (v *validator) warnf(path, format string, args ...any) {
	v.warnings = append(v.warnings, &FieldError{File: v.file, Path: path, Line: v.loc.line(path), Err: fmt.Errorf(format, args...)})
}

// upstreamWarnings warns about balancing settings that work against each
// other, for upstreams some route uses.
func (v *validator) upstreamWarnings(cfg *Config, rs []*routes.Route) {
	used := map[string]bool{}
	for _, r := range rs {
		if r.Upstream != nil {
			used[r.Upstream.Name] = true
		}
	}
	for _, name := range slices.Sorted(maps.Keys(cfg.UpstreamConfigs)) {
		uc, path := cfg.UpstreamConfigs[name], "upstreams."+name
		if !used[name] {
			continue
		}
		bpath := path + ".balance"
		if v.loc.has(bpath + ".key") {
			bpath += ".key"
		}
		if uc.Policy == upstream.Hash && uc.Key.Kind == upstream.KeyCookie {
			v.warnf(bpath, "hash on cookie %q: a request without it (a client's first one, a WebSocket client that sends no cookies) goes round robin, so it may land on another target than the client's later requests; the cookie policy sets its own cookie", uc.Key.Name)
		}
		if uc.Policy == upstream.Cookie && len(uc.Targets) == 1 && uc.ResolveEvery == 0 {
			v.warnf(path+".balance", "the cookie policy has one target to stick to: it only adds a cookie")
		}
		if uc.Policy == upstream.Hash && uc.Health != nil && uc.Passive == nil {
			v.warnf(path+".health", "a hash upstream sends a failing target's keys to it until %d health checks in a row have failed (up to %s); add passive: {} to eject it on failed requests", uc.Health.UnhealthyAfter, time.Duration(uc.Health.UnhealthyAfter)*uc.Health.Interval)
		}
	}
}

// routeWarnings warns about WebSocket settings that defeat each other:
// keepalive pings that come after the idle timeout, and cookie-based
// authentication that any web page can ride (cross-site WebSocket
// hijacking: a browser sends the cookies of the target site with a
// WebSocket handshake from any page, and the origins allow-list is what
// stops it).
func (v *validator) routeWarnings(cfg *Config) {
	for i := range cfg.Routes {
		r := &cfg.Routes[i]
		w := &r.WebSocket
		if !*w.Enabled {
			continue
		}
		path := fmt.Sprintf("routes[%d].websocket", i)
		if p := w.Ping; p != nil && w.IdleTimeout <= p.Interval {
			at := path + ".idle_timeout"
			if !v.loc.has(at) {
				at = path + ".ping.interval"
			}
			v.warnf(at, "idle_timeout %s is not longer than ping.interval %s: a quiet session is closed as idle before wsgate's first ping, so the pings never keep it open", formatDuration(w.IdleTimeout), formatDuration(p.Interval))
		}
		if len(w.Origins) > 0 || r.Auth == nil {
			continue
		}
		const hijack = "any web page the user visits can open a WebSocket to this route that carries the user's cookies (cross-site WebSocket hijacking); list the allowed origins in websocket.origins"
		apath := fmt.Sprintf("routes[%d].auth", i)
		if j := r.Auth.JWT; j != nil {
			if kind, name, _ := strings.Cut(j.From, ":"); kind == "cookie" {
				v.warnf(apath+".jwt.from", "the token comes from cookie %q and websocket.origins is empty: %s", name, hijack)
			}
		}
		if f := r.Auth.Forward; f != nil && slices.ContainsFunc(f.CopyRequestHeaders, func(h string) bool { return strings.EqualFold(h, "Cookie") }) {
			at, why := apath+".forward.copy_request_headers", ""
			if !v.loc.has(at) {
				at, why = apath+".forward", " (copy_request_headers includes it by default)"
			}
			v.warnf(at, "the auth service is sent the client's Cookie header%s and websocket.origins is empty: %s", why, hijack)
		}
	}
}

// terminationGrace is Kubernetes' default terminationGracePeriodSeconds:
// a pod still running this long after SIGTERM is killed.
const terminationGrace = 30 * time.Second

// shutdownWarnings warns when a graceful shutdown takes longer than
// Kubernetes waits for one by default.
func (v *validator) shutdownWarnings(t *Timeouts) {
	total := t.ShutdownDelay + t.Drain
	if total <= terminationGrace {
		return
	}
	at := "timeouts.drain"
	if !v.loc.has(at) {
		at = "timeouts.shutdown_delay"
	}
	v.warnf(at, "shutdown_delay %s + drain %s = %s is longer than %s, Kubernetes' default terminationGracePeriodSeconds: under Kubernetes, raise the pod's terminationGracePeriodSeconds above %s (plus any preStop sleep), or wsgate is killed before it has drained",
		formatDuration(t.ShutdownDelay), formatDuration(t.Drain), formatDuration(total), formatDuration(terminationGrace), formatDuration(total))
}

// resolverAddr returns a DNS server's host:port, port 53 by default.
func resolverAddr(s string) (string, error) {
	if _, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
		return net.JoinHostPort(strings.Trim(s, "[]"), "53"), nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" {
		return "", fmt.Errorf("invalid DNS server %q (want host or host:port, such as \"10.96.0.10\" or \"127.0.0.1:5353\")", s)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return "", fmt.Errorf("invalid port %q in DNS server %q", port, s)
	}
	return s, nil
}

// parseTarget parses an upstream target URL.
func parseTarget(s string) (upstream.TargetConfig, error) {
	const want = "want http://host[:port] or https://host[:port]"
	u, err := url.Parse(s)
	if err != nil || !strings.Contains(s, "://") {
		return upstream.TargetConfig{}, fmt.Errorf("invalid target %q (%s)", s, want)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return upstream.TargetConfig{}, fmt.Errorf("unsupported scheme %q (want http or https)", u.Scheme)
	}
	switch {
	case u.Hostname() == "":
		return upstream.TargetConfig{}, fmt.Errorf("target %q has no host (%s)", s, want)
	case u.User != nil:
		return upstream.TargetConfig{}, fmt.Errorf("target %q must not have user info", s)
	case u.Path != "" && u.Path != "/":
		return upstream.TargetConfig{}, fmt.Errorf("target %q must not have a path", s)
	case u.RawQuery != "" || u.ForceQuery:
		return upstream.TargetConfig{}, fmt.Errorf("target %q must not have a query", s)
	case u.Fragment != "":
		return upstream.TargetConfig{}, fmt.Errorf("target %q must not have a fragment", s)
	}
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return upstream.TargetConfig{}, fmt.Errorf("invalid port %q in target %q (want 1 to 65535)", port, s)
	}
	return upstream.TargetConfig{Scheme: u.Scheme, Host: strings.ToLower(u.Hostname()), Port: port}, nil
}

// upstreamTLS compiles the client TLS settings of an upstream with https
// targets; t may be nil.
func (v *validator) upstreamTLS(path string, t *UpstreamTLS, source *string) *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if t == nil {
		return c
	}
	c.ServerName = t.ServerName
	c.InsecureSkipVerify = t.InsecureSkipVerify
	*source = fmt.Sprintf("server_name=%q insecure=%t", t.ServerName, t.InsecureSkipVerify)
	if t.CA != "" {
		ca := t.CA
		if pem, ok := v.readFile(path+".ca", "CA file", &t.CA); ok {
			*source += fmt.Sprintf(" ca=%x", sha256.Sum256(pem))
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				v.atf(path+".ca", "CA file %q holds no PEM certificate", ca)
			}
			c.RootCAs = pool
		}
	}
	return c
}

// routeKey is what two routes must share to compete for a request.
type routeKey struct {
	host string // one host pattern; "" for any host
	kind string // "path" or "path_prefix"
	path string // prefixes without their trailing slash
}

// routes checks the routes and compiles them in file order.
func (v *validator) routes(cfg *Config, ups map[string]*routes.Upstream) []*routes.Route {
	out := make([]*routes.Route, 0, len(cfg.Routes))
	seen := map[routeKey][]int{} // → indexes of earlier routes
	names := map[string]int{}    // → index of the route that has it
	for i := range cfg.Routes {
		r := &cfg.Routes[i]
		path := fmt.Sprintf("routes[%d]", i)
		v.match(path+".match", &r.Match)
		v.duplicates(i, cfg.Routes, seen)
		id := "match:" + matchID(&r.Match)
		if r.Name != "" {
			// A reload finds a route's sessions by name: it must be
			// unique.
			if j, dup := names[r.Name]; dup {
				v.atf(path+".name", "duplicate route name %q (first at routes[%d])", r.Name, j)
			} else {
				names[r.Name] = i
			}
			id = "name:" + r.Name
		} else {
			r.Name = path
		}

		rr := &routes.Route{
			Name:            r.Name,
			ID:              id,
			Hosts:           r.Match.Host,
			Path:            r.Match.Path,
			PathPrefix:      r.Match.PathPrefix,
			Methods:         r.Match.Methods,
			StripPrefix:     r.StripPrefix,
			RequestHeaders:  v.headers(path+".request_headers", r.RequestHeaders),
			ResponseHeaders: v.headers(path+".response_headers", r.ResponseHeaders),
			WebSocket:       v.websocket(path+".websocket", &r.WebSocket),
			Limits: routes.Limits{
				RequestsPerSecondPerIP: r.Limits.RequestsPerSecondPerIP,
				RequestBurst:           v.rate(path+".limits", "requests_per_second_per_ip", r.Limits.RequestsPerSecondPerIP, r.Limits.Burst),
			},
		}
		if r.Auth != nil {
			rr.Auth = v.auth(path+".auth", r.Auth)
		}
		if r.StripPrefix && r.Match.PathPrefix == "" {
			v.atf(path+".strip_prefix", "needs match.path_prefix")
		}
		rr.RewriteRedirects = r.StripPrefix && (r.RewriteRedirects == nil || *r.RewriteRedirects)
		if r.MaxRequestBody == 0 {
			r.MaxRequestBody = Size(cfg.Limits.RequestBody)
		}
		rr.MaxRequestBody = int64(r.MaxRequestBody)
		v.handler(path, r, rr, ups)
		out = append(out, rr)
	}
	return out
}

// match checks and normalises a route's match block: hosts lower-cased,
// methods upper-cased.
func (v *validator) match(path string, m *Match) {
	for i, h := range m.Host {
		h = strings.ToLower(h)
		m.Host[i] = h
		if err := routes.CheckHost(h); err != nil {
			p := path + ".host"
			if v.loc.has(p + "[0]") {
				p = fmt.Sprintf("%s[%d]", p, i)
			}
			v.at(p, err)
		}
	}
	if m.Path == "" && m.PathPrefix == "" {
		v.atf(path, "needs path or path_prefix")
	}
	if m.Path != "" && m.Path[0] != '/' {
		v.atf(path+".path", "%q must start with \"/\"", m.Path)
	}
	if m.PathPrefix != "" && m.PathPrefix[0] != '/' {
		v.atf(path+".path_prefix", "%q must start with \"/\"", m.PathPrefix)
	}
	for i, meth := range m.Methods {
		meth = strings.ToUpper(meth)
		m.Methods[i] = meth
		if !isToken(meth) {
			v.atf(fmt.Sprintf("%s.methods[%d]", path, i), "invalid method %q", meth)
		}
	}
}

// duplicates reports route i if an earlier route already takes the same
// requests: a shared host (or both any host), the same path or prefix,
// and a shared method. The earlier one would always win.
func (v *validator) duplicates(i int, rs []Route, seen map[routeKey][]int) {
	m := &rs[i].Match
	hosts := []string(m.Host)
	if len(hosts) == 0 {
		hosts = []string{""}
	}
	check := func(kind, value, key string) {
		if value == "" {
			return
		}
		reported := false
		for _, h := range hosts {
			k := routeKey{host: h, kind: kind, path: key}
			for _, j := range seen[k] {
				if reported {
					break
				}
				if j != i && methodsOverlap(rs[j].Match.Methods, m.Methods) {
					what := fmt.Sprintf("%q", value)
					if kind == "path_prefix" {
						what = "prefix " + what
					}
					first := v.loc.line(fmt.Sprintf("routes[%d].match.%s", j, kind))
					v.atf(fmt.Sprintf("routes[%d].match.%s", i, kind), "duplicate route for %s (first defined at line %d)", what, first)
					reported = true
				}
			}
			seen[k] = append(seen[k], i)
		}
	}
	check("path", m.Path, m.Path)
	check("path_prefix", m.PathPrefix, trimSlash(m.PathPrefix))
}

// trimSlash removes one trailing slash: "/api/" and "/api" are the same
// prefix (as in [routes.Table]).
func trimSlash(p string) string {
	if len(p) > 1 && p[len(p)-1] == '/' {
		return p[:len(p)-1]
	}
	return p
}

// methodsOverlap reports whether some method is allowed by both lists;
// an empty list allows every method.
func methodsOverlap(a, b []string) bool {
	if len(a) == 0 || len(b) == 0 {
		return true
	}
	for _, m := range a {
		if slices.Contains(b, m) {
			return true
		}
	}
	return false
}

// handler checks that exactly one of upstream, respond, redirect and
// static is set, and compiles it.
func (v *validator) handler(path string, r *Route, rr *routes.Route, ups map[string]*routes.Upstream) {
	var set []string
	if r.Upstream != "" {
		set = append(set, "upstream")
	}
	if r.Respond != nil {
		set = append(set, "respond")
	}
	if r.Redirect != nil {
		set = append(set, "redirect")
	}
	if r.Static != nil {
		set = append(set, "static")
	}
	switch len(set) {
	case 0:
		v.atf(path, "needs one of upstream, respond, redirect or static")
	case 1:
	default:
		v.atf(path, "has both %s and %s (want exactly one of upstream, respond, redirect or static)", set[0], set[1])
	}

	if r.Upstream != "" {
		rr.Upstream = ups[r.Upstream]
		if rr.Upstream == nil {
			v.atf(path+".upstream", "unknown upstream %q", r.Upstream)
		}
	}
	if a := r.Respond; a != nil {
		if a.Status == 0 {
			a.Status = defaultRespondStatus
		}
		if a.Status < 100 || a.Status > 599 {
			v.atf(path+".respond.status", "invalid status %d (want 100 to 599)", a.Status)
		}
		rr.Respond = &routes.Respond{Status: a.Status, Body: a.Body}
	}
	if a := r.Redirect; a != nil {
		if a.To == "" {
			v.atf(path+".redirect.to", "required")
		}
		if a.Status == 0 {
			a.Status = defaultRedirectStatus
		}
		switch a.Status {
		case 301, 302, 303, 307, 308:
		default:
			v.atf(path+".redirect.status", "invalid status %d (want 301, 302, 303, 307 or 308)", a.Status)
		}
		rr.Redirect = &routes.Redirect{To: a.To, Status: a.Status}
	}
	if a := r.Static; a != nil {
		v.staticRoot(path+".static.root", a)
		rr.Static = &routes.Static{Root: a.Root}
	}
}

func (v *validator) staticRoot(path string, s *Static) {
	root := s.Root
	if root == "" {
		v.atf(path, "required")
		return
	}
	s.Root = v.abs(root)
	fi, err := os.Stat(s.Root)
	switch {
	case err != nil:
		v.atf(path, "static root %q: %v", root, pathErr(err))
	case !fi.IsDir():
		v.atf(path, "static root %q is not a directory", root)
	}
}

// headers checks header edits and compiles them; sets are sorted by name,
// since a YAML mapping has no order the decoder keeps.
func (v *validator) headers(path string, h Headers) routes.HeaderOps {
	var ops routes.HeaderOps
	ops.Set = v.headerSet(path+".set", h.Set)
	for i, name := range h.Remove {
		if !isToken(name) {
			v.atf(fmt.Sprintf("%s.remove[%d]", path, i), "invalid header name %q", name)
		}
	}
	ops.Remove = h.Remove
	return ops
}

// headerSet checks a mapping of header names to values and returns it
// sorted by name.
func (v *validator) headerSet(path string, m map[string]string) []routes.Header {
	var out []routes.Header
	for _, name := range slices.Sorted(maps.Keys(m)) {
		value := m[name]
		if !isToken(name) {
			v.atf(path+"."+name, "invalid header name %q", name)
		}
		if strings.ContainsAny(value, "\r\n\x00") {
			v.atf(path+"."+name, "header value %q must not contain CR, LF or NUL", value)
		}
		out = append(out, routes.Header{Name: name, Value: value})
	}
	return out
}

// websocket applies the WebSocket defaults, checks and compiles them.
func (v *validator) websocket(path string, w *WebSocket) routes.WebSocket {
	if w.Enabled == nil {
		enabled := true
		w.Enabled = &enabled
	}
	for i, o := range w.Origins {
		o = strings.ToLower(o)
		w.Origins[i] = o
		if !isOrigin(o) {
			v.atf(fmt.Sprintf("%s.origins[%d]", path, i), "invalid origin %q (want scheme://host[:port], such as %q)", o, "https://app.example.com")
		}
	}
	if w.MaxMessageSize == 0 {
		w.MaxMessageSize = defaultMaxMessageSize
	}
	v.duration(path+".idle_timeout", &w.IdleTimeout, defaultIdleTimeout)
	v.duration(path+".handshake_timeout", &w.HandshakeTimeout, defaultHandshakeTimeout)
	if w.OnChange == "" {
		w.OnChange = defaultOnChange
	}
	action, ok := routes.ParseChangeAction(w.OnChange)
	if !ok {
		v.atf(path+".on_change", "unknown action %q (want drain, keep or close)", w.OnChange)
	}
	v.closeCode(path+".on_change_code", &w.OnChangeCode, defaultOnChangeCode,
		path+".on_change_reason", &w.OnChangeReason, defaultOnChangeReason)
	seen := map[string]int{}
	for i, p := range w.Subprotocols {
		ppath := fmt.Sprintf("%s.subprotocols[%d]", path, i)
		if !isToken(p) {
			v.atf(ppath, "invalid subprotocol %q (want a token, such as %q)", p, "chat.v2")
		} else if j, dup := seen[p]; dup {
			v.atf(ppath, "duplicate subprotocol %q (first at subprotocols[%d])", p, j)
		}
		seen[p] = i
	}
	if w.MaxSessions < 0 {
		v.atf(path+".max_sessions", "must not be negative (0: no cap)")
	}
	if w.MaxSessionsPerIP < 0 {
		v.atf(path+".max_sessions_per_ip", "must not be negative (0: no cap)")
	}
	if w.RequireSubprotocol == nil {
		require := true
		w.RequireSubprotocol = &require
	}
	var pingInterval, pingTimeout time.Duration
	if p := w.Ping; p != nil {
		v.duration(path+".ping.interval", &p.Interval, defaultPingInterval)
		v.duration(path+".ping.timeout", &p.Timeout, defaultPingTimeout)
		if p.Interval > 0 && p.Interval < 100*time.Millisecond {
			v.atf(path+".ping.interval", "%s is under the minimum of 100ms", p.Interval)
		}
		if p.Interval > maxPolicyDuration {
			v.atf(path+".ping.interval", "%s is over the maximum of %s", p.Interval, maxPolicyDuration)
		}
		if p.Timeout > maxPolicyDuration {
			v.atf(path+".ping.timeout", "%s is over the maximum of %s", p.Timeout, maxPolicyDuration)
		}
		pingInterval, pingTimeout = p.Interval, p.Timeout
	}
	v.duration(path+".tcp_user_timeout", &w.TCPUserTimeout, defaultTCPUserTimeout)
	if w.TCPUserTimeout > 0 && w.TCPUserTimeout < time.Second {
		v.atf(path+".tcp_user_timeout", "%s is under the minimum of 1s", w.TCPUserTimeout)
	}
	if w.TCPUserTimeout > maxPolicyDuration {
		v.atf(path+".tcp_user_timeout", "%s is over the maximum of %s", w.TCPUserTimeout, maxPolicyDuration)
	}
	burst := v.rate(path, "max_messages_per_second", w.MaxMessagesPerSecond, w.Burst)
	if w.RateLimitAction == "" {
		w.RateLimitAction = "close"
	}
	if w.RateLimitAction != "close" && w.RateLimitAction != "drop" {
		v.atf(path+".rate_limit_action", "unknown action %q (want close or drop)", w.RateLimitAction)
	}
	if w.ValidateUTF8 == nil {
		validate := true
		w.ValidateUTF8 = &validate
	}
	return routes.WebSocket{
		PingInterval:         pingInterval,
		PingTimeout:          pingTimeout,
		TCPUserTimeout:       w.TCPUserTimeout,
		MaxMessagesPerSecond: w.MaxMessagesPerSecond,
		MessageBurst:         burst,
		DropOverRate:         w.RateLimitAction == "drop",
		ValidateUTF8:         *w.ValidateUTF8,
		Subprotocols:         w.Subprotocols,
		RequireSubprotocol:   *w.RequireSubprotocol,
		MaxSessions:          w.MaxSessions,
		MaxSessionsPerIP:     w.MaxSessionsPerIP,
		Enabled:              *w.Enabled,
		Origins:              w.Origins,
		MaxMessageSize:       int64(w.MaxMessageSize),
		IdleTimeout:          w.IdleTimeout,
		HandshakeTimeout:     w.HandshakeTimeout,
		OnChange:             action,
		CloseCode:            uint16(w.OnChangeCode),
		CloseReason:          *w.OnChangeReason,
	}
}

// closeCode checks (and defaults) a close code wsgate sends and its
// reason: a code a proxy may send, a reason of at most 123 bytes of UTF-8.
func (v *validator) closeCode(codePath string, code *int, defCode int, reasonPath string, reason **string, defReason string) {
	if *code == 0 {
		*code = defCode
	}
	if !sendableCloseCode(*code) {
		v.atf(codePath, "close code %d cannot be sent (want 1000, 1001, 1008, 1011 to 1013, or 3000 to 4999)", *code)
	}
	if *reason == nil {
		r := defReason
		*reason = &r
	}
	if n := len(**reason); n > maxCloseReason {
		v.atf(reasonPath, "%d bytes is over the limit of %d (a close frame carries at most 125)", n, maxCloseReason)
	} else if !utf8.ValidString(**reason) {
		v.atf(reasonPath, "not valid UTF-8")
	}
}

// sendableCloseCode reports whether a proxy may send code in a close
// frame of its own (RFC 6455 §7.4): the defined codes that describe a
// server's reasons, and the registered and private ranges.
func sendableCloseCode(code int) bool {
	switch {
	case code == 1000, code == 1001, code == 1008, code >= 1011 && code <= 1013:
		return true
	}
	return code >= 3000 && code <= 4999
}

// matchID identifies an unnamed route across reloads by what it matches.
// Hosts and methods are sets: their order does not matter.
func matchID(m *Match) string {
	return fmt.Sprintf("host=%q path=%q prefix=%q methods=%q",
		slices.Sorted(slices.Values(m.Host)), m.Path, trimSlash(m.PathPrefix), slices.Sorted(slices.Values(m.Methods)))
}

// isOrigin reports whether o is a serialised origin: scheme://host[:port].
func isOrigin(o string) bool {
	u, err := url.Parse(o)
	return err == nil && u.Scheme != "" && u.Host != "" && u.User == nil &&
		u.Path == "" && u.RawQuery == "" && !u.ForceQuery && u.Fragment == "" &&
		strings.HasPrefix(o, u.Scheme+"://")
}

func (v *validator) trustedProxies(list []string) []netip.Prefix {
	var out []netip.Prefix
	for i, s := range list {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			v.atf(fmt.Sprintf("trusted_proxies[%d]", i), "invalid IP or CIDR %q", s)
			continue
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out
}

// isToken reports whether s is an HTTP token (RFC 9110 section 5.6.2), as
// method and header names must be.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0 {
			continue
		}
		return false
	}
	return true
}
