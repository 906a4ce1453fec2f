// Command wsgate is a WebSocket-aware reverse proxy configured in YAML.
//
//	wsgate -config FILE [-log-format json|text] [-log-level info] [-access-log=true]
//	wsgate validate FILE
//	wsgate version
//
// Exit codes: 0 clean shutdown, 1 runtime failure or forced drain, 2 bad
// flags or config. SIGTERM and SIGINT drain gracefully; SIGHUP reloads TLS
// certificates.
package main

import (
	"context"
	stdtls "crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/wsgate/wsgate/config"
	"github.com/wsgate/wsgate/proxy"
	wstls "github.com/wsgate/wsgate/tls"
	"github.com/wsgate/wsgate/upstream"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// defaultGCPercent is the Go GC target used unless GOGC is set. A proxy's
// live heap is mostly long-lived sessions and its steady state allocates
// little (0 allocations per relayed frame), so collecting at 25% growth
// instead of 100% costs little CPU and keeps idle memory per WebSocket
// near its live size: 6.0 → 4.7 KiB per proxied connection (5,000 idle
// sessions, bench/wsload idle).
const defaultGCPercent = 25

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without os.Exit, returning the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "version":
			fmt.Fprintf(stdout, "wsgate %s\n", version)
			return 0
		case "validate":
			return validate(args[1:], stdout, stderr)
		}
	}
	fs := flag.NewFlagSet("wsgate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "path of the YAML configuration `file` (required)")
	logFormat := fs.String("log-format", "json", "log format: json or text")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	accessLog := fs.Bool("access-log", true, "log one line per HTTP request")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile to `file` until shutdown (for development)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: wsgate -config FILE [flags]\n       wsgate validate FILE\n       wsgate version\n\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *configPath == "" || fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	log, err := newLogger(stderr, *logFormat, *logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "wsgate: %v\n", err)
		return 2
	}
	cfg, err := config.Load(*configPath)
	if err != nil {
		printConfigError(stderr, err)
		return 2
	}
	for _, w := range cfg.Warnings {
		log.Warn("config warning", "file", w.File, "line", w.Line, "key", w.Path, "warning", w.Err.Error())
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintf(stderr, "wsgate: -cpuprofile: %v\n", err)
			return 2
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	// Take the signals before the first listening line: a SIGHUP or
	// SIGTERM right after it must not kill the process by default action.
	stop, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	g, err := start(cfg, log, *accessLog)
	if err != nil {
		log.Error("start failed", "error", err.Error())
		return 1
	}
	return g.wait(stop, hup)
}

func validate(args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "usage: wsgate validate FILE")
		return 2
	}
	cfg, err := config.Load(args[0])
	if err != nil {
		printConfigError(stderr, err)
		return 2
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintf(stdout, "warning: %s\n", w)
	}
	fmt.Fprintf(stdout, "%s: ok\n", args[0])
	return 0
}

// printConfigError prints every problem, one per line.
func printConfigError(w io.Writer, err error) {
	msg := strings.TrimRight(err.Error(), "\n")
	fmt.Fprintln(w, msg)
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("bad -log-level %q (want debug, info, warn or error)", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("bad -log-format %q (want json or text)", format)
}

// gateway is the running process: servers, the proxy handler and the
// certificate stores.
type gateway struct {
	cfg     *config.Config
	log     *slog.Logger
	handler *proxy.Handler
	servers []*fasthttp.Server // route listeners
	demos   []*fasthttp.Server // built-in demo backends, stopped last
	stores  []*wstls.Store
	sets    []*upstream.Set // started in start, closed after shutdown
	serveWG sync.WaitGroup
	lns     []net.Listener // every bound listener, closed again in shutdown
	failed  chan error     // first Serve error
}

// start binds every listener and starts serving. A bind failure closes
// what was opened and returns the error.
func start(cfg *config.Config, log *slog.Logger, accessLog bool) (*gateway, error) {
	g := &gateway{cfg: cfg, log: log, failed: make(chan error, 1)}
	// Upstreams no route names get no set: nothing would use their
	// health checks or lookups.
	used := map[string]bool{}
	for _, r := range cfg.Table.Routes() {
		if r.Upstream != nil {
			used[r.Upstream.Name] = true
		}
	}
	for _, name := range slices.Sorted(maps.Keys(cfg.UpstreamConfigs)) {
		if used[name] {
			g.sets = append(g.sets, upstream.New(cfg.UpstreamConfigs[name], upstream.Options{Logger: log}))
		}
	}
	g.handler = proxy.New(proxy.Options{
		Routes:         cfg.Table,
		Upstreams:      g.sets,
		TrustedProxies: cfg.Trusted,
		WriteTimeout:   cfg.Timeouts.Write,
		BodyTimeout:    cfg.Timeouts.RequestBody,
		AccessLog:      accessLog,
		Logger:         log,
	})
	sopts := proxy.ServerOptions{
		HeaderBytes:          int(cfg.Limits.HeaderBytes),
		RequestHeaderTimeout: cfg.Timeouts.RequestHeader,
		IdleTimeout:          cfg.Timeouts.Idle,
		WriteTimeout:         cfg.Timeouts.Write,
	}
	var listeners []net.Listener
	closeAll := func() {
		for _, ln := range listeners {
			ln.Close()
		}
	}
	// Each Start may wait for its first DNS lookups (at most 5 s): in
	// parallel, so that N upstreams with discovery cost 5 s, not 5N.
	var started sync.WaitGroup
	for _, s := range g.sets {
		started.Go(s.Start)
	}
	started.Wait()
	defer func() {
		if g.lns == nil { // start failed: nothing will call shutdown
			g.closeSets()
		}
	}()
	type pending struct {
		srv *fasthttp.Server
		ln  net.Listener
	}
	var serve []pending
	for _, l := range cfg.Listeners {
		// No TCP keep-alive probes on accepted connections (as nginx's
		// and HAProxy's defaults): an HTTP connection is bounded by the
		// idle timeout, and the four setsockopt calls per accept sat on
		// the latency of every new connection. A WebSocket session turns
		// them on for its client (proxy.keepAlive).
		ln, err := (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", l.Addr)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("listen %q: %w", l.Addr, err)
		}
		listeners = append(listeners, ln)
		addr := ln.Addr().String()
		if l.Builtin == "" {
			ln = proxy.Listener(ln) // raw socket I/O on Linux
		}
		isTLS := l.TLS != nil
		if isTLS {
			pairs := make([]wstls.Pair, len(l.TLS.Certificates))
			for i, c := range l.TLS.Certificates {
				pairs[i] = wstls.Pair{CertFile: c.Cert, KeyFile: c.Key}
			}
			store, err := wstls.Load(wstls.Options{Pairs: pairs, MinVersion: l.TLS.MinVersionTLS, Logger: log})
			if err != nil {
				closeAll()
				return nil, fmt.Errorf("listener %q: %w", l.Addr, err)
			}
			g.stores = append(g.stores, store)
			ln = stdtls.NewListener(ln, store.Config())
		}
		var srv *fasthttp.Server
		if l.Builtin == "demo" {
			srv = newDemoServer(log)
			g.demos = append(g.demos, srv)
		} else {
			srv = proxy.NewServer(g.handler, sopts)
			g.servers = append(g.servers, srv)
		}
		serve = append(serve, pending{srv, ln})
		log.Info("listening", "addr", addr, "tls", isTLS, "builtin", l.Builtin)
	}
	for _, p := range serve {
		g.serveWG.Go(func() {
			if err := p.srv.Serve(p.ln); err != nil {
				select {
				case g.failed <- fmt.Errorf("serve %q: %w", p.ln.Addr(), err):
				default:
				}
			}
		})
	}
	g.lns = listeners
	return g, nil
}

// wait runs until stop is done (a shutdown signal) or a server fails,
// then drains. A value on hup reloads the certificates.
func (g *gateway) wait(stop context.Context, hup <-chan os.Signal) int {
	watchCtx, stopWatch := context.WithCancel(context.Background())
	var watchers sync.WaitGroup
	for _, s := range g.stores {
		watchers.Go(func() { s.Watch(watchCtx) })
	}
	defer func() {
		stopWatch()
		watchers.Wait()
	}()
	code := 0
	for done := false; !done; {
		select {
		case <-hup:
			for _, s := range g.stores {
				if err := s.Reload(); err != nil {
					g.log.Error("certificate reload failed; keeping the previous certificates", "error", err.Error())
				}
			}
		case err := <-g.failed:
			g.log.Error("server failed", "error", err.Error())
			code = 1
			done = true
		case <-stop.Done():
			done = true
		}
	}
	if !g.shutdown() && code == 0 {
		code = 1
	}
	g.log.Info("stopped", "exit_code", code)
	return code
}

// closeSets stops the upstreams' background work and waits for it.
func (g *gateway) closeSets() {
	for _, s := range g.sets {
		s.Close()
	}
}

// shutdown stops accepting, finishes in-flight HTTP requests and drains
// every WebSocket with 1001 within timeouts.drain. It reports whether
// everything ended inside the budget.
func (g *gateway) shutdown() bool {
	t := g.cfg.Timeouts
	if t.ShutdownDelay > 0 {
		g.log.Info("shutdown delayed", "delay_ms", t.ShutdownDelay.Milliseconds())
		time.Sleep(t.ShutdownDelay) // the delay itself is the feature: listeners keep accepting
	}
	g.log.Info("draining", "sessions", g.handler.Sessions(), "budget_ms", t.Drain.Milliseconds())
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
	// fasthttp's Shutdown ignores hijacked connections: Drain closes those.
	for _, srv := range g.servers {
		wg.Go(func() { setForce(srv.ShutdownWithContext(ctx)) })
	}
	wg.Go(func() { setForce(g.handler.Drain(ctx)) })
	wg.Wait()
	// The demo backends stop last: sessions through the proxy to them
	// have already closed with 1001.
	for _, srv := range g.demos {
		wg.Go(func() { setForce(srv.ShutdownWithContext(ctx)) })
	}
	wg.Wait()
	// ShutdownWithContext closes only the listeners its Serve has taken:
	// a Serve goroutine that starts after it (a signal right after
	// startup) would accept forever. Serve returns once its listener is
	// closed.
	for _, ln := range g.lns {
		_ = ln.Close()
	}
	g.serveWG.Wait()
	g.closeSets()
	if forced {
		g.log.Warn("drain budget exceeded; remaining connections were cut")
	}
	return !forced && !errors.Is(ctx.Err(), context.DeadlineExceeded)
}
