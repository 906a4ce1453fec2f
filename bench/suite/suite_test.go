//go:build linux

package main

import (
	"math"
	"testing"
)

const wrkOut = `Running 2s test @ http://127.0.0.1:40000/small
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.91ms    9.12ms  85.30ms   95.00%
    Req/Sec     8.04k     1.20k    9.10k    80.00%
  Latency Distribution
     50%    1.20ms
     75%    1.40ms
     90%  850.00us
     99%   85.30ms
  16074 requests in 2.01s, 1.96MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   7993.04
Transfer/sec:      0.98GB
`

func TestParseWrk(t *testing.T) {
	r, err := parseWrk(wrkOut)
	if err != nil {
		t.Fatal(err)
	}
	near := func(name string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 1e-6*math.Max(1, math.Abs(want)) {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	near("requests", r.Requests, 16074)
	near("seconds", r.Seconds, 2.01)
	near("rps", r.RPS, 7993.04)
	near("p50", r.P50, 1200)
	near("p99", r.P99, 85300)
	near("transfer", r.TransferMiB, 0.98*1024)
	if r.SocketErrs != 3 || r.Non2xx != 4 {
		t.Errorf("errors %d/%d, want 3/4", r.SocketErrs, r.Non2xx)
	}
	if _, err := parseWrk("garbage"); err == nil {
		t.Error("parseWrk accepted garbage")
	}
}

func TestParseStat(t *testing.T) {
	// comm with a space and a parenthesis, as /proc allows.
	f, err := parseStat([]byte("1234 (my (proc) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0 100 0 0\n"))
	if err != nil {
		t.Fatal(err)
	}
	if f[1] != "1" || f[11] != "250" || f[12] != "75" {
		t.Fatalf("ppid %s utime %s stime %s", f[1], f[11], f[12])
	}
	if got := parseVmRSS([]byte("Name:\tx\nVmRSS:\t   12345 kB\n")); got != 12345 {
		t.Fatalf("VmRSS %d", got)
	}
}

func TestSummaryAndChecks(t *testing.T) {
	o := &options{targets: allTargets, workloads: []string{"ws-128"}}
	var ss []sample
	for r, v := range []float64{100, 110, 90} {
		for _, tg := range allTargets {
			k := map[string]float64{"wsgate": 2, "nginx": 1, "haproxy": 1.5, "caddy": 1, "direct": 3}[tg]
			ss = append(ss, sample{Target: tg, Workload: "ws-128", Repeat: r,
				Values: map[string]float64{"per_cpu": v * k, "p99_us": 1000 / k}})
		}
	}
	ss = append(ss, sample{Target: "caddy", Workload: "ws-128", Repeat: 3, Error: "boom", Values: map[string]float64{"per_cpu": 1e9}})
	rep := buildReport(o, &envInfo{Targets: allTargets, Workloads: o.workloads}, ss)
	st := rep.Summary["ws-128"]["per_cpu"]["wsgate"]
	if st.Median != 200 || st.N != 3 || math.Abs(st.Noise-0.2) > 1e-9 || st.Ratio != 2 {
		t.Fatalf("wsgate stat %+v", st)
	}
	if rep.Summary["ws-128"]["per_cpu"]["caddy"].Max != 110 {
		t.Fatal("a failed sample was counted")
	}
	var pass, p99 bool
	for _, c := range rep.Checks {
		switch c.Figure {
		case "WebSocket echo 128 B, messages per proxy CPU-second":
			pass = c.Pass
		case "WebSocket echo 128 B p99 at 64 connections":
			p99 = c.Pass && c.RefName == "haproxy"
		}
	}
	if !pass || !p99 {
		t.Fatalf("checks %+v", rep.Checks)
	}
	if len(rep.Failed) != 1 {
		t.Fatalf("failures %v", rep.Failed)
	}
	_ = rep.markdown()
}

func TestRotate(t *testing.T) {
	got := rotate([]string{"a", "b", "c"}, 4)
	if got[0] != "b" || got[1] != "c" || got[2] != "a" {
		t.Fatal(got)
	}
}
