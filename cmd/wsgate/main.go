// Command wsgate is a WebSocket-aware reverse proxy configured in YAML.
//
//	wsgate -config FILE [-log-format json|text] [-log-level info] [-access-log=true]
//	wsgate validate FILE
//	wsgate schema
//	wsgate healthcheck [-timeout 5s] [-insecure] [URL]
//	wsgate version
//
// Exit codes: 0 clean shutdown, 1 runtime failure or forced drain, 2 bad
// flags or config. SIGTERM and SIGINT drain gracefully (a second one
// closes every session at once); SIGHUP, or a change of the config file
// or of a file it names, reloads the config; SIGUSR2 hands the listening
// sockets over to a new process of the same executable.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"sync"
	"time"

	"github.com/wsgate/wsgate/config"
	"github.com/wsgate/wsgate/internal/filewatch"
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
		case "version", "-version", "--version":
			fmt.Fprintf(stdout, "wsgate %s\n", buildVersion())
			return 0
		case "help", "-h", "-help", "--help":
			fmt.Fprint(stdout, usage)
			return 0
		case "validate":
			return validate(args[1:], stdout, stderr)
		case "healthcheck":
			return healthcheck(args[1:], stdout, stderr)
		case "schema":
			return schema(args[1:], stdout, stderr)
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
		fmt.Fprint(stderr, usage)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	switch {
	case fs.NArg() > 0:
		hint := ""
		if *configPath == "" && (strings.HasSuffix(fs.Arg(0), ".yaml") || strings.HasSuffix(fs.Arg(0), ".yml")) {
			hint = fmt.Sprintf(" (did you mean -config %s?)", fs.Arg(0))
		}
		fmt.Fprintf(stderr, "wsgate: unexpected argument %q%s\n\n%s", fs.Arg(0), hint, usage)
		return 2
	case *configPath == "":
		fmt.Fprintf(stderr, "wsgate: -config is required\n\n%s", usage)
		return 2
	}
	log, err := newLogger(stderr, *logFormat, *logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "wsgate: %v\n", err)
		return 2
	}
	path, err := filepath.Abs(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "wsgate: -config: %v\n", err)
		return 2
	}
	cfg, err := config.Load(path)
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
	// Take the signals before the first listening line, and never let
	// them go (no signal.Stop): a SIGHUP or SIGTERM at any moment until
	// the process exits must not kill it by the default action.
	// One channel per kind: a burst of SIGHUPs fills its channel (and
	// the extra ones coalesce, as reloads do), never the one a SIGTERM
	// must get through.
	term, hup, usr2 := make(chan os.Signal, 4), make(chan os.Signal, 1), make(chan os.Signal, 1)
	notifySignals(term, hup, usr2)
	sigs := signals{term: term, hup: hup, usr2: usr2}
	in, err := inheritedListeners()
	if err != nil {
		log.Error("start failed", "error", err.Error())
		return 1
	}
	g, err := start(path, cfg, log, *accessLog, in)
	if err != nil {
		log.Error("start failed", "error", err.Error())
		return 1
	}
	tookOver := tellParentReady(log)
	g.notify = newNotifier(log)
	g.notify.ready(tookOver, "serving")
	return g.wait(sigs)
}

func validate(args []string, stdout, stderr io.Writer) int {
	const validateUsage = "usage: wsgate validate FILE\n\nChecks FILE as wsgate would load it: every problem, one per line with\nits file:line and key, exit 2; warnings (lines starting \"warning:\")\nand \"FILE: ok\", exit 0.\n"
	switch {
	case len(args) == 1 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help"):
		fmt.Fprint(stdout, validateUsage)
		return 0
	case len(args) == 0:
		fmt.Fprintf(stderr, "wsgate validate: a config file is required\n\n%s", validateUsage)
		return 2
	case len(args) > 1:
		fmt.Fprintf(stderr, "wsgate validate: unexpected argument %q (one file at a time)\n\n%s", args[1], validateUsage)
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

// schema is `wsgate schema`: the config's JSON Schema on stdout.
func schema(args []string, stdout, stderr io.Writer) int {
	const schemaUsage = "usage: wsgate schema\n\nPrints the JSON Schema (draft 2020-12) of the config file, the same as\nconfig.schema.json, for editors and CI checks.\n"
	switch {
	case len(args) == 1 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help"):
		fmt.Fprint(stdout, schemaUsage)
		return 0
	case len(args) > 0:
		fmt.Fprintf(stderr, "wsgate schema: unexpected argument %q\n\n%s", args[0], schemaUsage)
		return 2
	}
	if _, err := stdout.Write(config.Schema()); err != nil {
		fmt.Fprintf(stderr, "wsgate schema: %v\n", err)
		return 1
	}
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

// signals are the channels the handled signals arrive on.
type signals struct {
	term <-chan os.Signal // SIGTERM, SIGINT
	hup  <-chan os.Signal
	usr2 <-chan os.Signal
}

// wait runs until a shutdown signal, a hand-over that succeeded or a
// failed server, then drains, and returns the exit code. SIGHUP and file
// changes reload the config meanwhile.
func (g *gateway) wait(sigs signals) int {
	watchCtx, stopWatch := context.WithCancel(context.Background())
	var watchers sync.WaitGroup
	watchers.Go(func() {
		filewatch.Watch(watchCtx, g.watchFiles, func() {
			if g.filesChanged() {
				g.reload("file change")
			}
		}, filewatch.Options{Debounce: 500 * time.Millisecond, Logger: g.log, What: "config watch"})
	})
	defer func() {
		stopWatch()
		watchers.Wait()
	}()
	handedOver := make(chan struct{})
	code := 0
	handed := false
wait:
	for {
		// A SIGTERM goes first: a reload or a burst of SIGHUPs must not
		// keep the process from shutting down.
		select {
		case sig := <-sigs.term:
			g.log.Info("shutting down", "signal", sig.String())
			break wait
		default:
		}
		select {
		case sig := <-sigs.term:
			g.log.Info("shutting down", "signal", sig.String())
			break wait
		case <-sigs.hup:
			g.reload("SIGHUP")
		case <-sigs.usr2:
			g.handOver(handedOver)
		case <-handedOver:
			handed = true
			g.mu.Lock()
			if a := g.adminSrv; a != nil {
				// The new process answers the admin API on its copy;
				// connections here end after their current request.
				a.srv.SetKeepAlivesEnabled(false)
				_ = a.ln.Close()
			}
			g.mu.Unlock()
			break wait
		case err := <-g.failed:
			g.log.Error("server failed", "error", err.Error())
			code = 1
			break wait
		}
	}
	// A second SIGTERM or SIGINT hurries the drain; SIGHUP and SIGUSR2
	// are ignored from now on, but stay caught.
	hurry := make(chan struct{})
	done := make(chan struct{})
	go func() {
		hurried := false
		for {
			select {
			case sig := <-sigs.term:
				if !hurried {
					g.log.Info("second shutdown signal: closing every session now", "signal", sig.String())
					close(hurry)
					hurried = true
				}
			case sig := <-sigs.hup:
				g.log.Info("signal ignored while shutting down", "signal", sig.String())
			case sig := <-sigs.usr2:
				g.log.Info("signal ignored while shutting down", "signal", sig.String())
			case <-done:
				return
			}
		}
	}()
	// The delay of the config running now (a reload may have changed
	// it); none after a hand-over: the new process accepts already.
	delay := g.config().Timeouts.ShutdownDelay
	if handed {
		delay = 0 // and no STOPPING=1: the new process is the service now
	} else {
		g.notify.send("STOPPING=1", "STATUS=draining")
	}
	if !g.shutdown(delay, hurry) && code == 0 {
		code = 1
	}
	close(done)
	g.log.Info("stopped", "exit_code", code)
	return code
}

// config returns the running config.
func (g *gateway) config() *config.Config {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.cfg
}

// usage is what -h, help and a usage error print.
const usage = `usage: wsgate -config FILE [flags]   run the gateway on FILE
       wsgate validate FILE           check FILE and exit
       wsgate schema                  print the config's JSON Schema
       wsgate healthcheck [URL]       exit 0 if URL answers 2xx (for Docker)
       wsgate version                 print the version
       wsgate help                    print this

flags:
  -config FILE       the YAML configuration (required)
  -log-format F      json (default) or text
  -log-level L       debug, info (default), warn or error
  -access-log=false  no line per HTTP request
  -cpuprofile FILE   write a CPU profile until shutdown (for development)

Signals: SIGHUP reloads the config, SIGTERM/SIGINT drain and stop,
SIGUSR2 hands the sockets over to a new process. See README.md.
`

// buildVersion is the version set with -ldflags "-X main.version=...",
// else what the Go toolchain recorded: the module version of a go
// install, or the VCS revision and time of a build from a checkout.
func buildVersion() string {
	if version != "dev" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return version
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, at, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			at = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	if rev == "" {
		return version
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if at != "" {
		return "dev-" + rev + dirty + " (" + at + ")"
	}
	return "dev-" + rev + dirty
}
