package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/wsgate/wsgate/routes"
	"github.com/wsgate/wsgate/upstream"
)

// validator applies defaults to a decoded document, checks it and compiles
// it, recording every problem with its key path.
type validator struct {
	*problems
	dir string // absolute directory of the config file
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
	}
	v.limits(&cfg.Limits)
	v.timeouts(&cfg.Timeouts)
	v.listeners(cfg.Listeners)
	ups, compiled := v.upstreams(cfg.Upstreams)
	cfg.UpstreamConfigs = compiled
	rs := v.routes(cfg, ups)
	cfg.Trusted = v.trustedProxies(cfg.TrustedProxies)
	if len(v.errs) > 0 {
		return nil
	}
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
	v.duration("timeouts.shutdown_delay", &t.ShutdownDelay, defaultTimeouts.ShutdownDelay)
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
		path := "upstreams." + name
		u := m[name]
		if u == nil { // "name:" with no value
			u = &Upstream{}
			m[name] = u
		}
		if len(u.Targets) == 0 {
			v.atf(path+".targets", "at least one target is required")
		}
		uc := &upstream.Config{Name: name}
		https, valid := false, true
		for i, s := range u.Targets {
			t, err := parseTarget(s)
			if err != nil {
				v.at(fmt.Sprintf("%s.targets[%d]", path, i), err)
				valid = false
				continue
			}
			https = https || t.Scheme == "https"
			uc.Targets = append(uc.Targets, t)
		}
		if u.TLS != nil && !https && valid {
			v.atf(path+".tls", "set, but no target uses https")
		}
		if https {
			uc.TLS = v.upstreamTLS(path+".tls", u.TLS)
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
		out[name] = &routes.Upstream{Name: name}
		compiled[name] = uc
	}
	return out, compiled
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
func (v *validator) upstreamTLS(path string, t *UpstreamTLS) *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if t == nil {
		return c
	}
	c.ServerName = t.ServerName
	c.InsecureSkipVerify = t.InsecureSkipVerify
	if t.CA != "" {
		ca := t.CA
		if pem, ok := v.readFile(path+".ca", "CA file", &t.CA); ok {
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
	for i := range cfg.Routes {
		r := &cfg.Routes[i]
		path := fmt.Sprintf("routes[%d]", i)
		if r.Name == "" {
			r.Name = path
		}
		v.match(path+".match", &r.Match)
		v.duplicates(i, cfg.Routes, seen)

		rr := &routes.Route{
			Name:            r.Name,
			Hosts:           r.Match.Host,
			Path:            r.Match.Path,
			PathPrefix:      r.Match.PathPrefix,
			Methods:         r.Match.Methods,
			StripPrefix:     r.StripPrefix,
			RequestHeaders:  v.headers(path+".request_headers", r.RequestHeaders),
			ResponseHeaders: v.headers(path+".response_headers", r.ResponseHeaders),
			WebSocket:       v.websocket(path+".websocket", &r.WebSocket),
		}
		if r.StripPrefix && r.Match.PathPrefix == "" {
			v.atf(path+".strip_prefix", "needs match.path_prefix")
		}
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
	for _, name := range slices.Sorted(maps.Keys(h.Set)) {
		value := h.Set[name]
		if !isToken(name) {
			v.atf(path+".set."+name, "invalid header name %q", name)
		}
		if strings.ContainsAny(value, "\r\n\x00") {
			v.atf(path+".set."+name, "header value %q must not contain CR, LF or NUL", value)
		}
		ops.Set = append(ops.Set, routes.Header{Name: name, Value: value})
	}
	for i, name := range h.Remove {
		if !isToken(name) {
			v.atf(fmt.Sprintf("%s.remove[%d]", path, i), "invalid header name %q", name)
		}
	}
	ops.Remove = h.Remove
	return ops
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
	return routes.WebSocket{
		Enabled:          *w.Enabled,
		Origins:          w.Origins,
		MaxMessageSize:   int64(w.MaxMessageSize),
		IdleTimeout:      w.IdleTimeout,
		HandshakeTimeout: w.HandshakeTimeout,
	}
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
