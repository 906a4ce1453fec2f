//go:build linux

// Command suite runs wsgate's benchmark suite (issue 3): wsgate, nginx,
// HAProxy, Caddy and direct, each in front of the same backend, in one run,
// and writes benchmarks.md and benchmarks.json. bench/run.sh builds and
// starts it; see docs/benchmarks.md.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

type options struct {
	quick      bool
	repeats    int
	targets    []string
	workloads  []string
	out        string
	bin        string
	work       string
	duration   time.Duration
	warmup     time.Duration
	idleN      int
	idleHold   time.Duration
	idleSettle time.Duration
	sseCount   int
	quietWait  time.Duration
	proxyCPU   string
	loadCPU    string
	nofile     int
	notes      []string
}

func main() {
	os.Exit(run())
}

func run() int {
	o := &options{}
	var only string
	var repeats, idleN, sseCount int
	var dur, warm, hold time.Duration
	flag.BoolVar(&o.quick, "quick", false, "quick mode: 1 repeat, short loads, N=500 idle; figures not for publishing")
	flag.IntVar(&repeats, "repeats", 0, "repeats per figure (default 5, quick 1)")
	flag.StringVar(&only, "only", "", "comma-separated targets (wsgate,nginx,haproxy,caddy,direct) and/or workloads (idle,sse,http-small,http-1mib,ws-128,ws-128-text,ws-64k)")
	flag.StringVar(&o.out, "out", "", "directory for benchmarks.md and benchmarks.json (default docs/, or a new temp dir in quick mode)")
	flag.StringVar(&o.bin, "bin", "", "directory holding the built wsgate, backend and wsload (required)")
	flag.StringVar(&o.work, "work", "", "scratch directory for configs, logs and pid files (default a new temp dir)")
	flag.StringVar(&pgidFile, "pgid-file", "", "append the process group id of every started process to this file")
	flag.DurationVar(&dur, "duration", 0, "length of each measured load window (default 8s, quick 2s)")
	flag.DurationVar(&warm, "warmup", -1, "unmeasured warm-up before each throughput load (default 1s, quick 0.5s)")
	flag.IntVar(&idleN, "idle-n", 0, "idle WebSocket connections (default 5000, quick 500)")
	flag.DurationVar(&hold, "idle-hold", 0, "how long wsload holds the idle connections (default 3s, quick 1.5s)")
	flag.IntVar(&sseCount, "sse-count", 0, "SSE requests (default 200, quick 50)")
	flag.StringVar(&o.proxyCPU, "proxy-cpu", "1", "CPU list for the proxies (taskset -c)")
	flag.StringVar(&o.loadCPU, "load-cpu", "0", "CPU list for the backend and load generators (taskset -c)")
	qw := flag.Duration("quiet-wait", -1, "before each load, wait up to this long for other processes to leave the CPUs idle (default 60s, quick 0)")
	var deadline time.Duration
	flag.DurationVar(&deadline, "deadline", 0, "give up (killing everything, exit 1) after this long (default: 3× the planned run time)")
	render := flag.Bool("render", false, "measure nothing: rewrite benchmarks.md in -out (default docs/) from the benchmarks.json there")
	flag.Parse()
	if *render {
		dir := o.out
		if dir == "" {
			dir = "docs"
		}
		if err := renderFromJSON(filepath.Join(dir, "benchmarks.json"), filepath.Join(dir, "benchmarks.md")); err != nil {
			fmt.Fprintln(os.Stderr, "suite:", err)
			return 1
		}
		return 0
	}

	o.repeats, o.duration, o.warmup, o.idleN, o.idleHold, o.sseCount = 5, 8*time.Second, time.Second, 5000, 3*time.Second, 200
	o.idleSettle = 500 * time.Millisecond
	if o.quick {
		o.repeats, o.duration, o.warmup, o.idleN, o.idleHold, o.sseCount = 1, 2*time.Second, 500*time.Millisecond, 500, 1500*time.Millisecond, 50
		o.idleSettle = 300 * time.Millisecond
	}
	o.quietWait = 60 * time.Second
	if o.quick {
		o.quietWait = 0
	}
	if *qw >= 0 {
		o.quietWait = *qw
	}
	if repeats > 0 {
		o.repeats = repeats
	}
	if dur > 0 {
		o.duration = dur
	}
	if warm >= 0 {
		o.warmup = warm
	}
	if idleN > 0 {
		o.idleN = idleN
	}
	if hold > 0 {
		o.idleHold = hold
	}
	if sseCount > 0 {
		o.sseCount = sseCount
	}
	if o.idleHold <= o.idleSettle {
		o.idleHold = o.idleSettle + time.Second
	}
	if o.bin == "" {
		fmt.Fprintln(os.Stderr, "suite: -bin is required (bench/run.sh sets it)")
		return 2
	}
	o.targets, o.workloads = allTargets, nil
	for _, w := range workloads {
		o.workloads = append(o.workloads, w.ID)
	}
	if only != "" {
		var ts, ws []string
		for _, x := range strings.Split(only, ",") {
			x = strings.TrimSpace(strings.ToLower(x))
			switch {
			case x == "":
			case contains(allTargets, x), x == baseTarget:
				ts = append(ts, x)
			case workloadByID(x) != nil:
				ws = append(ws, x)
			default:
				fmt.Fprintf(os.Stderr, "suite: -only: %q is neither a target (%s) nor a workload\n", x, strings.Join(allTargets, ","))
				return 2
			}
		}
		if len(ts) > 0 {
			o.targets = ts
		}
		if len(ws) > 0 {
			o.workloads = ws
		}
	}
	ownWork := false
	if o.work == "" {
		d, err := os.MkdirTemp("", "wsgate-bench-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "suite:", err)
			return 1
		}
		o.work, ownWork = d, true
	}
	if o.out == "" {
		if o.quick {
			d, err := os.MkdirTemp("", "wsgate-bench-quick-")
			if err != nil {
				fmt.Fprintln(os.Stderr, "suite:", err)
				return 1
			}
			o.out = d
		} else {
			o.out = "docs"
		}
	}
	initClockTick()

	// Kill whatever we started on the way out, however we leave.
	defer killAll()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sig
		fmt.Fprintf(os.Stderr, "suite: %v: stopping everything\n", s)
		killAll()
		os.Exit(130)
	}()

	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil {
		o.nofile = int(rl.Cur)
		need := 2*o.idleN + 200
		if rl.Cur < 65536 {
			o.notes = append(o.notes, fmt.Sprintf("open-file limit: soft %d, hard %d (65536 wanted; run.sh raises the soft limit to the hard one). "+
				"nginx worker_rlimit_nofile/worker_connections and HAProxy maxconn were sized to it (HAProxy maxconn %d).",
				rl.Cur, rl.Max, min(20000, (o.nofile-200)/2)))
		}
		if o.nofile < need {
			fmt.Fprintf(os.Stderr, "suite: open-file limit %d is below the %d the idle workload needs (2×%d+200); lower -idle-n or raise the hard limit\n", o.nofile, need, o.idleN)
			return 1
		}
	}
	if onlineCPUs() < 2 {
		o.notes = append(o.notes, "fewer than 2 CPUs: proxies and load share one CPU, figures are not comparable with a 2-core run")
		o.proxyCPU, o.loadCPU = "0", "0"
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "suite:", err)
		return 1
	}

	// The whole run is bounded too: every load has its own deadline, this
	// catches anything else that could hang.
	if deadline <= 0 {
		perTarget := 6*o.duration + 4*o.warmup + o.idleHold + 20*time.Second + 6*o.quietWait
		deadline = 3*time.Duration(o.repeats*len(o.targets))*perTarget + 2*time.Minute
	}
	time.AfterFunc(deadline, func() {
		fmt.Fprintf(os.Stderr, "suite: the run did not finish within -deadline %v; killing everything\n", deadline)
		killAll()
		os.Exit(1)
	})

	env := collectEnv(o)
	fmt.Printf("suite: %d repeat(s) × targets %s × workloads %s; load %v (+%v warm-up); idle N=%d; work dir %s\n",
		o.repeats, strings.Join(o.targets, ","), strings.Join(o.workloads, ","), o.duration, o.warmup, o.idleN, o.work)
	start := time.Now()
	var samples []sample
	failures := 0
	for r := 0; r < o.repeats; r++ {
		order := rotate(o.targets, r)
		fmt.Printf("suite: repeat %d/%d, order %s\n", r+1, o.repeats, strings.Join(order, " → "))
		for pos, t := range order {
			ss, nfail := runTarget(o, t, r, pos)
			samples = append(samples, ss...)
			failures += nfail
		}
	}
	env.Elapsed = time.Since(start).Round(time.Second).String()
	env.LoadAvgAfter = loadavg()
	rep := buildReport(o, env, samples)
	mdPath, jsonPath := filepath.Join(o.out, "benchmarks.md"), filepath.Join(o.out, "benchmarks.json")
	if err := writeReport(rep, mdPath, jsonPath); err != nil {
		fmt.Fprintln(os.Stderr, "suite: writing the report:", err)
		return 1
	}
	fmt.Printf("suite: done in %s; wrote %s and %s\n", env.Elapsed, mdPath, jsonPath)
	fmt.Print(rep.targetsText())
	if ownWork && failures == 0 {
		killAll()
		_ = os.RemoveAll(o.work)
	} else if ownWork {
		fmt.Fprintf(os.Stderr, "suite: logs and configs kept in %s\n", o.work)
	}
	if failures > 0 {
		fmt.Fprintf(os.Stderr, "suite: %d failure(s) (a target that did not start or a workload that errored); see above and %s\n", failures, mdPath)
		return 1
	}
	return 0
}

// runTarget starts a fresh backend and the target, runs every workload,
// and stops both. It returns the samples and the number of failures.
func runTarget(o *options, t string, r, pos int) ([]sample, int) {
	var out []sample
	fails := 0
	t0 := time.Now()
	s, err := startSession(o, t, r)
	if err != nil {
		fmt.Fprintf(os.Stderr, "suite: FAIL %s (repeat %d) did not start: %v\n%s", t, r+1, err, s.logs())
		s.stop()
		for _, w := range o.workloads {
			out = append(out, sample{Target: t, Workload: w, Repeat: r, Position: pos, Start: t0, Error: "start: " + err.Error()})
		}
		return out, 1
	}
	defer func() { s.stop() }()
	for _, wid := range o.workloads {
		w := workloadByID(wid)
		sm := sample{Target: t, Workload: wid, Repeat: r, Position: pos, Start: time.Now(), Values: map[string]float64{}}
		if s.measured().exited() {
			sm.Error = "process had exited before this workload"
			fails++
			out = append(out, sm)
			continue
		}
		var err error
		for try := 0; ; try++ {
			sm.QuietWaitS += quietWait(o.quietWait).Seconds()
			sm.Start = time.Now()
			err = w.run(o, s, &sm)
			if sm.WindowSeconds > 0 {
				sm.Values["other_cpu"] = sm.OtherCPUSeconds / sm.WindowSeconds
			}
			// A load that other processes disturbed (over 0.3 core) is run
			// again, up to twice, when waiting for quiet CPUs is enabled.
			if err != nil || o.quietWait <= 0 || try == 2 || sm.Values["other_cpu"] <= 0.3 || s.measured().exited() {
				break
			}
			fmt.Printf("  %-8s %-10s other processes used %.2f cores during the load; again\n", t, wid, sm.Values["other_cpu"])
			sm.Retries++
			sm.Values = map[string]float64{}
			if wid == "idle" {
				// Idle memory is measured from a fresh process: a second
				// run would find the first run's memory already mapped.
				s.stop()
				ns, serr := startSession(o, t, r)
				if serr != nil {
					s = ns
					err = fmt.Errorf("restart for a second idle run: %w", serr)
					break
				}
				s = ns
			}
		}
		if err == nil && s.measured().exited() {
			err = fmt.Errorf("%s exited during the workload", t)
		}
		if err != nil {
			sm.Error = err.Error()
			fails++
			fmt.Fprintf(os.Stderr, "suite: FAIL %s / %s (repeat %d): %v\n  command: %s\n%s", t, wid, r+1, err, sm.Command, s.logs())
		}
		fmt.Printf("  %-8s %-10s %s\n", t, wid, brief(w, &sm))
		out = append(out, sm)
	}
	return out, fails
}

func brief(w *workload, sm *sample) string {
	if sm.Error != "" {
		return "ERROR " + clip(sm.Error, 120)
	}
	var parts []string
	for _, m := range w.Metrics {
		if v, ok := sm.Values[m.Key]; ok {
			parts = append(parts, fmt.Sprintf("%s=%s", m.Key, fmtNum(v, m.Digits)))
		}
	}
	if sm.CPUOf != "" && sm.Workload != "idle" && sm.Workload != "sse" {
		parts = append(parts, fmt.Sprintf("cpu_s=%.2f(%s)", sm.CPUSeconds, sm.CPUOf))
	}
	if sm.QuietWaitS > 1 {
		parts = append(parts, fmt.Sprintf("(waited %.0fs for quiet CPUs)", sm.QuietWaitS))
	}
	return strings.Join(parts, " ")
}

// onlineCPUs counts the machine's CPUs; runtime.NumCPU would count only the
// suite's own affinity mask (run.sh pins it to CPU 0).
func onlineCPUs() int {
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return runtime.NumCPU()
	}
	n := 0
	for _, part := range strings.Split(strings.TrimSpace(string(b)), ",") {
		var lo, hi int
		if k, _ := fmt.Sscanf(part, "%d-%d", &lo, &hi); k == 2 {
			n += hi - lo + 1
		} else if k == 1 {
			n++
		}
	}
	if n == 0 {
		return runtime.NumCPU()
	}
	return n
}

func rotate(xs []string, r int) []string {
	n := len(xs)
	out := make([]string, n)
	for i := range xs {
		out[i] = xs[(i+r)%n]
	}
	return out
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}
