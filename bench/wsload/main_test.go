package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// target is a minimal stand-in for bench/backend (a main package, which a
// test cannot import): a WebSocket echo, a broken echo and an SSE stream.
type target struct {
	addr   string
	active atomic.Int64 // open WebSocket connections

	mu         sync.Mutex
	closeCodes []int // one per ended connection; guarded by mu
}

func startTarget(t testing.TB) *target {
	t.Helper()
	tg := &target{}
	up := websocket.Upgrader{Subprotocols: []string{"echo"}, CheckOrigin: func(*http.Request) bool { return true }}
	plain := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	mux := http.NewServeMux()
	ws := func(up *websocket.Upgrader, trim int) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			c, err := up.Upgrade(w, r, nil)
			if err != nil {
				return
			}
			defer c.Close()
			tg.active.Add(1)
			defer tg.active.Add(-1)
			for {
				mt, msg, err := c.ReadMessage()
				if err != nil {
					code := -1
					if ce, ok := err.(*websocket.CloseError); ok {
						code = ce.Code
					}
					tg.mu.Lock()
					tg.closeCodes = append(tg.closeCodes, code)
					tg.mu.Unlock()
					return
				}
				if err := c.WriteMessage(mt, msg[:len(msg)-trim]); err != nil {
					return
				}
			}
		}
	}
	mux.HandleFunc("/ws", ws(&up, 0))
	mux.HandleFunc("/ws-plain", ws(&plain, 0)) // no subprotocols
	mux.HandleFunc("/ws-short", ws(&plain, 1)) // echoes one byte short
	mux.HandleFunc("/sse", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, ": comment\n\ndata: 0\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done() // like a long stream: the client must not wait for the end
	})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	tg.addr = ln.Addr().String()
	return tg
}

// waitFor polls cond until it holds or 5 s have passed.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func TestEcho(t *testing.T) {
	tg := startTarget(t)
	cfg := config{mode: "echo", url: "ws://" + tg.addr + "/ws", conns: 4, size: 128,
		duration: 300 * time.Millisecond, warmup: 50 * time.Millisecond, subprotocol: "echo"}
	res, err := runEcho(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.MsgsPerS <= 0 || res.RoundTrips <= 0 || res.Errors != 0 || res.Connected != 4 {
		t.Errorf("echo: %+v, want round trips, 4 connected and no errors", res)
	}
	if !(0 < res.P50US && res.P50US <= res.P90US && res.P90US <= res.P99US && res.P99US <= res.MaxUS) {
		t.Errorf("latencies p50 %v p90 %v p99 %v max %v, want 0 < p50 <= p90 <= p99 <= max",
			res.P50US, res.P90US, res.P99US, res.MaxUS)
	}
	if math.Abs(res.MsgsPerS*res.DurationS-float64(res.RoundTrips)) > 1 {
		t.Errorf("msgs_per_s %v x duration_s %v != round_trips %d", res.MsgsPerS, res.DurationS, res.RoundTrips)
	}
	waitFor(t, "the server to see 4 closes", func() bool {
		tg.mu.Lock()
		defer tg.mu.Unlock()
		return len(tg.closeCodes) == 4
	})
	tg.mu.Lock()
	defer tg.mu.Unlock()
	for _, code := range tg.closeCodes {
		if code != websocket.CloseNormalClosure {
			t.Errorf("close codes %v, want all 1000", tg.closeCodes)
			break
		}
	}
}

func TestEchoSizes(t *testing.T) {
	tg := startTarget(t)
	for _, size := range []int{1, 4096, 65536} {
		cfg := config{mode: "echo", url: "ws://" + tg.addr + "/ws", conns: 2, size: size, duration: 50 * time.Millisecond}
		res, err := runEcho(context.Background(), cfg)
		if err != nil || res.RoundTrips == 0 || res.Errors != 0 {
			t.Errorf("size %d: %+v, %v; want round trips and no errors", size, res, err)
		}
	}
}

func TestEchoErrors(t *testing.T) {
	tg := startTarget(t)
	for _, tc := range []struct {
		name, path, subprotocol, want string
		conns                         int
	}{
		{"short echo", "/ws-short", "", "echo has 127 bytes, want 128", 3},
		{"subprotocol not agreed", "/ws-plain", "echo", `subprotocol "echo" not agreed`, 2},
		{"refused", "/nope", "", "bad handshake", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config{mode: "echo", url: "ws://" + tg.addr + tc.path, conns: tc.conns, size: 128,
				duration: 50 * time.Millisecond, subprotocol: tc.subprotocol}
			res, _ := runEcho(context.Background(), cfg)
			if res.Errors != int64(tc.conns) || !strings.Contains(res.FirstError, tc.want) {
				t.Errorf("errors %d, first %q; want %d, containing %q", res.Errors, res.FirstError, tc.conns, tc.want)
			}
		})
	}
}

func TestIdle(t *testing.T) {
	tg := startTarget(t)
	cfg := config{mode: "idle", url: "ws://" + tg.addr + "/ws", n: 20, hold: 50 * time.Millisecond}
	readyCalls := 0
	ready := func() error {
		readyCalls++
		// The server counts a connection just after its 101 is written, a
		// moment after our dial has returned.
		waitFor(t, "20 open connections at ready", func() bool { return tg.active.Load() == 20 })
		return nil
	}
	res, err := runIdle(context.Background(), cfg, ready)
	if err != nil {
		t.Fatal(err)
	}
	if res.Opened != 20 || res.Failed != 0 || res.Dropped != 0 || readyCalls != 1 || res.OpenS <= 0 || res.HoldS < 0.05 {
		t.Errorf("idle: %+v, ready called %d times; want 20 opened, none failed or dropped, one ready, held 50ms", res, readyCalls)
	}
	waitFor(t, "all connections closed", func() bool { return tg.active.Load() == 0 })
	tg.mu.Lock()
	defer tg.mu.Unlock()
	if len(tg.closeCodes) != 20 || slices.ContainsFunc(tg.closeCodes, func(c int) bool { return c != 1000 }) {
		t.Errorf("server saw close codes %v, want 20 times 1000", tg.closeCodes)
	}
}

func TestIdleFailures(t *testing.T) {
	tg := startTarget(t)
	cfg := config{mode: "idle", url: "ws://" + tg.addr + "/nope", n: 3}
	res, err := runIdle(context.Background(), cfg, func() error { t.Error("ready called with no connection open"); return nil })
	if err == nil || res.Opened != 0 || res.Failed != 3 {
		t.Errorf("idle to a 404: %+v, %v; want 3 failed and an error", res, err)
	}
}

func TestSSE(t *testing.T) {
	tg := startTarget(t)
	res, err := runSSE(context.Background(), config{mode: "sse", url: "http://" + tg.addr + "/sse", count: 5})
	if err != nil {
		t.Fatal(err)
	}
	if res.Count != 5 || res.Errors != 0 || res.P50US <= 0 || res.P99US < res.P50US || res.MeanUS <= 0 {
		t.Errorf("sse: %+v, want 5 requests, no errors, 0 < p50 <= p99", res)
	}
	res, err = runSSE(context.Background(), config{mode: "sse", url: "http://" + tg.addr + "/nope", count: 2})
	if err == nil || res.Errors != 2 || !strings.Contains(res.FirstError, "404") {
		t.Errorf("sse to a 404: %+v, %v; want 2 errors naming the status", res, err)
	}
}

// TestRunJSON runs the CLI in-process and checks the JSON fields the
// orchestrator reads.
func TestRunJSON(t *testing.T) {
	tg := startTarget(t)
	ready := filepath.Join(t.TempDir(), "ready")
	for _, tc := range []struct {
		name string
		args []string
		keys []string
	}{
		{"echo", []string{"-mode", "echo", "-url", "ws://" + tg.addr + "/ws", "-c", "2", "-size", "64", "-duration", "100ms", "-warmup", "0s", "-json"},
			[]string{"mode", "url", "connections", "size", "duration_s", "round_trips", "msgs_per_s", "p50_us", "p90_us", "p99_us", "max_us", "errors", "first_error"}},
		{"idle", []string{"-mode", "idle", "-url", "ws://" + tg.addr + "/ws", "-n", "5", "-hold", "10ms", "-ready-file", ready, "-json"},
			[]string{"mode", "opened", "failed", "open_s"}},
		{"sse", []string{"-mode", "sse", "-url", "http://" + tg.addr + "/sse?n=1&interval=0", "-count", "3", "-json"},
			[]string{"mode", "count", "p50_us", "p99_us", "mean_us", "errors"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(tc.args, &stdout, &stderr); code != 0 {
				t.Fatalf("exit %d, stderr:\n%s", code, stderr.String())
			}
			if n := strings.Count(stdout.String(), "\n"); n != 1 {
				t.Errorf("stdout has %d lines, want 1 JSON line:\n%s", n, stdout.String())
			}
			var m map[string]any
			if err := json.Unmarshal(stdout.Bytes(), &m); err != nil {
				t.Fatalf("stdout %q: %v", stdout.String(), err)
			}
			for _, k := range tc.keys {
				if _, ok := m[k]; !ok {
					t.Errorf("JSON has no %q: %s", k, stdout.String())
				}
			}
			if m["mode"] != tc.name || m["errors"] != nil && m["errors"] != 0.0 {
				t.Errorf("JSON %s, want mode %q and no errors", stdout.String(), tc.name)
			}
		})
	}
	if b, err := os.ReadFile(ready); err != nil || string(b) != "ready\n" {
		t.Errorf("ready file %q, %v; want \"ready\\n\"", b, err)
	}
}

func TestParseFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string // error substring, "" for success
	}{
		{"echo", []string{"-mode", "echo", "-url", "ws://127.0.0.1:1/ws", "-c", "64", "-size", "128", "-duration", "10s", "-warmup", "1s", "-subprotocol", "echo", "-json"}, ""},
		{"idle", []string{"-mode", "idle", "-url", "ws://127.0.0.1:1/ws", "-n", "5000", "-hold", "5s", "-ready-file", "f", "-json"}, ""},
		{"sse", []string{"-mode", "sse", "-url", "http://127.0.0.1:1/sse?n=1&interval=0", "-count", "200", "-json"}, ""},
		{"no url", []string{"-mode", "echo"}, "-url is required"},
		{"bad mode", []string{"-mode", "x", "-url", "ws://h/"}, `-mode "x"`},
		{"sse wants http", []string{"-mode", "sse", "-url", "ws://h/"}, `unsupported scheme "ws"`},
		{"echo wants ws", []string{"-mode", "echo", "-url", "http://h/"}, `unsupported scheme "http"`},
		{"no conns", []string{"-url", "ws://h/", "-c", "0"}, "-c 0"},
		{"extra arg", []string{"-url", "ws://h/", "x"}, `unexpected argument "x"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseFlags(tc.args, io.Discard)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("parseFlags(%q) = %v, want %q", tc.args, err, tc.want)
			}
		})
	}
}

func TestHistogram(t *testing.T) {
	var h histogram
	for v := 1; v <= 100_000; v++ {
		h.record(time.Duration(v) * time.Microsecond)
	}
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		got, want := float64(h.quantile(q)), q*100_000*1000
		if math.Abs(got-want)/want > 0.01 {
			t.Errorf("quantile(%v) = %v, want %v within 1%%", q, time.Duration(got), time.Duration(want))
		}
	}
	if h.quantile(1) != 100*time.Millisecond || h.max != 100*time.Millisecond {
		t.Errorf("quantile(1) = %v, max %v, want 100ms", h.quantile(1), h.max)
	}
	// Buckets are contiguous and each value lies in its own bucket.
	for v := uint64(0); v < 1<<20; v += 1 + v/64 {
		i := histIndex(v)
		if i != histIndex(histValue(i)) || i < histIndex(v-min(v, 1)) {
			t.Fatalf("histIndex(%d) = %d, histValue %d", v, i, histValue(i))
		}
	}
	if i := histIndex(math.MaxUint64); i >= histBuckets {
		t.Errorf("histIndex(max) = %d, want < %d", i, histBuckets)
	}
	if n := testing.AllocsPerRun(100, func() { h.record(1234 * time.Microsecond) }); n != 0 {
		t.Errorf("record allocates %v times, want 0", n)
	}
}

// BenchmarkEchoRoundTrip measures the client side of one round trip against
// the in-process target. The allocations it reports are fasthttp/websocket's
// own (the per-message reader and writer objects), not wsload's.
func BenchmarkEchoRoundTrip(b *testing.B) {
	for _, size := range []int{128, 4096} {
		b.Run(strconv.Itoa(size), func(b *testing.B) {
			tg := startTarget(b)
			rb, wb := echoBufferSizes(size)
			c, err := dial(context.Background(), newDialer(rb, wb, "", nil), "ws://"+tg.addr+"/ws")
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			w := &echoWorker{conn: c, out: make([]byte, size), in: make([]byte, size)}
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for b.Loop() {
				if err := c.WriteMessage(websocket.BinaryMessage, w.out); err != nil {
					b.Fatal(err)
				}
				if err := w.readEcho(); err != nil {
					b.Fatal(err)
				}
				w.hist.record(time.Microsecond)
			}
		})
	}
}
