//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// sample is one measurement: one workload against one target in one repeat.
type sample struct {
	Target   string             `json:"target"`
	Workload string             `json:"workload"`
	Repeat   int                `json:"repeat"`
	Position int                `json:"position"` // the target's place in this repeat's rotation
	Start    time.Time          `json:"start"`
	Values   map[string]float64 `json:"values,omitempty"`
	// CPU of the measured processes (proxy tree; the backend for direct)
	// over the load window, and of the backend for every target.
	CPUSeconds        float64 `json:"cpu_s"`
	CPUOf             string  `json:"cpu_of"`
	BackendCPUSeconds float64 `json:"backend_cpu_s"`
	LoadCPUSeconds    float64 `json:"load_cpu_s"`
	// OtherCPUSeconds is the machine's busy CPU over the window minus the
	// proxy, backend and load generator: interference from anything else.
	OtherCPUSeconds float64 `json:"other_cpu_s"`
	QuietWaitS      float64 `json:"quiet_wait_s,omitempty"`
	Retries         int     `json:"retries,omitempty"` // loads discarded for interference
	WindowSeconds   float64 `json:"window_s"`
	Errors          int     `json:"errors"`
	Error           string  `json:"error,omitempty"`
	Command         string  `json:"command,omitempty"`
	Raw             string  `json:"raw,omitempty"`
}

type metric struct {
	Key, Label   string
	HigherBetter bool
	Digits       int
	Info         bool // context, not a figure: no arrow, no ratio
}

var otherCPU = metric{"other_cpu", "other processes' CPU during the load (cores)", false, 2, true}

type workload struct {
	ID, Title string
	Metrics   []metric
	run       func(o *options, s *session, sm *sample) error
}

var workloads = []workload{
	{ID: "idle", Title: "Idle WebSocket memory", Metrics: []metric{
		{"kib_per_conn", "KiB per proxied connection (both legs; RSS delta ÷ N)", false, 1, false},
		{"rss_before_kib", "RSS before the load (KiB)", false, 0, true},
		{"rss_held_kib", "RSS with N connections held (KiB)", false, 0, true},
		{"open_s", "time to open N connections (s)", false, 2, false},
		otherCPU,
	}, run: runIdle},
	{ID: "sse", Title: "SSE time to first event", Metrics: []metric{
		{"p50_us", "p50 (µs)", false, 0, false},
		{"p99_us", "p99 (µs)", false, 0, false},
		{"mean_us", "mean (µs)", false, 0, false},
		otherCPU,
	}, run: runSSE},
	{ID: "http-small", Title: "HTTP GET 13 B (wrk -t1 -c64)", Metrics: []metric{
		{"rps", "requests/s", true, 0, false},
		{"p99_us", "p99 latency (µs)", false, 0, false},
		{"per_cpu", "requests per proxy CPU-second", true, 0, false},
		{"cpu_util", "proxy CPU used (cores)", false, 2, true},
		otherCPU,
	}, run: runHTTPSmall},
	{ID: "http-1mib", Title: "HTTP GET 1 MiB (wrk -t1 -c8)", Metrics: []metric{
		{"mibps", "MiB/s (payload)", true, 0, false},
		{"p99_us", "p99 latency (µs)", false, 0, false},
		{"per_cpu", "MiB per proxy CPU-second", true, 0, false},
		{"cpu_util", "proxy CPU used (cores)", false, 2, true},
		otherCPU,
	}, run: runHTTPLarge},
	{ID: "ws-128", Title: "WebSocket echo 128 B, 64 connections", Metrics: []metric{
		{"msgs_per_s", "messages/s (round trips)", true, 0, false},
		{"p50_us", "p50 (µs)", false, 0, false},
		{"p99_us", "p99 (µs)", false, 0, false},
		{"per_cpu", "messages per proxy CPU-second", true, 0, false},
		{"cpu_util", "proxy CPU used (cores)", false, 2, true},
		otherCPU,
	}, run: func(o *options, s *session, sm *sample) error { return runEcho(o, s, sm, 64, 128, false) }},
	{ID: "ws-128-text", Title: "WebSocket echo 128 B text, 64 connections", Metrics: []metric{
		{"msgs_per_s", "messages/s (round trips)", true, 0, false},
		{"p99_us", "p99 (µs)", false, 0, false},
		{"per_cpu", "messages per proxy CPU-second", true, 0, false},
		{"cpu_util", "proxy CPU used (cores)", false, 2, true},
		otherCPU,
	}, run: func(o *options, s *session, sm *sample) error { return runEcho(o, s, sm, 64, 128, true) }},
	{ID: "ws-64k", Title: "WebSocket echo 64 KiB, 16 connections", Metrics: []metric{
		{"msgs_per_s", "messages/s (round trips)", true, 0, false},
		{"mibps", "MiB/s each way", true, 0, false},
		{"p99_us", "p99 (µs)", false, 0, false},
		{"per_cpu", "messages per proxy CPU-second", true, 0, false},
		{"cpu_util", "proxy CPU used (cores)", false, 2, true},
		otherCPU,
	}, run: func(o *options, s *session, sm *sample) error { return runEcho(o, s, sm, 16, 65536, false) }},
}

func workloadByID(id string) *workload {
	for i := range workloads {
		if workloads[i].ID == id {
			return &workloads[i]
		}
	}
	return nil
}

// window measures the CPU of the measured tree, of the backend and of the
// whole machine around f, which returns the load generator's CPU seconds.
func window(s *session, sm *sample, f func() (float64, error)) error {
	m := s.measured()
	mb, bb, all := cpuTicks(m.pid()), cpuTicks(s.backend.pid()), busyTicks()
	t0 := time.Now()
	load, err := f()
	sm.WindowSeconds = time.Since(t0).Seconds()
	sm.CPUSeconds = cpuDelta(mb, cpuTicks(m.pid()))
	sm.BackendCPUSeconds = cpuDelta(bb, cpuTicks(s.backend.pid()))
	sm.LoadCPUSeconds = load
	ours := sm.CPUSeconds + sm.BackendCPUSeconds + load
	if s.proxy != nil {
		sm.CPUOf = "proxy"
	} else {
		sm.CPUOf = "backend"
		ours = sm.CPUSeconds + load
	}
	sm.OtherCPUSeconds = math.Max(0, float64(busyTicks()-all)/clockTick-ours)
	return err
}

// quietWait waits, up to limit, until the machine's CPUs are quiet (under
// 0.25 of a core busy over half a second while our processes idle), so a
// load does not start while something else (a build, a test run) is busy.
func quietWait(limit time.Duration) time.Duration {
	if limit <= 0 {
		return 0
	}
	t0 := time.Now()
	for {
		b := busyTicks()
		time.Sleep(500 * time.Millisecond)
		busy := float64(busyTicks()-b) / clockTick / 0.5
		if busy < 0.25 || time.Since(t0) >= limit {
			return time.Since(t0)
		}
	}
}

func setCPU(sm *sample, count float64) {
	if sm.CPUSeconds > 0 {
		sm.Values["per_cpu"] = count / sm.CPUSeconds
	}
	if sm.WindowSeconds > 0 {
		sm.Values["cpu_util"] = sm.CPUSeconds / sm.WindowSeconds
	}
}

func secs(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "s" }

// ---- wrk ----

type wrkResult struct {
	Requests    float64
	Seconds     float64
	RPS         float64
	P50, P99    float64 // µs
	SocketErrs  int
	Non2xx      int
	TransferMiB float64 // per second, wrk's 1024-based units
}

var (
	reWrkTotal = regexp.MustCompile(`(\d+) requests in ([\d.]+)(us|ms|s|m|h)`)
	reWrkRPS   = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
	reWrkXfer  = regexp.MustCompile(`Transfer/sec:\s+([\d.]+)([KMGT]?B)`)
	reWrkPct   = regexp.MustCompile(`(?m)^\s+(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$`)
	reWrkSock  = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	reWrkNon2  = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

func unitUS(v float64, unit string) float64 {
	switch unit {
	case "us":
		return v
	case "ms":
		return v * 1e3
	case "s":
		return v * 1e6
	case "m":
		return v * 60e6
	case "h":
		return v * 3600e6
	}
	return math.NaN()
}

func parseWrk(out string) (wrkResult, error) {
	var r wrkResult
	m := reWrkTotal.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("wrk: no \"N requests in\" line")
	}
	r.Requests, _ = strconv.ParseFloat(m[1], 64)
	d, _ := strconv.ParseFloat(m[2], 64)
	r.Seconds = unitUS(d, m[3]) / 1e6
	if m := reWrkRPS.FindStringSubmatch(out); m != nil {
		r.RPS, _ = strconv.ParseFloat(m[1], 64)
	} else {
		return r, fmt.Errorf("wrk: no Requests/sec line")
	}
	for _, m := range reWrkPct.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		switch m[1] {
		case "50":
			r.P50 = unitUS(v, m[3])
		case "99":
			r.P99 = unitUS(v, m[3])
		}
	}
	if m := reWrkXfer.FindStringSubmatch(out); m != nil {
		v, _ := strconv.ParseFloat(m[1], 64)
		mul := map[string]float64{"B": 1.0 / (1 << 20), "KB": 1.0 / 1024, "MB": 1, "GB": 1024, "TB": 1 << 20}[m[2]]
		r.TransferMiB = v * mul
	}
	if m := reWrkSock.FindStringSubmatch(out); m != nil {
		for _, x := range m[1:] {
			n, _ := strconv.Atoi(x)
			r.SocketErrs += n
		}
	}
	if m := reWrkNon2.FindStringSubmatch(out); m != nil {
		r.Non2xx, _ = strconv.Atoi(m[1])
	}
	return r, nil
}

// wrkArgv builds a wrk command line; wrk takes whole seconds only.
func wrkArgv(o *options, conns int, d time.Duration, url string) []string {
	sec := int(math.Ceil(d.Seconds()))
	return []string{"wrk", "-t1", "-c" + strconv.Itoa(conns), "-d" + strconv.Itoa(max(1, sec)) + "s", "--timeout", "10s", "--latency", url}
}

// runWrk warms up, then runs the measured wrk inside a CPU window.
func runWrk(o *options, s *session, sm *sample, conns int, path string) (wrkResult, error) {
	url := "http://" + s.addr + path
	if o.warmup > 0 {
		if so, se, err := runCmd(o.warmup+30*time.Second, o.loadCPU, wrkArgv(o, conns, o.warmup, url)...); err != nil {
			return wrkResult{}, fmt.Errorf("wrk warm-up: %v: %s%s", err, so, se)
		}
	}
	argv := wrkArgv(o, conns, o.duration, url)
	sm.Command = strings.Join(argv, " ")
	var out, errOut string
	err := window(s, sm, func() (float64, error) {
		var err error
		var c float64
		out, errOut, c, err = runJob(o.duration+30*time.Second, o.loadCPU, argv...)
		return c, err
	})
	sm.Raw = out + errOut
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk: %v", err)
	}
	r, err := parseWrk(out)
	if err != nil {
		return r, err
	}
	sm.Errors = r.SocketErrs + r.Non2xx
	if r.Requests == 0 {
		return r, fmt.Errorf("wrk completed no request")
	}
	if sm.Errors > 0 {
		return r, fmt.Errorf("wrk: %d socket errors, %d non-2xx responses", r.SocketErrs, r.Non2xx)
	}
	return r, nil
}

func runHTTPSmall(o *options, s *session, sm *sample) error {
	r, err := runWrk(o, s, sm, 64, "/small")
	if r.Requests > 0 {
		sm.Values["rps"] = r.RPS
		sm.Values["p50_us"] = r.P50
		sm.Values["p99_us"] = r.P99
		sm.Values["requests"] = r.Requests
		setCPU(sm, r.Requests)
	}
	return err
}

func runHTTPLarge(o *options, s *session, sm *sample) error {
	r, err := runWrk(o, s, sm, 8, "/bytes/1048576")
	if r.Requests > 0 {
		sm.Values["mibps"] = r.RPS // 1 MiB of payload per request
		sm.Values["transfer_mibps"] = r.TransferMiB
		sm.Values["rps"] = r.RPS
		sm.Values["p50_us"] = r.P50
		sm.Values["p99_us"] = r.P99
		sm.Values["requests"] = r.Requests
		setCPU(sm, r.Requests) // MiB per CPU-second
	}
	return err
}

// ---- wsload ----

func wsURL(s *session) string { return "ws://" + s.addr + "/ws" }

func parseJSONObj(out string) (map[string]any, error) {
	out = strings.TrimSpace(out)
	// The JSON is the last line that starts with '{'.
	lines := strings.Split(out, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if strings.HasPrefix(l, "{") {
			var m map[string]any
			if err := json.Unmarshal([]byte(l), &m); err == nil {
				return m, nil
			}
		}
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		return nil, fmt.Errorf("no JSON object in output: %q", clip(out, 300))
	}
	return m, nil
}

func num(m map[string]any, k string) float64 {
	switch v := m[k].(type) {
	case float64:
		return v
	case json.Number:
		f, _ := v.Float64()
		return f
	}
	return 0
}

func str(m map[string]any, k string) string {
	if v, ok := m[k].(string); ok {
		return v
	}
	return ""
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func runEcho(o *options, s *session, sm *sample, conns, size int, text bool) error {
	base := []string{filepath.Join(o.bin, "wsload"), "-mode", "echo", "-url", wsURL(s),
		"-c", strconv.Itoa(conns), "-size", strconv.Itoa(size), "-json"}
	if text {
		base = append(base, "-text") // wsgate checks text as UTF-8
	}
	if o.warmup > 0 {
		argv := append(append([]string{}, base...), "-duration", secs(o.warmup), "-warmup", "0s")
		if so, se, err := runCmd(o.warmup+60*time.Second, o.loadCPU, argv...); err != nil {
			return fmt.Errorf("wsload warm-up: %v: %s%s", err, clip(so, 500), clip(se, 500))
		}
	}
	argv := append(append([]string{}, base...), "-duration", secs(o.duration), "-warmup", "0s")
	sm.Command = strings.Join(argv, " ")
	var out, errOut string
	err := window(s, sm, func() (float64, error) {
		var err error
		var c float64
		out, errOut, c, err = runJob(o.duration+60*time.Second, o.loadCPU, argv...)
		return c, err
	})
	sm.Raw = clip(out, 4000) + clip(errOut, 2000)
	m, perr := parseJSONObj(out)
	if perr != nil {
		if err != nil {
			return fmt.Errorf("wsload: %v; %v", err, perr)
		}
		return perr
	}
	rt := num(m, "round_trips")
	sm.Values["msgs_per_s"] = num(m, "msgs_per_s")
	sm.Values["mibps"] = num(m, "msgs_per_s") * float64(size) / (1 << 20)
	sm.Values["p50_us"] = num(m, "p50_us")
	sm.Values["p90_us"] = num(m, "p90_us")
	sm.Values["p99_us"] = num(m, "p99_us")
	sm.Values["max_us"] = num(m, "max_us")
	sm.Values["round_trips"] = rt
	sm.Errors = int(num(m, "errors"))
	setCPU(sm, rt)
	if err != nil {
		return fmt.Errorf("wsload: %v", err)
	}
	if sm.Errors > 0 {
		return fmt.Errorf("wsload: %d errors, first: %s", sm.Errors, str(m, "first_error"))
	}
	if rt == 0 {
		return fmt.Errorf("wsload: no round trip completed")
	}
	return nil
}

func runIdle(o *options, s *session, sm *sample) error {
	ready := filepath.Join(s.dir, "idle.ready")
	_ = os.Remove(ready)
	argv := []string{filepath.Join(o.bin, "wsload"), "-mode", "idle", "-url", wsURL(s),
		"-n", strconv.Itoa(o.idleN), "-hold", secs(o.idleHold), "-ready-file", ready, "-json"}
	sm.Command = strings.Join(argv, " ")
	m := s.measured()
	var out, errOut string
	var held, before int64
	err := window(s, sm, func() (float64, error) {
		before = rssKiB(m.pid())
		openLimit := 90 * time.Second
		j, err := startJob(openLimit+o.idleHold+60*time.Second, o.loadCPU, argv...)
		if err != nil {
			return 0, err
		}
		deadline := time.Now().Add(openLimit)
		isReady := false
		for time.Now().Before(deadline) {
			if strings.Contains(string(readFile(ready)), "ready") {
				isReady = true
				break
			}
			select {
			case err := <-j.done:
				j.done <- err // let wait see it
				deadline = time.Now()
			case <-time.After(20 * time.Millisecond):
			}
		}
		if isReady {
			// Let the proxy finish the last handshakes' bookkeeping.
			time.Sleep(o.idleSettle)
			held = rssKiB(m.pid())
		}
		out, errOut, err = j.wait()
		if !isReady && err == nil {
			err = fmt.Errorf("wsload idle exited without writing %q", ready)
		}
		return j.cpuSeconds(), err
	})
	sm.Raw = clip(out, 4000) + clip(errOut, 2000)
	res, perr := parseJSONObj(out)
	if perr == nil {
		opened := num(res, "opened")
		sm.Values["opened"] = opened
		sm.Values["failed"] = num(res, "failed")
		sm.Values["open_s"] = num(res, "open_s")
		sm.Values["dropped"] = num(res, "dropped")
		sm.Errors = int(num(res, "failed") + num(res, "dropped"))
		if held > 0 && opened > 0 {
			sm.Values["rss_before_kib"] = float64(before)
			sm.Values["rss_held_kib"] = float64(held)
			sm.Values["kib_per_conn"] = float64(held-before) / opened
		}
	}
	switch {
	case err != nil:
		return fmt.Errorf("wsload idle: %v %s", err, clip(errOut, 500))
	case perr != nil:
		return perr
	case sm.Errors > 0:
		return fmt.Errorf("wsload idle: %v of %d connections failed to open, %v dropped while held: %s",
			num(res, "failed"), o.idleN, num(res, "dropped"), str(res, "first_error"))
	case held == 0:
		return fmt.Errorf("wsload idle: never ready")
	}
	return nil
}

func runSSE(o *options, s *session, sm *sample) error {
	argv := []string{filepath.Join(o.bin, "wsload"), "-mode", "sse",
		"-url", "http://" + s.addr + "/sse?n=1&interval=0", "-count", strconv.Itoa(o.sseCount), "-json"}
	sm.Command = strings.Join(argv, " ")
	var out, errOut string
	err := window(s, sm, func() (float64, error) {
		var err error
		var c float64
		out, errOut, c, err = runJob(2*time.Minute, o.loadCPU, argv...)
		return c, err
	})
	sm.Raw = clip(out, 4000) + clip(errOut, 2000)
	m, perr := parseJSONObj(out)
	if perr == nil {
		sm.Values["p50_us"] = num(m, "p50_us")
		sm.Values["p99_us"] = num(m, "p99_us")
		sm.Values["mean_us"] = num(m, "mean_us")
		sm.Errors = int(num(m, "errors"))
	}
	switch {
	case err != nil:
		return fmt.Errorf("wsload sse: %v %s", err, clip(errOut, 500))
	case perr != nil:
		return perr
	case sm.Errors > 0:
		return fmt.Errorf("wsload sse: %d errors: %s", sm.Errors, str(m, "first_error"))
	}
	return nil
}
