package upstream

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"
)

// Resolver looks up the addresses of a host name; *net.Resolver is one.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// systemResolver returns the system's resolver, or one that asks the
// given DNS servers (host:port) in turn.
func systemResolver(servers []string) Resolver {
	if len(servers) == 0 {
		return net.DefaultResolver
	}
	var next atomic.Uint32
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, servers[int(next.Add(1)-1)%len(servers)])
		},
	}
}

// name is a target host name under discovery.
type name struct {
	host  string
	tcs   []TargetConfig // the targets written with this host
	addrs []netip.Addr   // the last good answer, sorted
	state nameState      // what the log last said about it
}

type nameState uint8

const (
	nameUnknown  nameState = iota
	nameResolved           // addresses found
	nameMissing            // the name does not exist or has no address
	nameFailing            // the lookup fails: the last good answer stays
)

// mergeNames joins the entries of the same host.
func mergeNames(ns []*name) []*name {
	var out []*name
	for _, n := range ns {
		i := slices.IndexFunc(out, func(o *name) bool { return o.host == n.host })
		if i < 0 {
			out = append(out, n)
			continue
		}
		out[i].tcs = append(out[i].tcs, n.tcs...)
	}
	return out
}

// resolveTimeout bounds one round of lookups.
const resolveTimeout = 5 * time.Second

// resolveLoop resolves the names every Config.ResolveEvery until Close.
func (s *Set) resolveLoop() {
	tick := time.NewTicker(s.cfg.ResolveEvery)
	defer tick.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(s.ctx, resolveTimeout)
		s.resolve(ctx)
		cancel()
	}
}

// resolve looks up every name and, when the addresses changed, publishes
// the new targets: an address that appeared becomes a target (with the
// state its URL had, if any), one that disappeared stops receiving
// requests; sessions open on it stay until they end. A lookup that fails
// keeps the name's last good addresses. Each change of a name's state is
// logged once.
func (s *Set) resolve(ctx context.Context) {
	for _, n := range s.names {
		addrs, err := s.resolver.LookupNetIP(ctx, "ip", n.host)
		if ctx.Err() != nil && s.ctx.Err() != nil {
			return // closing
		}
		var dnsErr *net.DNSError
		switch {
		case err == nil && len(addrs) > 0:
			n.addrs = sortAddrs(addrs)
			if n.state != nameResolved {
				if n.state == nameFailing || n.state == nameMissing {
					s.log.Info("resolve recovered", "name", n.host, "addresses", len(n.addrs))
				}
				n.state = nameResolved
			}
		case err == nil, errors.As(err, &dnsErr) && dnsErr.IsNotFound:
			n.addrs = nil
			if n.state != nameMissing {
				s.log.Warn("name has no addresses", "name", n.host)
				n.state = nameMissing
			}
		default:
			if n.state != nameFailing {
				s.log.Warn("resolve failed; keeping the last addresses", "name", n.host, "error", err.Error(), "addresses", len(n.addrs))
				n.state = nameFailing
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.updateTargets()
}

func sortAddrs(in []netip.Addr) []netip.Addr {
	out := make([]netip.Addr, 0, len(in))
	for _, a := range in {
		out = append(out, a.Unmap())
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return slices.Compact(out)
}

// updateTargets builds the targets from the config and the names'
// addresses, in config order (a name's addresses sorted), and publishes
// them when they differ from the current ones. s.mu is held.
func (s *Set) updateTargets() {
	cur := s.tab.Load().all
	byURL := make(map[string]*Target, len(cur))
	for _, t := range cur {
		byURL[t.URL] = t
	}
	var all []*Target
	seen := map[string]bool{}
	add := func(tc TargetConfig, addr string) {
		url := tc.Scheme + "://" + addr
		if seen[url] {
			return // two names with one address: the first one counts
		}
		seen[url] = true
		t := byURL[url]
		if t == nil {
			t = s.newTarget(tc, addr)
		}
		all = append(all, t)
	}
	for _, tc := range s.cfg.Targets {
		n := s.nameOf(tc.Host)
		if n == nil {
			add(tc, tc.Addr())
			continue
		}
		for _, a := range n.addrs {
			add(tc, net.JoinHostPort(a.String(), tc.Port))
		}
	}
	var added, removed []string
	for _, t := range all {
		if !slices.Contains(cur, t) {
			added = append(added, t.URL)
		}
	}
	for _, t := range cur {
		if !seen[t.URL] {
			removed = append(removed, t.URL)
		}
	}
	if len(added) == 0 && len(removed) == 0 {
		return
	}
	for _, t := range cur {
		if !seen[t.URL] {
			s.stopChecker(t)
		}
	}
	s.setTargets(all)
	s.pruneStates()
	for _, t := range all {
		s.startChecker(t)
	}
	s.log.Info("upstream targets changed", "added", strings.Join(added, " "), "removed", strings.Join(removed, " "), "targets", len(all))
	select { // a returning target may carry an ejection that has ended
	case s.kick <- struct{}{}:
	default:
	}
}

// nameOf returns the discovery entry of host, or nil when host is not
// under discovery.
func (s *Set) nameOf(host string) *name {
	for _, n := range s.names {
		if n.host == host {
			return n
		}
	}
	return nil
}
