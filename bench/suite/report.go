//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"

	"sort"
	"strings"
	"time"
)

type envInfo struct {
	Date          string            `json:"date"`
	Mode          string            `json:"mode"`
	Elapsed       string            `json:"elapsed"`
	NProc         int               `json:"nproc"`
	CPUModel      string            `json:"cpu_model"`
	Kernel        string            `json:"kernel"`
	MemTotal      string            `json:"mem_total"`
	Versions      map[string]string `json:"versions"`
	NoFile        int               `json:"nofile"`
	ClockTick     float64           `json:"clk_tck"`
	ProxyCPU      string            `json:"proxy_cpu"`
	LoadCPU       string            `json:"load_cpu"`
	Repeats       int               `json:"repeats"`
	Duration      string            `json:"duration"`
	Warmup        string            `json:"warmup"`
	IdleN         int               `json:"idle_n"`
	IdleHold      string            `json:"idle_hold"`
	SSECount      int               `json:"sse_count"`
	Targets       []string          `json:"targets"`
	Workloads     []string          `json:"workloads"`
	LoadAvgBefore string            `json:"loadavg_before"`
	LoadAvgAfter  string            `json:"loadavg_after"`
	QuietWait     string            `json:"quiet_wait"`
	Notes         []string          `json:"notes,omitempty"`
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return strings.TrimSpace(s)
}

func cmdLine(argv ...string) string {
	so, se, err := runCmd(15*time.Second, "", argv...)
	out := firstLine(so)
	if out == "" {
		out = firstLine(se)
	}
	if out == "" && err != nil {
		return "unavailable (" + err.Error() + ")"
	}
	return out
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return ""
}

func collectEnv(o *options) *envInfo {
	e := &envInfo{
		Date: time.Now().Format("2006-01-02 15:04:05 MST"), NProc: onlineCPUs(), NoFile: o.nofile,
		ClockTick: clockTick, ProxyCPU: o.proxyCPU, LoadCPU: o.loadCPU, Repeats: o.repeats,
		Duration: o.duration.String(), Warmup: o.warmup.String(), IdleN: o.idleN, IdleHold: o.idleHold.String(),
		SSECount: o.sseCount, Targets: o.targets, Workloads: o.workloads, LoadAvgBefore: loadavg(),
		Notes: o.notes, Mode: "full", QuietWait: o.quietWait.String(),
	}
	if o.quick {
		e.Mode = "quick"
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				if i := strings.IndexByte(l, ':'); i >= 0 {
					e.CPUModel = strings.TrimSpace(l[i+1:])
					break
				}
			}
		}
	}
	e.Kernel = cmdLine("uname", "-sr")
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		e.MemTotal = strings.Join(strings.Fields(firstLine(string(b)))[1:], " ")
	}
	// bench/run.sh stamps the binary with what it was built from.
	rev := cmdLine(filepath.Join(o.bin, "wsgate"), "version")
	e.Versions = map[string]string{
		"go":      cmdLine("go", "version"),
		"wsgate":  rev,
		"nginx":   cmdLine("nginx", "-v"),
		"haproxy": cmdLine("haproxy", "-v"),
		"caddy":   cmdLine("caddy", "version"),
		"wrk":     cmdLine("wrk", "-v"),
	}
	return e
}

// ---- summary ----

type stat struct {
	N      int       `json:"n"`
	Median float64   `json:"median"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
	Noise  float64   `json:"noise"` // (max-min)/median
	Ratio  float64   `json:"ratio_to_nginx,omitempty"`
	Values []float64 `json:"values"`
}

type check struct {
	Figure   string  `json:"figure"`
	Rule     string  `json:"rule"`
	Wsgate   float64 `json:"wsgate"`
	RefName  string  `json:"reference"`
	Ref      float64 `json:"reference_value"`
	Ratio    float64 `json:"ratio"` // wsgate ÷ reference
	Need     string  `json:"need"`
	Pass     bool    `json:"pass"`
	Missing  string  `json:"missing,omitempty"`
	Unit     string  `json:"unit"`
	LowerBet bool    `json:"lower_is_better"`
}

type report struct {
	Env     *envInfo                               `json:"env"`
	Summary map[string]map[string]map[string]*stat `json:"summary"` // workload → metric → target
	Checks  []check                                `json:"targets_issue3"`
	Failed  []string                               `json:"failures,omitempty"`
	Samples []sample                               `json:"samples"`
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	if n == 0 {
		return math.NaN()
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func buildReport(o *options, env *envInfo, samples []sample) *report {
	r := &report{Env: env, Samples: samples, Summary: map[string]map[string]map[string]*stat{}}
	for _, sm := range samples {
		if sm.Error != "" {
			r.Failed = append(r.Failed, fmt.Sprintf("%s / %s (repeat %d): %s", sm.Target, sm.Workload, sm.Repeat+1, sm.Error))
		}
	}
	for _, wid := range o.workloads {
		w := workloadByID(wid)
		r.Summary[wid] = map[string]map[string]*stat{}
		for _, m := range w.Metrics {
			byT := map[string]*stat{}
			for _, t := range o.targets {
				var vs []float64
				for _, sm := range samples {
					if sm.Target == t && sm.Workload == wid && sm.Error == "" {
						if v, ok := sm.Values[m.Key]; ok && !math.IsNaN(v) && !math.IsInf(v, 0) {
							vs = append(vs, v)
						}
					}
				}
				if len(vs) == 0 {
					continue
				}
				st := &stat{N: len(vs), Values: vs, Median: median(vs), Min: vs[0], Max: vs[0]}
				for _, v := range vs {
					st.Min, st.Max = math.Min(st.Min, v), math.Max(st.Max, v)
				}
				if st.Median != 0 {
					st.Noise = (st.Max - st.Min) / math.Abs(st.Median)
				}
				byT[t] = st
			}
			if n := byT["nginx"]; n != nil && n.Median != 0 {
				for _, st := range byT {
					st.Ratio = st.Median / n.Median
				}
			}
			r.Summary[wid][m.Key] = byT
		}
	}
	r.Checks = r.checks()
	var waited, maxOther float64
	busy, retries := 0, 0
	for _, sm := range samples {
		waited += sm.QuietWaitS
		retries += sm.Retries
		if o := sm.Values["other_cpu"]; o > maxOther {
			maxOther = o
		}
		if sm.Values["other_cpu"] > 0.1 {
			busy++
		}
	}
	env.Notes = append(env.Notes, fmt.Sprintf("interference: %d of %d kept loads ran while other processes used more than 0.1 core (at most %.2f cores); %d loads were discarded and run again; %.0f s were spent waiting for idle CPUs.",
		busy, len(samples), maxOther, retries, waited))
	return r
}

func (r *report) med(wid, key, t string) (float64, bool) {
	if st := r.Summary[wid][key][t]; st != nil {
		return st.Median, true
	}
	return 0, false
}

// checks evaluates the figures of issue 3 §2.
func (r *report) checks() []check {
	type spec struct {
		figure, wid, key, unit, rule string
		lower                        bool
		// vs: "nginx1.2+others" (≥1.2×nginx and above haproxy and caddy),
		// "best1.2" (≥1.2× best of the three), "haproxy" (≤ haproxy),
		// "nginx" (no worse than nginx), "best" (no worse than the best).
		vs string
	}
	specs := []spec{
		{"HTTP GET 13 B, requests per proxy CPU-second", "http-small", "per_cpu", "req/CPU-s", "≥ 1.2 × nginx, and above HAProxy and Caddy", false, "nginx1.2+others"},
		{"HTTP GET 1 MiB, MiB per proxy CPU-second", "http-1mib", "per_cpu", "MiB/CPU-s", "≥ 1.2 × the best of nginx, HAProxy, Caddy", false, "best1.2"},
		{"WebSocket echo 128 B, messages per proxy CPU-second", "ws-128", "per_cpu", "msgs/CPU-s", "≥ 1.2 × nginx, and above HAProxy and Caddy", false, "nginx1.2+others"},
		{"WebSocket echo 64 KiB, messages per proxy CPU-second", "ws-64k", "per_cpu", "msgs/CPU-s", "≥ 1.2 × the best of the three", false, "best1.2"},
		{"Idle WebSocket memory per proxied connection", "idle", "kib_per_conn", "KiB/conn", "≤ HAProxy's", true, "haproxy"},
		{"SSE time to first event (p50)", "sse", "p50_us", "µs", "no worse than nginx", true, "nginx"},
		{"WebSocket echo 128 B p99 at 64 connections", "ws-128", "p99_us", "µs", "no worse than the best of the three", true, "best"},
	}
	var out []check
	for _, s := range specs {
		c := check{Figure: s.figure, Rule: s.rule, Unit: s.unit, LowerBet: s.lower}
		w, ok := r.med(s.wid, s.key, "wsgate")
		if !ok {
			c.Missing = "no wsgate figure"
			out = append(out, c)
			continue
		}
		c.Wsgate = w
		refVals := map[string]float64{}
		for _, ref := range refs {
			if v, ok := r.med(s.wid, s.key, ref); ok {
				refVals[ref] = v
			}
		}
		best := func() (string, float64, bool) {
			name, v, found := "", 0.0, false
			for _, ref := range refs {
				x, ok := refVals[ref]
				if !ok {
					continue
				}
				if !found || (s.lower && x < v) || (!s.lower && x > v) {
					name, v, found = ref, x, true
				}
			}
			return name, v, found
		}
		need := func(names ...string) bool {
			for _, n := range names {
				if _, ok := refVals[n]; !ok {
					c.Missing = "no " + n + " figure"
					return false
				}
			}
			return true
		}
		switch s.vs {
		case "nginx1.2+others":
			if !need("nginx", "haproxy", "caddy") {
				break
			}
			c.RefName, c.Ref = "nginx", refVals["nginx"]
			c.Ratio = w / c.Ref
			c.Need = "≥ 1.20"
			c.Pass = w >= 1.2*refVals["nginx"] && w > refVals["haproxy"] && w > refVals["caddy"]
			c.Need += fmt.Sprintf(" (and > HAProxy %s, Caddy %s)", fmtNum(refVals["haproxy"], 0), fmtNum(refVals["caddy"], 0))
		case "best1.2":
			if !need("nginx", "haproxy", "caddy") {
				break
			}
			c.RefName, c.Ref, _ = best()
			c.Ratio = w / c.Ref
			c.Need = "≥ 1.20"
			c.Pass = w >= 1.2*c.Ref
		case "haproxy", "nginx": // no worse than this reference
			if !need(s.vs) {
				break
			}
			c.RefName, c.Ref = s.vs, refVals[s.vs]
			c.Ratio = w / c.Ref
			c.Need = "≤ 1.00"
			c.Pass = w <= c.Ref
		case "best":
			if !need("nginx", "haproxy", "caddy") {
				break
			}
			c.RefName, c.Ref, _ = best()
			c.Ratio = w / c.Ref
			c.Need = "≤ 1.00"
			c.Pass = w <= c.Ref
		}
		out = append(out, c)
	}
	return out
}

// ---- output ----

func fmtNum(v float64, digits int) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "–"
	}
	s := fmt.Sprintf("%.*f", digits, v)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	intPart, frac := s, ""
	if i := strings.IndexByte(s, '.'); i >= 0 {
		intPart, frac = s[:i], s[i:]
	}
	var b strings.Builder
	for i, c := range intPart {
		if i > 0 && (len(intPart)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	out := b.String() + frac
	if neg {
		out = "-" + out
	}
	return out
}

func colName(t string) string {
	if t == "direct" {
		return "direct†"
	}
	return t
}

func (r *report) markdown() string {
	e := r.Env
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("# wsgate benchmarks\n\n")
	if e.Mode == "quick" {
		p("> **Quick mode**: one repeat and short loads, to keep the suite from rotting. These figures are not for publishing.\n\n")
	}
	p("wsgate beside nginx, HAProxy, Caddy and direct (no proxy), all in front of the same backend, measured in one run by\n")
	p("`bench/run.sh` (issue 3). Raw samples: [`benchmarks.json`](benchmarks.json).\n\n")
	p("## Machine and versions\n\n| | |\n|---|---|\n")
	p("| date | %s |\n| run time | %s (%s mode) |\n| CPUs | %d × %s |\n| memory | %s |\n| kernel | %s |\n", e.Date, e.Elapsed, e.Mode, e.NProc, e.CPUModel, e.MemTotal, e.Kernel)
	p("| load average before / after | %s / %s |\n| open-file limit | %d |\n", e.LoadAvgBefore, e.LoadAvgAfter, e.NoFile)
	for _, k := range []string{"go", "wsgate", "nginx", "haproxy", "caddy", "wrk"} {
		p("| %s | `%s` |\n", k, e.Versions[k])
	}
	p("\n## Method\n\n")
	p("- **Pinning.** Every proxy runs with one worker — nginx `worker_processes 1` (master + 1 worker), HAProxy `nbthread 1`, Caddy and wsgate `GOMAXPROCS=1` — under `taskset -c %s`. The backend (Go net/http, `GOMAXPROCS=1`) and the load generators (`wrk -t1`, `wsload`) run under `taskset -c %s`. *direct* sends the load to the backend itself.\n", e.ProxyCPU, e.LoadCPU)
	p("- **Same backend, fresh processes.** For each target in each repeat the suite starts a fresh backend and the target, waits for `/healthz` to answer 200 through it, runs every workload, and stops both.\n")
	p("- **Repeats and rotation.** %d repeat(s); the target order rotates by one place each repeat, so no target always runs first or last. Each figure is the **median** of the repeats; **noise** is (max − min) ÷ median over the repeats.\n", e.Repeats)
	p("- **Loads.** Each throughput load runs %s, after an unmeasured warm-up of %s on the same connections count. HTTP: `wrk -t1 -c64 --latency …/small` (13 B body) and `wrk -t1 -c8 --latency …/bytes/1048576`; p99 is wrk's latency distribution. WebSocket: `wsload -mode echo` (C connections, one message in flight each). Idle: `wsload -mode idle -n %d -hold %s`. SSE: `wsload -mode sse -count %d` on `/sse?n=1&interval=0` (one event, sent at once).\n", e.Duration, e.Warmup, e.IdleN, e.IdleHold, e.SSECount)
	p("- **Per proxy CPU-second.** The load side saturates its core, so raw throughput understates every proxy. Around each load window the suite reads utime+stime (fields 14 and 15 of `/proc/PID/stat`, in clock ticks of %g/s) of every process of the proxy (the root and all descendants found via the ppid field: nginx master + worker, haproxy, caddy, wsgate) and divides the work done (requests, MiB of payload, or WebSocket round trips) by the CPU seconds used. For **direct†** the CPU (and memory) figures are the **backend's** own.\n", e.ClockTick)
	p("- **Idle memory.** Sum of `VmRSS` of the proxy's processes once all N idle WebSocket connections are open through it, minus the sum just before the load started, ÷ N. Each connection is two legs (client↔proxy, proxy↔backend). For direct† it is the backend's RSS per connection (one leg).\n")
	p("- **Interference.** The machine may be shared. Before each load the suite waits (up to %s) until the CPUs are idle, runs a load again (at most twice) when other processes used more than 0.3 core during it, and reports for each load the CPU that other processes used during it (busy time from `/proc/stat` minus the proxy, backend and load generator), in cores. Rows in *italics* are context, not figures.\n", e.QuietWait)
	p("- **Ratios.** Each cell reads *median (ratio to nginx's median in the same run, noise)*.\n")
	p("- **Configs.** Generated from `bench/suite/templates/`: nginx upstream `keepalive 64`, `proxy_http_version 1.1`, `Upgrade`/`Connection` map, `proxy_buffering off` for `/sse`, `access_log off`, `keepalive_requests` raised (client and upstream) so nginx does not close wrk's connections every 1000 requests, `proxy_max_temp_file_size 0`; HAProxy `mode http`, `timeout tunnel 1h`, keep-alive both sides, `http-reuse always`; Caddy `admin off`, `auto_https off`, `flush_interval -1` for `/sse`, no access log, 64 idle upstream connections; wsgate one listener, one upstream, one catch-all route (`max_message_size: 2MiB`; for builds that know them, the admin listener and the WebSocket policies: `ping: {interval: 30s, timeout: 10s}`, `validate_utf8: true`, a message rate of 10⁶/s that is never reached), `-access-log=false -log-level warn`.\n")
	for _, n := range e.Notes {
		p("- **Note.** %s\n", n)
	}

	p("\n## Results\n\n† direct: no proxy; its CPU and memory figures are the backend's.\n\n")
	for _, wid := range e.Workloads {
		w := workloadByID(wid)
		p("### %s\n\n| figure |", w.Title)
		for _, t := range e.Targets {
			p(" %s |", colName(t))
		}
		p("\n|---|")
		for range e.Targets {
			p("---:|")
		}
		p("\n")
		for _, m := range w.Metrics {
			label := m.Label
			if m.Info {
				label = "*" + label + "*"
			} else if m.HigherBetter {
				label += " ↑"
			} else {
				label += " ↓"
			}
			p("| %s |", label)
			for _, t := range e.Targets {
				st := r.Summary[wid][m.Key][t]
				if st == nil {
					p(" failed |")
					continue
				}
				cell := fmtNum(st.Median, m.Digits)
				var extra []string
				if st.Ratio != 0 && t != "nginx" && !m.Info {
					extra = append(extra, fmt.Sprintf("%.2f×", st.Ratio))
				}
				if st.N > 1 && !m.Info {
					extra = append(extra, fmt.Sprintf("±%.0f%%", 100*st.Noise))
				}
				if len(extra) > 0 {
					cell += " (" + strings.Join(extra, ", ") + ")"
				}
				p(" %s |", cell)
			}
			p("\n")
		}
		p("\n")
	}

	p("## Targets (issue 3 §2)\n\nSame run, medians. Ratio = wsgate ÷ reference (for “lower is better” figures a ratio below 1 is better).\n\n")
	p("| figure | must reach | wsgate | reference | ratio | needed | result |\n|---|---|---:|---|---:|---|---|\n")
	for _, c := range r.Checks {
		if c.Missing != "" {
			p("| %s | %s | %s | – | – | – | n/a (%s) |\n", c.Figure, c.Rule, fmtNum(c.Wsgate, 1), c.Missing)
			continue
		}
		res := "**fail**"
		if c.Pass {
			res = "pass"
		}
		p("| %s | %s | %s %s | %s %s | %.2f | %s | %s |\n", c.Figure, c.Rule, fmtNum(c.Wsgate, 1), c.Unit, c.RefName, fmtNum(c.Ref, 1), c.Ratio, c.Need, res)
	}
	p("\nWhy a target fails (profiles, system calls per operation beside nginx and HAProxy, which misses are noise, and what design would close each gap): [`performance.md`](performance.md).\n")
	if len(r.Failed) > 0 {
		p("\n## Failures\n\n")
		for _, f := range r.Failed {
			p("- %s\n", clip(strings.Join(strings.Fields(f), " "), 400))
		}
	}
	p("\n## How to run\n\n```\nbench/run.sh                          # full run: writes docs/benchmarks.md and docs/benchmarks.json\n")
	p("bench/run.sh --quick --out /tmp/b     # ≈1–2 min smoke run (CI); figures not for publishing\n")
	p("bench/run.sh --repeats 3 --only wsgate,nginx,ws-128   # a subset: targets and/or workloads\n")
	p("bench/run.sh --rev HEAD                # wsgate as committed, not the working tree\n")
	p("bench/run.sh --base HEAD --only wsgate,wsgate-base,ws-128   # A/B: the working tree against a commit, in one run\n")
	p("KEEP_BENCH_TMP=1 bench/run.sh --quick  # keep the generated configs and logs\n```\n\n")
	p("`run.sh` installs `nginx haproxy caddy wrk` (Debian packages) when missing and it runs as root, builds wsgate, `bench/backend` and `bench/wsload`, raises `ulimit -n`, runs `bench/suite` (flags: `go run ./bench/suite -h`), and kills every process it started on exit; when something fails it keeps the configs and logs and says where. The proxies run as the current user from generated configs in a temp dir; their system services and default configs are never used.\n")
	return b.String()
}

func (r *report) targetsText() string {
	var b strings.Builder
	b.WriteString("Targets (issue 3 §2):\n")
	for _, c := range r.Checks {
		if c.Missing != "" {
			fmt.Fprintf(&b, "  n/a   %-55s %s\n", c.Figure, c.Missing)
			continue
		}
		res := "FAIL"
		if c.Pass {
			res = "pass"
		}
		fmt.Fprintf(&b, "  %-5s %-55s wsgate %s vs %s %s: ratio %.2f (need %s)\n", res, c.Figure, fmtNum(c.Wsgate, 1), c.RefName, fmtNum(c.Ref, 1), c.Ratio, c.Need)
	}
	return b.String()
}

func writeReport(r *report, mdPath, jsonPath string) error {
	if err := os.WriteFile(mdPath, []byte(r.markdown()), 0o644); err != nil {
		return err
	}
	j, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(jsonPath, append(j, '\n'), 0o644)
}

// renderFromJSON rewrites the markdown from a benchmarks.json (after a
// change of wording, without measuring again).
func renderFromJSON(jsonPath, mdPath string) error {
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		return err
	}
	var r report
	if err := json.Unmarshal(b, &r); err != nil {
		return err
	}
	return os.WriteFile(mdPath, []byte(r.markdown()), 0o644)
}
