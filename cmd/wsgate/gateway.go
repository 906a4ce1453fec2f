package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/netip"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/wsgate/wsgate/config"
	"github.com/wsgate/wsgate/internal/filewatch"
	"github.com/wsgate/wsgate/proxy"
	"github.com/wsgate/wsgate/routes"
	wstls "github.com/wsgate/wsgate/tls"
	"github.com/wsgate/wsgate/upstream"
)

// gateway is the running process: the listeners and their servers, the
// proxy handler, the upstream sets, and the config they come from, which
// a reload replaces.
type gateway struct {
	path      string // the config file, absolute
	log       *slog.Logger
	accessLog bool
	handler   *proxy.Handler // one for the life of the process: Reload swaps its config
	failed    chan error     // first Serve error
	serveWG   sync.WaitGroup // every Serve goroutine

	// reloadMu makes reloads run one at a time from the stat of the
	// files to the end of the apply: two overlapping ones (SIGHUP and a
	// file change) could otherwise apply an older file last.
	reloadMu sync.Mutex
	// notify tells systemd (Type=notify) about start, reloads and the
	// shutdown; set by run once the gateway serves.
	notify *notifier
	// trusted is the running config's trusted_proxies, for the PROXY
	// protocol listeners, which read it as connections arrive.
	trusted  atomic.Pointer[[]netip.Prefix]
	mu       sync.Mutex // serialises reloads, hand-over and shutdown; guards the fields below
	cfg      *config.Config
	sets     map[string]*upstream.Set // by upstream name: those routes name
	lns      map[string]*listener     // by listenerKeys
	retired  []*gen                   // generations replaced on a kept socket; their connections may run on
	stopping bool
	// retiring runs the shutdowns of removed listeners' servers, until
	// they end or retireCtx is done (the process shuts down).
	retiring    sync.WaitGroup
	retireCtx   context.Context
	stopRetires context.CancelFunc
	// handingOver is set while a new process started by handOver gets
	// ready.
	handingOver bool //lint:ignore U1000 not on Windows (no hand-over)
	// stats are the watched files' stats as of the last load attempt.
	stats []filewatch.Stat
	files []string

	// view is what the admin API and the metrics read without mu (see
	// liveView); publish replaces it.
	view atomic.Pointer[liveView]
	// adminSrv is the admin listener; nil when the config has none.
	// Guarded by mu.
	adminSrv *adminServer
	// metrics is the /metrics handler: one for the life of the process.
	metrics http.Handler
	// reloadsOK and reloadsFailed count reloads, for the metrics.
	reloadsOK, reloadsFailed atomic.Int64
}

// reloadOutcome is what one reload did: what POST /reload will answer.
type reloadOutcome struct {
	// Problems are the new config's errors, one per line, when it did
	// not load; nothing was applied then.
	Problems []string
	// Err is why a valid config could not be applied (a listener that
	// cannot bind, a certificate that no longer loads); nothing was
	// applied then either.
	Err error
	// Changes describe what changed, as logged.
	Changes []slog.Attr
}

// start builds everything cfg describes, binds (or inherits) every
// listener and starts serving. A failure closes what was opened and
// returns the error.
func start(path string, cfg *config.Config, log *slog.Logger, accessLog bool, in *inherited) (*gateway, error) {
	g := &gateway{
		path: path, log: log, accessLog: accessLog, cfg: cfg,
		failed: make(chan error, 1),
		lns:    map[string]*listener{},
	}
	g.retireCtx, g.stopRetires = context.WithCancel(context.Background())
	g.trusted.Store(&cfg.Trusted)
	g.files = watchedFiles(path, cfg)
	g.stats = filewatch.StatFiles(g.files, nil)
	g.sets = buildSets(cfg, nil, log)
	startSets(g.sets)
	g.handler = proxy.New(g.proxyOptions(cfg))
	g.metrics = g.metricsHandler()
	ok := false
	defer func() {
		if !ok {
			if g.adminSrv != nil {
				_ = g.adminSrv.ln.Close()
			}
			for _, l := range g.lns {
				l.sock.Close()
			}
			for _, s := range g.sets {
				s.Close()
			}
		}
	}()
	var fresh []*listener
	for i, key := range listenerKeys(cfg) {
		l, err := g.openListener(cfg.Listeners[i], key, in)
		if err != nil {
			return nil, err
		}
		g.lns[key] = l
		fresh = append(fresh, l)
	}
	if cfg.Admin != nil {
		a, err := bindAdmin(cfg.Admin, in)
		if err != nil {
			return nil, err
		}
		g.adminSrv = a
	}
	in.closeRest()
	lns := make([]*onceCloseListener, len(fresh))
	for i, l := range fresh {
		ln, err := l.generation(l.cfg)
		if err != nil {
			for _, ln := range lns[:i] {
				ln.Close()
			}
			return nil, err
		}
		lns[i] = ln
	}
	g.publish()
	// The admin line comes before the listening lines: once those are
	// logged, everything is.
	if g.adminSrv != nil {
		g.serveAdmin(g.adminSrv, cfg)
	}
	for i, l := range fresh {
		g.serve(l, cfg, lns[i])
		log.Info("listening", "addr", l.addr, "tls", l.cfg.TLS != nil, "builtin", l.cfg.Builtin)
	}
	ok = true
	g.handler.SetReady(true) // what /readyz answers
	return g, nil
}

// listenerKeys identifies the listeners of cfg across reloads: by
// address, and for an address written more than once (port 0) by its
// occurrence too.
func listenerKeys(cfg *config.Config) []string {
	keys := make([]string, len(cfg.Listeners))
	seen := map[string]int{}
	for i, l := range cfg.Listeners {
		n := seen[l.Addr]
		seen[l.Addr] = n + 1
		keys[i] = l.Addr
		if n > 0 {
			keys[i] = fmt.Sprintf("%s#%d", l.Addr, n+1)
		}
	}
	return keys
}

// openListener binds lc and loads its certificates.
func (g *gateway) openListener(lc config.Listener, key string, in *inherited) (*listener, error) {
	sock, err := bind(lc, key, in)
	if err != nil {
		return nil, err
	}
	l := &listener{key: key, cfg: lc, sock: sock, addr: sock.Addr().String(), trusted: g.trustedProxies, log: g.log}
	if lc.TLS != nil {
		store, err := loadStore(lc, g.log)
		if err != nil {
			sock.Close()
			return nil, err
		}
		l.store = store
		l.tlsConf.Store(store.Config())
	}
	return l, nil
}

// loadStore loads the certificates of a TLS listener.
func loadStore(lc config.Listener, log *slog.Logger) (*wstls.Store, error) {
	pairs := make([]wstls.Pair, len(lc.TLS.Certificates))
	for i, c := range lc.TLS.Certificates {
		pairs[i] = wstls.Pair{CertFile: c.Cert, KeyFile: c.Key}
	}
	store, err := wstls.Load(wstls.Options{Pairs: pairs, MinVersion: lc.TLS.MinVersionTLS, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("listener %q: %w", lc.Addr, err)
	}
	return store, nil
}

// serve starts a new server generation on l, accepting on ln (from
// l.generation) with cfg's server settings; the generation before it, if
// any, stops accepting and is retired: its connections run on until they
// end. g.mu is held (or start is running).
func (g *gateway) serve(l *listener, cfg *config.Config, ln *onceCloseListener) {
	gn := &gen{ln: ln}
	if l.cfg.Builtin == config.BuiltinDemo {
		gn.srv = newDemoServer(g.log)
	} else {
		l.sopts = serverOptions(cfg)
		gn.srv = proxy.NewServer(g.handler, l.sopts)
	}
	gn.countConns()
	old := l.cur
	l.cur = gn
	g.serveWG.Go(func() {
		if err := gn.srv.Serve(ln); err != nil && !isClosed(err) {
			select {
			case g.failed <- fmt.Errorf("serve %q: %w", l.addr, err):
			default:
			}
		}
	})
	if old != nil {
		_ = old.ln.Close() // the new generation accepts already
		g.retired = append(g.retired, old)
	}
}

// serverOptions returns the front-end server settings of cfg.
func serverOptions(cfg *config.Config) proxy.ServerOptions {
	return proxy.ServerOptions{
		HeaderBytes:          int(cfg.Limits.HeaderBytes),
		RequestHeaderTimeout: cfg.Timeouts.RequestHeader,
		IdleTimeout:          cfg.Timeouts.Idle,
		WriteTimeout:         cfg.Timeouts.Write,
	}
}

// proxyOptions returns the handler settings of cfg with g.sets.
func (g *gateway) proxyOptions(cfg *config.Config) proxy.Options {
	sets := make([]*upstream.Set, 0, len(g.sets))
	for _, name := range slices.Sorted(maps.Keys(g.sets)) {
		sets = append(sets, g.sets[name])
	}
	return proxy.Options{
		Routes:         cfg.Table,
		Upstreams:      sets,
		TrustedProxies: cfg.Trusted,
		WriteTimeout:   cfg.Timeouts.Write,
		BodyTimeout:    cfg.Timeouts.RequestBody,
		AccessLog:      g.accessLog,
		Logger:         g.log,
	}
}

// buildSets returns a set for each upstream a route of cfg names (the
// others would only run health checks and lookups nobody uses), each
// carrying over the state of prev's set of the same name.
func buildSets(cfg *config.Config, prev map[string]*upstream.Set, log *slog.Logger) map[string]*upstream.Set {
	sets := map[string]*upstream.Set{}
	for _, r := range cfg.Table.Routes() {
		if r.Upstream == nil || sets[r.Upstream.Name] != nil {
			continue
		}
		name := r.Upstream.Name
		sets[name] = upstream.New(cfg.UpstreamConfigs[name], upstream.Options{Logger: log, Previous: prev[name]})
	}
	return sets
}

// startSets starts the sets in parallel: each Start may wait for its
// first DNS lookups (at most 5 s), so N upstreams with discovery cost 5 s,
// not 5N.
func startSets(sets map[string]*upstream.Set) {
	var wg sync.WaitGroup
	for _, s := range sets {
		wg.Go(s.Start)
	}
	wg.Wait()
}

// watchedFiles returns the files a change of which reloads: the config
// file and every file it names (certificates, keys, CA files, static
// roots, whose existence matters, JWT keys and JWK Sets, the admin
// token file).
func watchedFiles(path string, cfg *config.Config) []string {
	files := []string{path}
	if cfg == nil {
		return files
	}
	for _, l := range cfg.Listeners {
		if l.TLS != nil {
			for _, c := range l.TLS.Certificates {
				files = append(files, c.Cert, c.Key)
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(cfg.Upstreams)) {
		if u := cfg.Upstreams[name]; u.TLS != nil && u.TLS.CA != "" {
			files = append(files, u.TLS.CA)
		}
	}
	if cfg.Admin != nil && cfg.Admin.TokenFile != "" {
		files = append(files, cfg.Admin.TokenFile) // a rotated secret
	}
	for _, r := range cfg.Routes {
		if r.Static != nil {
			files = append(files, r.Static.Root)
		}
		if r.Auth != nil && r.Auth.JWT != nil {
			// A rotated key file takes effect without a SIGHUP.
			files = append(files, r.Auth.JWT.Keys...)
			if j := r.Auth.JWT.JWKS; j != "" && !strings.Contains(j, "://") {
				files = append(files, j)
			}
		}
	}
	return files
}

// filesChanged reports whether a watched file differs from the last load
// attempt. A static root counts only by its existence: files added in it
// change its modification time, not the config.
func (g *gateway) filesChanged() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.stats) != len(g.files) {
		return true
	}
	for i, f := range g.files {
		now := filewatch.StatFile(f)
		if g.stats[i].IsDir() && now.IsDir() {
			continue
		}
		if !g.stats[i].Same(now) {
			return true
		}
	}
	return false
}

// watchFiles returns the files to watch now.
func (g *gateway) watchFiles() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.files)
}

// reload loads the config file again and, when it is valid, applies it
// whole; otherwise nothing changes. source names the trigger in the log.
func (g *gateway) reload(source string) (out reloadOutcome) {
	g.reloadMu.Lock()
	defer g.reloadMu.Unlock()
	// Stat before reading: a change while loading then shows up as a
	// difference at the next check, and is loaded then.
	files := g.watchFiles()
	stats := filewatch.StatFiles(files, nil)
	cfg, err := config.Load(g.path)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopping {
		return reloadOutcome{Err: errors.New("shutting down")}
	}
	g.notify.send("RELOADING=1", "STATUS=reloading ("+source+")")
	defer func() {
		status := "serving"
		if out.Err != nil || len(out.Problems) > 0 {
			status = "serving the previous config: reload failed"
		}
		g.notify.send("READY=1", "STATUS="+status)
	}()
	// restat makes want the watched files, with the stats taken before
	// the load for those watched already.
	restat := func(want []string) {
		old := map[string]filewatch.Stat{}
		for i, f := range files {
			old[f] = stats[i]
		}
		g.files, g.stats = want, make([]filewatch.Stat, len(want))
		for i, f := range want {
			st, ok := old[f]
			if !ok {
				st = filewatch.StatFile(f)
			}
			g.stats[i] = st
		}
	}
	if err != nil {
		restat(files)
		problems := configProblems(err)
		for _, p := range problems {
			g.log.Error("config error", "source", source, "error", p)
		}
		g.log.Error("config reload failed; keeping the running config", "source", source, "errors", len(problems))
		g.reloadsFailed.Add(1)
		return reloadOutcome{Problems: problems}
	}
	for _, w := range cfg.Warnings {
		g.log.Warn("config warning", "file", w.File, "line", w.Line, "key", w.Path, "warning", w.Err.Error())
	}
	running := g.cfg
	changes, err := g.apply(cfg)
	if err != nil {
		// Watch the files of both: the running config's, and the
		// rejected one's, whose fix may be a file it names.
		restat(union(watchedFiles(g.path, running), watchedFiles(g.path, cfg)))
		g.log.Error("config error", "source", source, "error", err.Error())
		g.log.Error("config reload failed; keeping the running config", "source", source, "errors", 1)
		g.reloadsFailed.Add(1)
		return reloadOutcome{Err: err}
	}
	g.reloadsOK.Add(1)
	restat(watchedFiles(g.path, cfg))
	g.log.LogAttrs(context.Background(), slog.LevelInfo, "config reloaded", append([]slog.Attr{slog.String("source", source)}, changes...)...)
	return reloadOutcome{Changes: changes}
}

// union returns a followed by the names of b that a lacks.
func union(a, b []string) []string {
	out := slices.Clone(a)
	for _, f := range b {
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out
}

// configProblems returns one line per problem of a config error.
func configProblems(err error) []string {
	var out []string
	for _, line := range strings.Split(strings.TrimRight(err.Error(), "\n"), "\n") {
		if line != "" {
			out = append(out, line)
		}
	}
	return out
}

// apply makes cfg the running config. Everything that can fail (binding
// new listeners, loading certificates) happens first; if any of it
// fails, what it opened is closed and the running config stays. g.mu is
// held.
func (g *gateway) apply(cfg *config.Config) ([]slog.Attr, error) {
	old := g.cfg
	// 1. New sockets and certificate stores.
	type tlsSwap struct {
		l      *listener
		store  *wstls.Store // a new store, or nil
		commit func()       // the kept store's new certificates
	}
	var (
		added  []*listener
		stores []tlsSwap
		gens   = map[*listener]*onceCloseListener{} // new generations to serve
	)
	var newAdmin *adminServer // a new admin listener (added or moved)
	fail := func(err error) ([]slog.Attr, error) {
		if newAdmin != nil {
			_ = newAdmin.ln.Close()
		}
		for _, ln := range gens {
			ln.Close()
		}
		for _, l := range added {
			l.sock.Close()
		}
		return nil, err
	}
	keys := listenerKeys(cfg)
	for i, lc := range cfg.Listeners {
		if l := g.lns[keys[i]]; l != nil {
			modeChanged := (l.cfg.TLS == nil) != (lc.TLS == nil) || l.cfg.Builtin != lc.Builtin ||
				l.cfg.ProxyProtocol != lc.ProxyProtocol
			if modeChanged || (lc.Builtin == "" && l.sopts != serverOptions(cfg)) {
				ln, err := l.generation(lc)
				if err != nil {
					return fail(err)
				}
				gens[l] = ln
			}
			switch {
			case lc.TLS == nil:
			case l.store != nil && reflect.DeepEqual(l.cfg.TLS, lc.TLS):
				// The same files: read them again (they may have
				// changed, which is what SIGHUP is for).
				commit, err := l.store.Prepare()
				if err != nil {
					return fail(fmt.Errorf("listener %q: %w", lc.Addr, err))
				}
				stores = append(stores, tlsSwap{l: l, commit: commit})
			default:
				store, err := loadStore(lc, g.log)
				if err != nil {
					return fail(err)
				}
				stores = append(stores, tlsSwap{l: l, store: store})
			}
			continue
		}
		l, err := g.openListener(lc, keys[i], nil)
		if err != nil {
			return fail(err)
		}
		added = append(added, l)
		ln, err := l.generation(lc)
		if err != nil {
			return fail(err)
		}
		gens[l] = ln
	}

	if cfg.Admin != nil && (g.adminSrv == nil || g.adminSrv.addr != cfg.Admin.Addr) {
		a, err := bindAdmin(cfg.Admin, nil)
		if err != nil {
			return fail(err)
		}
		newAdmin = a
	}

	// 2. Upstreams: new sets carrying the old ones' target state, started
	// before any request can reach them.
	oldSets := g.sets
	g.sets = buildSets(cfg, oldSets, g.log)
	startSets(g.sets)

	// 3. The swap: from here on every request is matched against cfg.
	res := g.handler.Reload(g.proxyOptions(cfg), cfg.Timeouts.ReloadDrain)
	g.cfg = cfg
	g.trusted.Store(&cfg.Trusted)
	for _, s := range oldSets {
		s.Close() // only its goroutines: sessions and requests that hold its targets go on
	}

	// 4. Listeners: certificates, changed, removed and added ones.
	var lnAdded, lnRemoved, lnChanged []string
	for _, sw := range stores {
		if sw.commit != nil {
			sw.commit()
			continue
		}
		sw.l.store = sw.store
		sw.l.tlsConf.Store(sw.store.Config())
	}
	keep := map[string]bool{}
	for i, lc := range cfg.Listeners {
		keep[keys[i]] = true
		l := g.lns[keys[i]]
		if l == nil {
			continue
		}
		modeChanged := (l.cfg.TLS == nil) != (lc.TLS == nil) || l.cfg.Builtin != lc.Builtin
		l.cfg = lc
		if ln := gens[l]; ln != nil {
			g.serve(l, cfg, ln)
			if modeChanged {
				lnChanged = append(lnChanged, lc.Addr)
			}
		}
	}
	for addr, l := range g.lns {
		if keep[addr] {
			continue
		}
		// Stop accepting, and finish the connections it has, as nginx
		// does on a reload: the request in flight gets its answer with
		// Connection: close, idle keep-alive connections are closed.
		// WebSocket sessions are the handler's: their routes decide.
		_ = l.cur.ln.Close()
		_ = l.sock.Close()
		srv := l.cur.srv
		g.retiring.Go(func() { _ = srv.ShutdownWithContext(g.retireCtx) })
		delete(g.lns, addr)
		lnRemoved = append(lnRemoved, addr)
		g.log.Info("listener removed", "addr", l.addr)
	}
	for _, l := range added {
		g.lns[l.key] = l
		g.serve(l, cfg, gens[l])
		lnAdded = append(lnAdded, l.cfg.Addr)
		g.log.Info("listening", "addr", l.addr, "tls", l.cfg.TLS != nil, "builtin", l.cfg.Builtin)
	}
	g.pruneRetired()
	adminChanged := g.applyAdmin(cfg, newAdmin)
	g.publish()

	// 5. What changed, for the log line.
	rAdded, rRemoved, rChanged := diffRoutes(old.Table, cfg.Table)
	tAdded, tRemoved := diffTargets(oldSets, g.sets)
	attrs := []slog.Attr{
		slog.Any("routes_added", rAdded),
		slog.Any("routes_removed", rRemoved),
		slog.Any("routes_changed", rChanged),
		slog.Any("targets_added", tAdded),
		slog.Any("targets_removed", tRemoved),
		slog.Any("listeners_added", lnAdded),
		slog.Any("listeners_removed", lnRemoved),
		slog.Any("listeners_changed", lnChanged),
		slog.String("admin", adminChanged),
		slog.Int("sessions_unchanged", res.Unchanged),
		slog.Int("sessions_kept", res.Kept),
		slog.Int("sessions_draining", res.Draining),
		slog.Int("sessions_closed", res.Closed),
		// After the old sets' goroutines ended: a figure that grows
		// from reload to reload is a leak.
		slog.Int("goroutines", runtime.NumGoroutine()),
	}
	return attrs, nil
}

// pruneRetired forgets retired generations with no connection left:
// they accept nothing, and shutdown need not wait for them. g.mu is held.
func (g *gateway) pruneRetired() {
	g.retired = slices.DeleteFunc(g.retired, func(gn *gen) bool { return gn.conns.Load() <= 0 })
}

// diffRoutes names the routes added, removed and changed from a to b, by
// ID.
func diffRoutes(a, b *routes.Table) (added, removed, changed []string) {
	byID := map[string]*routes.Route{}
	for _, r := range a.Routes() {
		byID[r.ID] = r
	}
	seen := map[string]bool{}
	for _, r := range b.Routes() {
		seen[r.ID] = true
		o := byID[r.ID]
		switch {
		case o == nil:
			added = append(added, r.Name)
		case !sameRoute(o, r):
			changed = append(changed, r.Name)
		}
	}
	for _, r := range a.Routes() {
		if !seen[r.ID] {
			removed = append(removed, r.Name)
		}
	}
	return added, removed, changed
}

// sameRoute reports whether two routes do the same (their position in
// the file aside).
func sameRoute(a, b *routes.Route) bool {
	x, y := *a, *b
	x.Index, y.Index = 0, 0
	return reflect.DeepEqual(x, y)
}

// diffTargets names the targets ("upstream url") added and removed from
// the sets a to the sets b.
func diffTargets(a, b map[string]*upstream.Set) (added, removed []string) {
	urls := func(sets map[string]*upstream.Set) map[string]bool {
		m := map[string]bool{}
		for name, s := range sets {
			for _, t := range s.Targets() {
				m[name+" "+t.URL] = true
			}
		}
		return m
	}
	ua, ub := urls(a), urls(b)
	for k := range ub {
		if !ua[k] {
			added = append(added, k)
		}
	}
	for k := range ua {
		if !ub[k] {
			removed = append(removed, k)
		}
	}
	slices.Sort(added)
	slices.Sort(removed)
	return added, removed
}

// shutdown stops accepting, finishes in-flight HTTP requests and closes
// every WebSocket with 1001, spread over timeouts.drain. It reports
// whether everything ended inside the budget. delay is waited first
// (timeouts.shutdown_delay, while the listeners still accept); hurry
// cuts it short and makes the drain send every close at once.
func (g *gateway) shutdown(delay time.Duration, hurry <-chan struct{}) bool {
	g.mu.Lock()
	g.stopping = true
	g.publish()
	g.handler.SetReady(false)
	cfg := g.cfg
	g.mu.Unlock()
	t := cfg.Timeouts
	if delay > 0 {
		g.log.Info("shutdown delayed", "delay_ms", delay.Milliseconds())
		timer := time.NewTimer(delay) // the delay itself is the feature: listeners keep accepting
		select {
		case <-timer.C:
		case <-hurry:
			timer.Stop()
		}
	}
	// The close handshakes need time after the last close goes out:
	// the closes are spread over the budget less that time.
	spread := t.Drain - min(closeHandshake, t.Drain/2)
	g.log.Info("draining", "sessions", g.handler.Sessions(), "budget_ms", t.Drain.Milliseconds(), "spread_ms", spread.Milliseconds())
	ctx, cancel := context.WithTimeout(context.Background(), t.Drain)
	defer cancel()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		forced   bool
		setForce = func(err error) {
			if err != nil {
				mu.Lock()
				forced = true
				mu.Unlock()
			}
		}
	)
	g.mu.Lock()
	var servers, demos []*fasthttp.Server
	for _, l := range g.lns {
		if l.cfg.Builtin == config.BuiltinDemo {
			demos = append(demos, l.cur.srv)
		} else {
			servers = append(servers, l.cur.srv)
		}
	}
	for _, gn := range g.retired {
		servers = append(servers, gn.srv)
	}
	g.mu.Unlock()
	// The shutdowns of removed listeners' servers run already: they
	// share this budget.
	wg.Go(func() {
		retired := make(chan struct{})
		go func() {
			g.retiring.Wait()
			close(retired)
		}()
		select {
		case <-retired:
		case <-ctx.Done():
			g.stopRetires()
			<-retired
			setForce(ctx.Err())
		}
	})
	// fasthttp's Shutdown ignores hijacked connections: Drain closes those.
	for _, srv := range servers {
		wg.Go(func() { setForce(srv.ShutdownWithContext(ctx)) })
	}
	var dr proxy.DrainResult
	wg.Go(func() {
		var err error
		dr, err = g.handler.Drain(ctx, spread)
		setForce(err)
	})
	go func() {
		select {
		case <-hurry:
			g.handler.Hurry()
		case <-ctx.Done():
		}
	}()
	wg.Wait()
	// The demo backends stop last: sessions through the proxy to them
	// have already closed with 1001.
	for _, srv := range demos {
		wg.Go(func() { setForce(srv.ShutdownWithContext(ctx)) })
	}
	wg.Wait()
	// ShutdownWithContext closes only the listeners its Serve has taken:
	// a Serve goroutine that starts after it (a signal right after
	// startup) would accept forever. Serve returns once its listener is
	// closed.
	g.mu.Lock()
	for _, l := range g.lns {
		_ = l.cur.ln.Close()
		_ = l.sock.Close()
	}
	g.mu.Unlock()
	g.serveWG.Wait()
	for _, s := range g.sets {
		s.Close()
	}
	// The admin listener goes last: /readyz answers 503 and /metrics
	// shows the drain until the end.
	g.mu.Lock()
	a := g.adminSrv
	g.mu.Unlock()
	if a != nil {
		actx, acancel := context.WithTimeout(context.Background(), 2*time.Second)
		g.stopAdmin(actx, a)
		acancel()
	}
	g.log.Info("drained", "sessions_closed", dr.Closed, "sessions_cut", dr.Cut)
	if forced {
		g.log.Warn("drain budget exceeded; remaining connections were cut")
	}
	return !forced && !errors.Is(ctx.Err(), context.DeadlineExceeded)
}

// closeHandshake is the time left at the end of the drain for the last
// close handshakes (the proxy's own budget for one is 5 s).
const closeHandshake = 5 * time.Second

// trustedProxies returns the running config's trusted_proxies.
func (g *gateway) trustedProxies() []netip.Prefix {
	if p := g.trusted.Load(); p != nil {
		return *p
	}
	return nil
}
