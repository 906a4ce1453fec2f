// Command wsload is the WebSocket and SSE load generator of the wsgate
// benchmark suite. It does not import any wsgate package.
//
//	wsload -mode echo -url ws://HOST:PORT/ws [-c 64] [-size 128] [-duration 10s] [-warmup 1s] [-subprotocol P] [-json]
//	wsload -mode idle -url ws://HOST:PORT/ws [-n 5000] [-hold 5s] [-ready-file F] [-json]
//	wsload -mode sse  -url 'http://HOST:PORT/sse?n=1&interval=0' [-count 200] [-json]
//
// echo: C connections each keep exactly one binary message of S bytes in
// flight and measure round trips after the warm-up.
//
// idle: opens N connections (64 dials at a time, no retries), then reports
// readiness, "ready" on stdout or, with -ready-file, in that file only, holds
// them for -hold without traffic and closes them with 1000.
//
// sse: COUNT sequential requests, each on a fresh connection, timing the
// request start to the first "data:" line.
//
// The human-readable summary goes to stderr; with -json, one JSON object on
// one line goes to stdout (always its last line). Exit codes: 0 measured
// (the errors field may still be non-zero), 1 nothing measured, interrupted
// or hard timeout, 2 bad flags.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// config is the command line.
type config struct {
	mode string
	url  string
	json bool

	// echo
	conns       int
	size        int
	duration    time.Duration
	warmup      time.Duration
	subprotocol string
	text        bool

	// idle
	n         int
	hold      time.Duration
	readyFile string

	// sse
	count int
}

// result is what a mode measured.
type result interface {
	// summary writes the human-readable report.
	summary(w io.Writer)
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without os.Exit, returning the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stderr, "wsload: %v\n", err)
		}
		return 2
	}
	if lim, err := raiseNoFileLimit(); err != nil {
		fmt.Fprintf(stderr, "wsload: raise RLIMIT_NOFILE: %v\n", err)
	} else if cfg.mode == "idle" && lim > 0 && uint64(cfg.n)+64 > lim {
		fmt.Fprintf(stderr, "wsload: warning: RLIMIT_NOFILE is %d, below -n %d plus headroom; raise ulimit -n\n", lim, cfg.n)
	}

	// The hard timeout is the last line of defence against a hang anywhere
	// (a proxy that stops answering, a dial that never completes).
	limit := hardTimeout(cfg)
	hard := time.AfterFunc(limit, func() {
		fmt.Fprintf(stderr, "wsload: hard timeout: %s mode did not finish within %s; giving up\n", cfg.mode, limit)
		os.Exit(1)
	})
	defer hard.Stop()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	var res result
	switch cfg.mode {
	case "echo":
		res, err = runEcho(ctx, cfg)
	case "idle":
		ready := func() error {
			fmt.Fprintln(stderr, "wsload: ready")
			if cfg.readyFile != "" {
				return writeFileAtomic(cfg.readyFile, "ready\n")
			}
			_, err := fmt.Fprintln(stdout, "ready")
			return err
		}
		res, err = runIdle(ctx, cfg, ready)
	case "sse":
		res, err = runSSE(ctx, cfg)
	}
	if res != nil {
		res.summary(stderr)
		if cfg.json {
			enc := json.NewEncoder(stdout)
			enc.SetEscapeHTML(false) // keep "&" in URLs readable
			if jerr := enc.Encode(res); jerr != nil {
				fmt.Fprintf(stderr, "wsload: %v\n", jerr)
				return 1
			}
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "wsload: %v\n", err)
		return 1
	}
	return 0
}

// Bounds of the phases that come on top of -duration or -hold.
const (
	dialTimeout  = 10 * time.Second // one TCP connect plus WebSocket handshake
	openTimeout  = 60 * time.Second // idle: all N dials
	stallGrace   = 5 * time.Second  // echo: how long a round trip may overrun the run
	closeTimeout = 5 * time.Second  // the closing handshakes at the end
	sseTimeout   = 10 * time.Second // one SSE request until its first event
)

// hardTimeout is how long the whole process may run.
func hardTimeout(cfg config) time.Duration {
	switch cfg.mode {
	case "echo":
		return cfg.warmup + cfg.duration + 30*time.Second
	case "idle":
		return openTimeout + cfg.hold + 30*time.Second
	default:
		// Requests to a healthy target take milliseconds; allow ~1s each.
		return time.Duration(cfg.count)*time.Second + 30*time.Second
	}
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("wsload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.mode, "mode", "echo", "`mode`: echo, idle or sse")
	fs.StringVar(&cfg.url, "url", "", "target `URL`: ws:// or wss:// (echo, idle), http:// or https:// (sse)")
	fs.BoolVar(&cfg.json, "json", false, "print one JSON object on stdout")
	fs.IntVar(&cfg.conns, "c", 64, "echo: `connections`, each with one message in flight")
	fs.IntVar(&cfg.size, "size", 128, "echo: message size in `bytes`")
	fs.DurationVar(&cfg.duration, "duration", 10*time.Second, "echo: measured `duration`")
	fs.DurationVar(&cfg.warmup, "warmup", time.Second, "echo: unmeasured warm-up before -duration")
	fs.BoolVar(&cfg.text, "text", false, "echo: send text messages (ASCII) instead of binary ones")
	fs.StringVar(&cfg.subprotocol, "subprotocol", "", "echo: request this subprotocol and require it in the handshake")
	fs.IntVar(&cfg.n, "n", 5000, "idle: `connections` to open")
	fs.DurationVar(&cfg.hold, "hold", 5*time.Second, "idle: how long to hold them after ready")
	fs.StringVar(&cfg.readyFile, "ready-file", "", "idle: write \"ready\" to this `file` instead of stdout once all are open")
	fs.IntVar(&cfg.count, "count", 200, "sse: sequential `requests`")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	u, err := url.Parse(cfg.url)
	if cfg.url == "" {
		return cfg, errors.New("-url is required")
	} else if err != nil {
		return cfg, fmt.Errorf("-url: %w", err)
	}
	wantSchemes := "ws or wss"
	ok := u.Scheme == "ws" || u.Scheme == "wss"
	switch cfg.mode {
	case "echo":
		if cfg.conns < 1 {
			return cfg, fmt.Errorf("-c %d: want at least 1", cfg.conns)
		}
		if cfg.size < 1 || cfg.size > 64<<20 {
			return cfg, fmt.Errorf("-size %d: want 1..%d", cfg.size, 64<<20)
		}
		if cfg.duration <= 0 || cfg.warmup < 0 {
			return cfg, fmt.Errorf("-duration %s -warmup %s: want a positive duration and a non-negative warm-up", cfg.duration, cfg.warmup)
		}
	case "idle":
		if cfg.n < 1 {
			return cfg, fmt.Errorf("-n %d: want at least 1", cfg.n)
		}
		if cfg.hold < 0 {
			return cfg, fmt.Errorf("-hold %s: want a non-negative duration", cfg.hold)
		}
	case "sse":
		if cfg.count < 1 {
			return cfg, fmt.Errorf("-count %d: want at least 1", cfg.count)
		}
		wantSchemes = "http or https"
		ok = u.Scheme == "http" || u.Scheme == "https"
	default:
		return cfg, fmt.Errorf("-mode %q: want echo, idle or sse", cfg.mode)
	}
	if !ok {
		return cfg, fmt.Errorf("-url %q: unsupported scheme %q for mode %s (want %s)", cfg.url, u.Scheme, cfg.mode, wantSchemes)
	}
	return cfg, nil
}

// writeFileAtomic writes data to a temporary file next to name and renames
// it, so a poller never reads a partial file.
func writeFileAtomic(name, data string) error {
	tmp := name + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, name)
}

// micros converts d to microseconds, rounded to 0.1 µs.
func micros(d time.Duration) float64 {
	return math.Round(float64(d)/100) / 10
}

// errTally counts errors and keeps the earliest one.
type errTally struct {
	count int64
	first error
	at    time.Time
}

func (t *errTally) add(err error, at time.Time) {
	t.count++
	if t.first == nil || at.Before(t.at) {
		t.first, t.at = err, at
	}
}

func (t *errTally) merge(o errTally) {
	if o.first != nil {
		t.add(o.first, o.at)
		t.count += o.count - 1
	}
}

func (t *errTally) firstError() string {
	if t.first == nil {
		return ""
	}
	return t.first.Error()
}
