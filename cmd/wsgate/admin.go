package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/wsgate/wsgate/admin"
	"github.com/wsgate/wsgate/config"
	"github.com/wsgate/wsgate/observe"
	wstls "github.com/wsgate/wsgate/tls"
	"github.com/wsgate/wsgate/upstream"
	"github.com/wsgate/wsgate/wsrelay"
)

// adminServer is the admin listener: net/http on a socket of its own,
// never routed to upstreams. Its handler is swapped on reload (a new
// token); a new address gets a new server.
type adminServer struct {
	addr    string // as configured
	ln      net.Listener
	srv     *http.Server
	handler atomic.Pointer[http.Handler]
	done    chan struct{} // closed when Serve returned
}

func (a *adminServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	(*a.handler.Load()).ServeHTTP(w, r)
}

// adminKey is the admin socket's key among inherited sockets.
func adminKey(addr string) string { return "admin " + addr }

// bindAdmin binds the admin listener of ac: inherited from a parent
// process (a hand-over) when one was passed, else bound anew.
func bindAdmin(ac *config.Admin, in *inherited) (*adminServer, error) {
	var ln net.Listener
	if in != nil {
		tl, err := in.take(adminKey(ac.Addr))
		if err != nil {
			return nil, err
		}
		if tl != nil {
			ln = tl
		}
	}
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", ac.Addr); err != nil {
			return nil, fmt.Errorf("admin listener %q: %w", ac.Addr, err)
		}
	}
	return &adminServer{addr: ac.Addr, ln: ln, done: make(chan struct{})}, nil
}

// applyAdmin makes the admin listener what cfg says after a reload:
// serves a newly bound one (a), stops one that moved or was removed (in
// the background: the reload may be an admin request itself), or gives
// the kept one the new token. It returns what changed, for the log.
func (g *gateway) applyAdmin(cfg *config.Config, a *adminServer) string {
	old := g.adminSrv
	switch {
	case a == nil && old == nil:
		return "" // none before, none now
	case a != nil:
		g.adminSrv = a
		g.serveAdmin(a, cfg)
	case cfg.Admin == nil:
		g.adminSrv = nil
	default:
		if old != nil {
			g.setAdminHandler(old, cfg)
		}
		return ""
	}
	if old != nil {
		g.retiring.Go(func() {
			ctx, cancel := context.WithTimeout(g.retireCtx, 10*time.Second)
			defer cancel()
			g.stopAdmin(ctx, old)
		})
	}
	switch {
	case a == nil:
		return "removed"
	case old == nil:
		return "added"
	}
	return "moved"
}

// serve starts serving a bound admin listener with the handler for cfg.
func (g *gateway) serveAdmin(a *adminServer, cfg *config.Config) {
	g.setAdminHandler(a, cfg)
	a.srv = &http.Server{
		Handler:           a,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(g.log.Handler(), slog.LevelDebug),
	}
	go func() {
		defer close(a.done)
		// net.ErrClosed: the listener was closed on purpose (after a
		// hand-over the new process serves it).
		if err := a.srv.Serve(a.ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			g.log.Error("admin server failed", "addr", a.ln.Addr().String(), "error", err.Error())
		}
	}()
	g.log.Info("admin listening", "addr", a.ln.Addr().String(), "token", cfg.Admin.Token != "")
}

// setAdminHandler makes a serve the admin API of cfg (its token).
func (g *gateway) setAdminHandler(a *adminServer, cfg *config.Config) {
	var h http.Handler = admin.New(admin.Options{
		Token:         cfg.Admin.Token,
		Sessions:      sessionsAPI{g.handler.Registry()},
		Upstreams:     g.upstreamStatus,
		Routes:        g.routeNames,
		Config:        func() any { return g.live().cfg.Redacted() },
		Reload:        g.adminReload,
		Ready:         g.ready,
		Metrics:       g.metrics,
		PublicMetrics: cfg.Admin.PublicMetrics,
		Overview:      g.overview,
		Logger:        g.log,
	})
	if old := a.handler.Swap(&h); old != nil {
		if c, ok := (*old).(interface{ Close() }); ok {
			c.Close() // its streams were authorised by the old token
		}
	}
}

// stopAdmin shuts a down within ctx: its open requests (a dashboard's
// stream) end then at the latest.
func (g *gateway) stopAdmin(ctx context.Context, a *adminServer) {
	if a.srv.Shutdown(ctx) != nil {
		_ = a.srv.Close()
	}
	<-a.done
}

// liveView is what the admin API and the metrics read of the running
// config. It is published whole after a start, a reload or the start of a
// shutdown, and read without g.mu: apply holds g.mu for as long as a
// reload takes (up to 5 s waiting for DNS), and a probe must not wait for
// that.
type liveView struct {
	cfg      *config.Config
	sets     map[string]*upstream.Set
	stores   []*wstls.Store
	stopping bool
}

// publish makes the current state the live view. g.mu held (or g not
// yet shared).
func (g *gateway) publish() {
	lv := &liveView{cfg: g.cfg, sets: g.sets, stopping: g.stopping}
	for _, key := range slices.Sorted(maps.Keys(g.lns)) {
		if s := g.lns[key].store; s != nil {
			lv.stores = append(lv.stores, s)
		}
	}
	g.view.Store(lv)
}

// live returns the live view.
func (g *gateway) live() *liveView { return g.view.Load() }

// sessionsAPI is the registry as the admin API uses it.
type sessionsAPI struct{ reg *wsrelay.Registry }

func (s sessionsAPI) List(f wsrelay.Filter) []wsrelay.Info { return s.reg.Sessions(f) }
func (s sessionsAPI) Get(id string) (wsrelay.Info, bool)   { return s.reg.Get(id) }
func (s sessionsAPI) Close(id string, code uint16, reason string) error {
	return s.reg.Close(id, code, reason)
}
func (s sessionsAPI) Send(id string, binary bool, msg []byte) error {
	return s.reg.Send(id, binary, msg)
}
func (s sessionsAPI) Broadcast(route string, binary bool, msg []byte) int {
	return s.reg.Broadcast(route, binary, msg)
}

// upstreamStatus returns every upstream of the running config, by name.
// It does not wait for a reload in progress (see live).
func (g *gateway) upstreamStatus() []upstream.SetStatus {
	lv := g.live()
	sets := make([]*upstream.Set, 0, len(lv.sets))
	for _, s := range lv.sets {
		sets = append(sets, s)
	}
	slices.SortFunc(sets, func(a, b *upstream.Set) int { return strings.Compare(a.Name(), b.Name()) })
	out := make([]upstream.SetStatus, len(sets))
	for i, s := range sets {
		out[i] = s.Status()
	}
	return out
}

// routeNames returns the names of the running config's named routes:
// what a broadcast may name (an unnamed route's sessions are listed
// under route "").
func (g *gateway) routeNames() []string {
	var names []string
	for _, r := range g.live().cfg.Table.Routes() {
		if !strings.HasPrefix(r.ID, "match:") {
			names = append(names, r.Name)
		}
	}
	return names
}

// ready is what /readyz answers: not while starting or shutting down,
// and, with admin.ready_requires_healthy_targets, not while an upstream
// a route uses has no healthy target.
func (g *gateway) ready() (bool, string) {
	// Ready first, the view after: shutdown publishes "stopping" before
	// it clears Ready, so a probe that finds Ready cleared by the
	// shutdown also finds the view that says so (the other order could
	// answer "starting" to a probe that raced the SIGTERM).
	isReady := g.handler.Ready()
	lv := g.live()
	if !isReady {
		if lv.stopping {
			return false, "shutting down"
		}
		return false, "starting"
	}
	cfg := lv.cfg
	if cfg.Admin == nil || !cfg.Admin.ReadyRequiresHealthyTargets {
		return true, ""
	}
	for _, st := range g.upstreamStatus() {
		healthy := false
		for _, t := range st.Targets {
			healthy = healthy || t.Healthy
		}
		if !healthy {
			return false, fmt.Sprintf("upstream %q has no healthy target", st.Name)
		}
	}
	return true, ""
}

// adminReload is POST /reload.
func (g *gateway) adminReload() admin.ReloadResult {
	out := g.reload("admin API")
	res := admin.ReloadResult{Problems: out.Problems}
	switch {
	case out.Err != nil && out.Err.Error() == "shutting down":
		res.ShuttingDown, res.Error = true, out.Err.Error()
	case out.Err != nil:
		res.Error = out.Err.Error()
	case len(out.Problems) == 0:
		res.OK = true
		res.Changes = map[string]any{}
		for _, a := range out.Changes {
			res.Changes[a.Key] = a.Value.Any()
		}
	}
	return res
}

// overview is what the dashboard shows.
func (g *gateway) overview() admin.Overview {
	reg := g.handler.Registry()
	byRoute := map[string]*admin.RouteOverview{}
	var order []string
	get := func(name string) *admin.RouteOverview {
		ro := byRoute[name]
		if ro == nil {
			ro = &admin.RouteOverview{Route: name}
			byRoute[name] = ro
			order = append(order, name)
		}
		return ro
	}
	for _, st := range reg.Stats() {
		ro := get(st.Route)
		ro.Sessions += int64(st.Open)
		ro.FromClient.Messages += st.FromClient.Messages
		ro.FromClient.Bytes += st.FromClient.Bytes
		ro.FromBackend.Messages += st.FromBackend.Messages
		ro.FromBackend.Bytes += st.FromBackend.Bytes
	}
	for _, st := range g.handler.Stats() {
		if st.Handshakes == 0 && len(st.Refused) == 0 {
			continue
		}
		ro := get(st.Route)
		ro.Handshakes = st.Handshakes
		for _, n := range st.Refused {
			ro.Refused += n
		}
	}
	slices.Sort(order)
	ov := admin.Overview{Time: time.Now(), Upstreams: g.upstreamStatus(), Closes: reg.Closes()}
	for _, name := range order {
		ov.Routes = append(ov.Routes, *byRoute[name])
	}
	// The newest sessions: those an operator just opened or is chasing.
	ov.Sessions, ov.SessionsTotal = reg.Newest(maxOverviewSessions)
	return ov
}

// maxOverviewSessions caps the dashboard's session table.
const maxOverviewSessions = 200

// metricsHandler returns the /metrics handler of g.
func (g *gateway) metricsHandler() http.Handler {
	reg := g.handler.Registry()
	return observe.Handler(observe.Sources{
		HTTP:      g.handler.Stats,
		WebSocket: reg.Stats,
		Upstreams: g.upstreamStatus,
		Reloads: func() (int64, int64) {
			return g.reloadsOK.Load(), g.reloadsFailed.Load()
		},
		Certificates: g.certificates,
		Parked:       reg.Parked,
		HandOffs:     reg.HandOffs,
	})
}

// certificates returns the certificates of every TLS listener.
func (g *gateway) certificates() []observe.Certificate {
	var out []observe.Certificate
	for _, s := range g.live().stores {
		for _, c := range s.Certificates() {
			out = append(out, observe.Certificate{File: c.CertFile, Subject: c.Subject, NotAfter: c.NotAfter})
		}
	}
	return out
}
