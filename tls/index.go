package tls

import (
	stdtls "crypto/tls"
	"strings"
)

// maxNameLen bounds a DNS name (RFC 1035 §2.3.4: 255 octets on the wire,
// 253 as text). Longer SNI values cannot match and get the default.
const maxNameLen = 253

// index is an immutable certificate set with its SNI lookup tables. A
// reload builds a new one and swaps it in.
type index struct {
	certs []*stdtls.Certificate          // in pair order; certs[0] is the default
	exact map[string]*stdtls.Certificate // "a.example.com" → first pair naming it
	wild  map[string]*stdtls.Certificate // "example.com" for "*.example.com" → first pair
	names []string                       // every name in pair order, for logs
}

// newIndex builds the lookup tables for certs, whose Leaf must be set.
// Names are the leaf's DNS SANs or, when it has none, its Subject CN.
func newIndex(certs []*stdtls.Certificate) *index {
	x := &index{
		certs: certs,
		exact: make(map[string]*stdtls.Certificate),
		wild:  make(map[string]*stdtls.Certificate),
	}
	for _, c := range certs {
		names := c.Leaf.DNSNames
		if len(names) == 0 && c.Leaf.Subject.CommonName != "" {
			names = []string{c.Leaf.Subject.CommonName}
		}
		for _, n := range names {
			n = strings.TrimSuffix(strings.ToLower(n), ".")
			x.names = append(x.names, n)
			if suffix, ok := strings.CutPrefix(n, "*."); ok {
				if suffix == "" || strings.Contains(suffix, "*") {
					continue // not a wildcard a client would accept
				}
				if _, dup := x.wild[suffix]; !dup {
					x.wild[suffix] = c
				}
				continue
			}
			if n == "" || strings.Contains(n, "*") {
				continue // partial-label wildcards ("a*.example.com") are not supported by clients either
			}
			if _, dup := x.exact[n]; !dup {
				x.exact[n] = c
			}
		}
	}
	return x
}

// lookup returns the certificate for an SNI server name. It does not
// allocate: the name is lower-cased into a stack buffer, and map lookups
// keyed by string(bytes) do not copy.
func (x *index) lookup(serverName string) *stdtls.Certificate {
	name := strings.TrimSuffix(serverName, ".")
	if name == "" || len(name) > maxNameLen || isIPLike(name) {
		return x.certs[0]
	}
	var buf [maxNameLen]byte
	b := buf[:len(name)]
	for i := 0; i < len(name); i++ {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b[i] = c
	}
	if c, ok := x.exact[string(b)]; ok {
		return c
	}
	// A wildcard covers exactly one non-empty leftmost label.
	for i, c := range b {
		if c == '.' {
			if i > 0 && i < len(b)-1 {
				if c, ok := x.wild[string(b[i+1:])]; ok {
					return c
				}
			}
			break
		}
	}
	return x.certs[0]
}

// isIPLike reports whether name is an IPv6 address (only those contain
// ':') or made of digits and dots only (IPv4; no valid host name has an
// all-numeric top-level label). RFC 6066 §3 forbids IPs in SNI, but some
// clients send them anyway.
func isIPLike(name string) bool {
	if strings.IndexByte(name, ':') >= 0 {
		return true
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c != '.' && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}
