package routes

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Table is an immutable route table. Build one with [New]; it is safe for
// concurrent use, and a reload builds a new one instead of changing it.
//
// Precedence: the host decides first — an exact host beats a one-label
// wildcard ("*.example.com"), which beats routes with no host. Within the
// most specific host group that has a route for the request, an exact path
// beats the longest matching path prefix; ties go to file order. A route
// whose Methods exclude the request method is skipped, and the search goes
// on to the next candidate.
type Table struct {
	routes   []*Route
	exact    map[string]*group // host → routes
	wildcard map[string]*group // ".example.com" → routes of "*.example.com"
	anyHost  *group
}

// group holds the routes of one host key, indexed by path.
type group struct {
	exact  map[string][]*Route // path → routes in file order
	prefix map[string][]*Route // normalised prefix → routes in file order
}

// New builds a table from routes in file order. It fails on a route with
// neither Path nor PathPrefix, or with a malformed host or path. It sets
// each route's Index, and its ID when empty ("index:" and the index).
func New(rs []*Route) (*Table, error) {
	t := &Table{
		routes:   rs,
		exact:    map[string]*group{},
		wildcard: map[string]*group{},
		anyHost:  newGroup(),
	}
	for i, r := range rs {
		if r.Path == "" && r.PathPrefix == "" {
			return nil, fmt.Errorf("route %q: needs path or path_prefix", r.Name)
		}
		if r.Path != "" && r.Path[0] != '/' {
			return nil, fmt.Errorf("route %q: path %q must start with /", r.Name, r.Path)
		}
		if r.PathPrefix != "" && r.PathPrefix[0] != '/' {
			return nil, fmt.Errorf("route %q: path_prefix %q must start with /", r.Name, r.PathPrefix)
		}
		r.Index = i
		if r.ID == "" {
			// A table built without package config (whose names need
			// not be unique): the position stands in.
			r.ID = "index:" + strconv.Itoa(i)
		}
		if len(r.Hosts) == 0 {
			t.anyHost.add(r)
			continue
		}
		for _, h := range r.Hosts {
			h = strings.ToLower(h)
			if err := CheckHost(h); err != nil {
				return nil, fmt.Errorf("route %q: %w", r.Name, err)
			}
			m, key := t.exact, h
			if strings.HasPrefix(h, "*.") {
				m, key = t.wildcard, h[1:]
			}
			g := m[key]
			if g == nil {
				g = newGroup()
				m[key] = g
			}
			g.add(r)
		}
	}
	return t, nil
}

// CheckHost reports whether h is a usable host pattern: a lower-case name
// or IP, optionally starting with "*." (one label), with no port.
func CheckHost(h string) error {
	name := strings.TrimPrefix(h, "*.")
	if name == "" {
		return fmt.Errorf("empty host")
	}
	if strings.Contains(name, "*") {
		return fmt.Errorf("host %q: a wildcard is allowed only as the whole first label (*.example.com)", h)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '.', c == '_', c == ':', c == '[', c == ']':
		case c >= 'A' && c <= 'Z':
			return fmt.Errorf("host %q must be lower-case", h)
		default:
			return fmt.Errorf("host %q has invalid character %q", h, c)
		}
	}
	// Match strips the port and a final dot from the request's host, and
	// keeps the brackets of an IPv6 literal: any other pattern never matches.
	if strings.ContainsAny(name, ":[]") {
		inner, ok1 := strings.CutPrefix(name, "[")
		inner, ok2 := strings.CutSuffix(inner, "]")
		a, err := netip.ParseAddr(inner)
		if !ok1 || !ok2 || name != h || err != nil || !a.Is6() {
			return fmt.Errorf("host %q must have no port; write an IPv6 address in brackets, such as [::1]", h)
		}
	}
	if strings.HasSuffix(name, ".") {
		return fmt.Errorf("host %q must not end with a dot", h)
	}
	return nil
}

func newGroup() *group {
	return &group{exact: map[string][]*Route{}, prefix: map[string][]*Route{}}
}

func (g *group) add(r *Route) {
	if r.Path != "" {
		g.exact[r.Path] = append(g.exact[r.Path], r)
	}
	if r.PathPrefix != "" {
		p := trimPrefix(r.PathPrefix)
		g.prefix[p] = append(g.prefix[p], r)
	}
}

// trimPrefix normalises a prefix: "/api/" and "/api" are the same prefix.
func trimPrefix(p string) string {
	if len(p) > 1 && p[len(p)-1] == '/' {
		return p[:len(p)-1]
	}
	return p
}

// Routes returns the routes in file order. The slice must not be modified.
func (t *Table) Routes() []*Route { return t.routes }

// Match returns the route for a request, or nil when none matches.
// host may carry a port and any letter case; path is the normalised
// request path. Match allocates nothing.
func (t *Table) Match(method, host, path []byte) *Route {
	var buf [256]byte
	h := hostKey(buf[:0], host)
	if g := t.exact[string(h)]; g != nil {
		if r := g.match(method, path); r != nil {
			return r
		}
	}
	if len(t.wildcard) > 0 {
		if i := indexByte(h, '.'); i > 0 {
			if g := t.wildcard[string(h[i:])]; g != nil {
				if r := g.match(method, path); r != nil {
					return r
				}
			}
		}
	}
	return t.anyHost.match(method, path)
}

func (g *group) match(method, path []byte) *Route {
	if rs := g.exact[string(path)]; rs != nil {
		if r := firstAllowing(rs, method); r != nil {
			return r
		}
	}
	if len(g.prefix) == 0 {
		return nil
	}
	// Walk segment boundaries from the longest candidate to "/": each is
	// one map lookup, so the cost follows the path depth, not the table size.
	p := path
	if len(p) > 1 && p[len(p)-1] == '/' {
		p = p[:len(p)-1]
	}
	for len(p) > 0 {
		if rs := g.prefix[string(p)]; rs != nil {
			if r := firstAllowing(rs, method); r != nil {
				return r
			}
		}
		if len(p) == 1 {
			break
		}
		i := lastIndexByte(p, '/')
		if i <= 0 {
			p = p[:1] // "/"
		} else {
			p = p[:i]
		}
	}
	return nil
}

func firstAllowing(rs []*Route, method []byte) *Route {
	for _, r := range rs {
		if r.allows(method) {
			return r
		}
	}
	return nil
}

func (r *Route) allows(method []byte) bool {
	if len(r.Methods) == 0 {
		return true
	}
	for _, m := range r.Methods {
		if m == string(method) {
			return true
		}
	}
	return false
}

// hostKey appends the lower-cased host without its port to dst. A host
// longer than dst's capacity is returned as is (and so matches no route).
func hostKey(dst, host []byte) []byte {
	// Strip the port: "[::1]:80" → "[::1]", "a.b:80" → "a.b".
	if n := len(host); n > 0 {
		if host[0] == '[' {
			if i := indexByte(host, ']'); i > 0 {
				host = host[:i+1]
			}
		} else if i := lastIndexByte(host, ':'); i >= 0 {
			host = host[:i]
		}
	}
	if len(host) > 0 && host[len(host)-1] == '.' {
		host = host[:len(host)-1] // "example.com." is "example.com"
	}
	if len(host) > cap(dst) {
		return host
	}
	for _, c := range host {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	return dst
}

func indexByte(b []byte, c byte) int {
	for i := range b {
		if b[i] == c {
			return i
		}
	}
	return -1
}

func lastIndexByte(b []byte, c byte) int {
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == c {
			return i
		}
	}
	return -1
}
