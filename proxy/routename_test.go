package proxy

import (
	"testing"

	"github.com/wsgate/wsgate/routes"
	"github.com/wsgate/wsgate/wsrelay"
)

// TestUnnamedRouteAcrossReload: an unnamed route's name is its position
// ("routes[N]"), which a reload may give to another route. Its sessions
// and requests are counted and listed under "" instead, so a reload that
// inserts a route before it mixes nothing up: the session stays under "",
// the inserted named route gets its own counters, and the unnamed
// route's HTTP counters do not move to the name of another.
func TestUnnamedRouteAcrossReload(t *testing.T) {
	backend := startBackend(t, echoWS(t))
	up := testUpstream(backend)
	unnamed := func(pos string) *routes.Route {
		r := wsRoute(up)
		r.Name, r.ID = pos, `match:host=[] path="" prefix="/chat" methods=[]`
		r.PathPrefix = "/chat"
		return r
	}
	p := startProxyWith(t, slowCloses(), unnamed("routes[0]"))
	reg := p.h.Registry()
	c, _ := dialWS(t, p.addr, "/chat", nil)
	defer c.Close()
	waitFor(t, "the session", hangGuard, func() bool { return reg.Len() == 1 })
	if got := reg.Sessions(wsrelay.Filter{}); len(got) != 1 || got[0].Route != "" {
		t.Fatalf("Sessions() = %+v, want one session on route \"\"", got)
	}

	inserted := &routes.Route{Name: "first", ID: "name:first", Path: "/x", Respond: &routes.Respond{Status: 200, Body: "x"}}
	if res := p.reload(t, 0, nil, inserted, unnamed("routes[1]")); res.Unchanged != 1 {
		t.Fatalf("reload = %+v, want the session unchanged", res)
	}
	if got := reg.Sessions(wsrelay.Filter{Route: ""}); len(got) != 1 {
		t.Errorf("Sessions(route \"\") after the reload = %d sessions, want 1", len(got))
	}
	if n := reg.Broadcast("", false, []byte("hi")); n != 1 {
		t.Errorf("Broadcast(\"\") = %d, want 1", n)
	}
	for _, st := range reg.Stats() {
		if st.Route != "" {
			t.Errorf("relay stats list route %q, want only \"\" (the route has no name)", st.Route)
		}
	}
	for _, st := range p.h.Stats() {
		if st.Route != "" && st.Route != "first" {
			t.Errorf("request stats list route %q, want only \"\" and \"first\"", st.Route)
		}
	}
}
