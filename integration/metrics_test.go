package integration

import (
	"bytes"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// /metrics of the real binary, parsed by Prometheus's own text parser.

// metFamilies is one scrape: the metric families by name.
type metFamilies map[string]*dto.MetricFamily

// metScrape scrapes /metrics through a and parses the answer as
// Prometheus parses the text format. Duplicate series fail the test.
func metScrape(t *testing.T, a *admAPI) metFamilies {
	t.Helper()
	status, hdr, body := a.send(t, http.MethodGet, "/metrics", nil, a.auth(),
		map[string]string{"Accept": "text/plain; version=0.0.4"})
	if status != http.StatusOK {
		t.Fatalf("GET /metrics: status %d, body %.300q", status, body)
	}
	if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") || !strings.Contains(ct, "version=0.0.4") {
		t.Fatalf("GET /metrics: Content-Type %q, want the text format 0.0.4", ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	for name, f := range fams {
		seen := map[string]bool{}
		for _, m := range f.GetMetric() {
			k := metLabelString(m)
			if seen[k] {
				t.Errorf("/metrics: %s%s appears twice", name, k)
			}
			seen[k] = true
		}
	}
	return fams
}

// metLabelString returns the labels of m as {a="1",b="2"}, sorted.
func metLabelString(m *dto.Metric) string {
	var kv []string
	for _, l := range m.GetLabel() {
		kv = append(kv, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
	}
	slices.Sort(kv)
	return "{" + strings.Join(kv, ",") + "}"
}

// metLabels builds a label set from name, value pairs.
func metLabels(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// metRoute returns metLabels for the series of one route and upstream,
// with more labels given as kv.
func metRoute(route, upstream string) func(kv ...string) map[string]string {
	return func(kv ...string) map[string]string {
		return metLabels(append([]string{"route", route, "upstream", upstream}, kv...)...)
	}
}

// value returns the sum over the series of name that have every label in
// labels (a histogram counts its observations), and how many there are.
func (f metFamilies) value(name string, labels map[string]string) (float64, int) {
	fam := f[name]
	if fam == nil {
		return 0, 0
	}
	var sum float64
	n := 0
	for _, m := range fam.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range labels {
			if hv, ok := have[k]; !ok || hv != v {
				match = false
				break
			}
		}
		if !match {
			continue
		}
		n++
		switch fam.GetType() {
		case dto.MetricType_COUNTER:
			sum += m.GetCounter().GetValue()
		case dto.MetricType_GAUGE:
			sum += m.GetGauge().GetValue()
		case dto.MetricType_HISTOGRAM:
			sum += float64(m.GetHistogram().GetSampleCount())
		default:
			sum += m.GetUntyped().GetValue()
		}
	}
	return sum, n
}

// metWant is a value a series (or the sum of several) must reach.
type metWant struct {
	name   string
	labels map[string]string
	want   float64
}

// metWait scrapes until every want holds exactly, and returns the last
// scrape. Counters only grow: one that went past its value fails too.
func metWait(t *testing.T, a *admAPI, what string, wants ...metWant) metFamilies {
	t.Helper()
	var fams metFamilies
	admPoll(t, what, func() string {
		fams = metScrape(t, a)
		var off []string
		for _, w := range wants {
			if got, n := fams.value(w.name, w.labels); n == 0 || got != w.want {
				off = append(off, fmt.Sprintf("%s%v = %v (%d series), want %v", w.name, w.labels, got, n, w.want))
			}
		}
		return strings.Join(off, "; ")
	})
	return fams
}

// TestMetrics scrapes /metrics between the steps of a session's life and
// around refused handshakes, failed requests and a reload: the WebSocket
// counters grow by exactly what was sent while the session is open; the
// session gauge, ended sessions by close code and closer, handshakes,
// refusals by status, requests by status class and upstream errors by
// kind are counted; the Go and process collectors are there; and the
// label values of every wsgate_ series are config names, target URLs or
// fixed words, never a request path or a client address.
func TestMetrics(t *testing.T) {
	needBinary(t)
	echo := newWSBackend().start(t)
	down := closedAddr(t)
	deny := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "forbidden", http.StatusForbidden)
	}))
	g, _, a := admStart(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  echo: {targets: ["http://%s"]}
  down: {targets: ["http://%s"], retries: 0}
  deny: {targets: ["http://%s"]}
routes:
  - name: live
    match: {path_prefix: /live}
    upstream: echo
  - name: down-http
    match: {path_prefix: /down-http}
    upstream: down
  - name: down-ws
    match: {path_prefix: /down-ws}
    upstream: down
  - name: forbid
    match: {path_prefix: /forbid}
    upstream: deny
admin: {addr: 127.0.0.1:0, token: "${%s}"}
`, echo, down, deny, admTokenEnv))
	// Every request path carries this: no label value may.
	const pathMark = "mpath-5c1d"
	hc := httpClient()

	fams := metScrape(t, a)
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if v, n := fams.value(name, nil); n != 1 || v <= 0 {
			t.Errorf("%s = %v (%d series), want one positive value", name, v, n)
		}
	}
	if v, n := fams.value("wsgate_config_reloads_total", metLabels("result", "ok")); n != 1 || v != 0 {
		t.Errorf("wsgate_config_reloads_total{result=ok} = %v (%d series) at start, want 0", v, n)
	}
	for _, tc := range []struct {
		name string
		typ  dto.MetricType
		// lazy families have no series until something happened.
		lazy bool
	}{
		{"wsgate_http_requests_total", dto.MetricType_COUNTER, true},
		{"wsgate_http_request_duration_seconds", dto.MetricType_HISTOGRAM, false},
		{"wsgate_http_retries_total", dto.MetricType_COUNTER, false},
		{"wsgate_http_client_closed_requests_total", dto.MetricType_COUNTER, false},
		{"wsgate_upstream_errors_total", dto.MetricType_COUNTER, false},
		{"wsgate_websocket_sessions", dto.MetricType_GAUGE, false},
		{"wsgate_websocket_sessions_opened_total", dto.MetricType_COUNTER, false},
		{"wsgate_websocket_sessions_ended_total", dto.MetricType_COUNTER, true},
		{"wsgate_websocket_messages_total", dto.MetricType_COUNTER, false},
		{"wsgate_websocket_bytes_total", dto.MetricType_COUNTER, false},
		{"wsgate_websocket_message_size_bytes", dto.MetricType_HISTOGRAM, false},
		{"wsgate_websocket_session_duration_seconds", dto.MetricType_HISTOGRAM, false},
		{"wsgate_websocket_handshakes_total", dto.MetricType_COUNTER, true},
		{"wsgate_websocket_handshake_duration_seconds", dto.MetricType_HISTOGRAM, true},
		{"wsgate_websocket_handshake_refusals_total", dto.MetricType_COUNTER, true},
		{"wsgate_websocket_parked_legs", dto.MetricType_GAUGE, false},
		{"wsgate_websocket_poller_handoffs_total", dto.MetricType_COUNTER, false},
		{"wsgate_upstream_target_healthy", dto.MetricType_GAUGE, false},
		{"wsgate_upstream_target_ejections_total", dto.MetricType_COUNTER, false},
		{"wsgate_upstream_target_sessions", dto.MetricType_GAUGE, false},
		{"wsgate_upstream_target_in_flight", dto.MetricType_GAUGE, false},
		{"wsgate_config_reloads_total", dto.MetricType_COUNTER, false},
	} {
		f := fams[tc.name]
		switch {
		case f == nil && !tc.lazy:
			t.Errorf("%s missing at start", tc.name)
		case f != nil && f.GetType() != tc.typ:
			t.Errorf("%s is a %v, want a %v", tc.name, f.GetType(), tc.typ)
		}
	}
	for _, target := range []string{echo, down, deny} {
		if v, n := fams.value("wsgate_upstream_target_healthy", metLabels("target", "http://"+target)); n != 1 || v != 1 {
			t.Errorf("wsgate_upstream_target_healthy{target=http://%s} = %v (%d series), want 1", target, v, n)
		}
	}

	t.Log("a plain HTTP request")
	if resp, body := get(t, hc, "http://"+g.Addr+"/live/"+pathMark+"/http?q=1", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /live/...: %d %.200q", resp.StatusCode, body)
	}
	metWait(t, a, "the request counted",
		metWant{"wsgate_http_requests_total", metLabels("route", "live", "method", "GET", "status_class", "2xx"), 1},
		metWant{"wsgate_http_requests_total", metLabels("route", "live"), 1},
		metWant{"wsgate_http_request_duration_seconds", metLabels("route", "live"), 1},
	)

	t.Log("one long-lived session")
	c := dialWS(t, nil, "ws://"+g.Addr+"/live/"+pathMark+"/ws", nil)
	clientAddr := c.LocalAddr().String()
	live := metLabels("route", "live", "upstream", "echo")
	// No scrape until the session relays: a scrape while the process's
	// first session starts races in wsgate (see
	// TestMetricsScrapeDuringFirstSession). The echo counts as round 0.
	echoOnce(t, c, websocket.TextMessage, []byte("warm"))
	msgs, nbytes := 1.0, 4.0
	metWait(t, a, "the session opened",
		metWant{"wsgate_websocket_sessions", live, 1},
		metWant{"wsgate_websocket_sessions_opened_total", live, 1},
		metWant{"wsgate_websocket_handshakes_total", metLabels("route", "live"), 1},
		metWant{"wsgate_websocket_handshake_duration_seconds", metLabels("route", "live"), 1},
		metWant{"wsgate_http_requests_total", metLabels("route", "live", "method", "GET", "status_class", "1xx"), 1},
		metWant{"wsgate_upstream_target_sessions", metLabels("upstream", "echo", "target", "http://"+echo), 1},
		metWant{"wsgate_websocket_messages_total", metLabels("route", "live", "direction", "from_client"), msgs},
		metWant{"wsgate_websocket_bytes_total", metLabels("route", "live", "direction", "from_client"), nbytes},
	)
	rounds := []struct {
		name string
		mt   int
		msgs [][]byte
	}{
		{"small text", websocket.TextMessage, [][]byte{[]byte("a"), []byte("0123456789"), bytes.Repeat([]byte("t"), 100)}},
		{"one large binary", websocket.BinaryMessage, [][]byte{bytes.Repeat([]byte{0x5a}, 70_000)}},
		{"many", websocket.TextMessage, [][]byte{[]byte("1"), []byte("22"), []byte("333"), []byte("4444"), []byte("55555")}},
	}
	for _, r := range rounds {
		for _, m := range r.msgs {
			echoOnce(t, c, r.mt, m)
			msgs++
			nbytes += float64(len(m))
		}
		// The session is still open: its traffic is counted live.
		from := func(dir string) map[string]string {
			return metLabels("route", "live", "upstream", "echo", "direction", dir)
		}
		metWait(t, a, "after round "+r.name,
			metWant{"wsgate_websocket_messages_total", from("from_client"), msgs},
			metWant{"wsgate_websocket_bytes_total", from("from_client"), nbytes},
			metWant{"wsgate_websocket_messages_total", from("from_backend"), msgs},
			metWant{"wsgate_websocket_bytes_total", from("from_backend"), nbytes},
			metWant{"wsgate_websocket_message_size_bytes", from("from_client"), msgs},
			metWant{"wsgate_websocket_sessions", live, 1},
			metWant{"wsgate_websocket_session_duration_seconds", live, 0},
		)
	}

	t.Log("the client closes")
	if err := c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "done"), time.Now().Add(ioTimeout)); err != nil {
		t.Fatal(err)
	}
	if ce := readClose(t, c); ce.Code != websocket.CloseNormalClosure {
		t.Errorf("close reply %d %q, want 1000", ce.Code, ce.Text)
	}
	metWait(t, a, "the session ended",
		metWant{"wsgate_websocket_sessions", live, 0},
		metWant{"wsgate_websocket_sessions_ended_total", metLabels("route", "live", "upstream", "echo", "code", "1000", "closed_by", "client"), 1},
		metWant{"wsgate_websocket_sessions_ended_total", live, 1},
		metWant{"wsgate_websocket_session_duration_seconds", live, 1},
		metWant{"wsgate_upstream_target_sessions", metLabels("upstream", "echo", "target", "http://"+echo), 0},
		metWant{"wsgate_websocket_messages_total", metLabels("route", "live", "direction", "from_client"), msgs},
	)

	t.Log("refused handshakes")
	for _, tc := range []struct{ route, path, status string }{
		{"down-ws", "/down-ws/" + pathMark, "502"},
		{"forbid", "/forbid/" + pathMark, "403"},
	} {
		d := &websocket.Dialer{HandshakeTimeout: ioTimeout}
		wc, resp, err := d.Dial("ws://"+g.Addr+tc.path, nil)
		if err == nil {
			wc.Close()
			t.Fatalf("dial %s: upgraded, want %s", tc.path, tc.status)
		}
		if resp == nil || strconv.Itoa(resp.StatusCode) != tc.status {
			t.Fatalf("dial %s: %v (response %v), want status %s", tc.path, err, resp, tc.status)
		}
		metWait(t, a, "the refusal on "+tc.route+" counted",
			metWant{"wsgate_websocket_handshake_refusals_total", metLabels("route", tc.route, "status", tc.status), 1},
			metWant{"wsgate_websocket_handshake_refusals_total", metLabels("route", tc.route), 1},
			metWant{"wsgate_websocket_handshakes_total", metLabels("route", tc.route), 0},
		)
	}

	t.Log("a request to a closed port")
	if resp, body := get(t, hc, "http://"+g.Addr+"/down-http/"+pathMark, nil); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("GET /down-http/...: %d %.200q, want 502", resp.StatusCode, body)
	}
	metWait(t, a, "the upstream error counted",
		metWant{"wsgate_upstream_errors_total", metLabels("route", "down-http", "kind", "refused"), 1},
		metWant{"wsgate_upstream_errors_total", metLabels("route", "down-http"), 1},
		metWant{"wsgate_http_requests_total", metLabels("route", "down-http", "method", "GET", "status_class", "5xx"), 1},
	)

	t.Log("a reload")
	g.signal(syscall.SIGHUP)
	fams = metWait(t, a, "the reload counted",
		metWant{"wsgate_config_reloads_total", metLabels("result", "ok"), 1},
		metWant{"wsgate_config_reloads_total", metLabels("result", "failed"), 0},
	)

	// The label values: config names, target URLs and fixed words only.
	in := func(vals ...string) func(string) bool {
		return func(v string) bool { return slices.Contains(vals, v) }
	}
	number := func(lo, hi int) func(string) bool {
		return func(v string) bool {
			n, err := strconv.Atoi(v)
			return err == nil && strconv.Itoa(n) == v && n >= lo && n <= hi
		}
	}
	allowed := map[string]func(string) bool{
		"route":        in("", "live", "down-http", "down-ws", "forbid"),
		"upstream":     in("echo", "down", "deny"),
		"target":       in("http://"+echo, "http://"+down, "http://"+deny),
		"direction":    in("from_client", "from_backend"),
		"kind":         in("unavailable", "refused", "timeout", "reset", "bad_response"),
		"method":       in("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"),
		"status_class": in("1xx", "2xx", "3xx", "4xx", "5xx"),
		"code":         number(1000, 4999),
		"closed_by":    in("client", "backend", "wsgate"),
		"result":       in("ok", "failed"),
		"status":       number(100, 599),
		"side":         in("client", "backend"),
		"reason":       in("jwt_missing", "jwt_invalid", "jwt_expired", "forward_denied", "forward_unavailable"),
	}
	names := slices.Sorted(maps.Keys(fams))
	audited := 0
	for _, name := range names {
		if !strings.HasPrefix(name, "wsgate_") {
			continue
		}
		for _, m := range fams[name].GetMetric() {
			audited++
			for _, l := range m.GetLabel() {
				v := l.GetValue()
				ok := allowed[l.GetName()]
				switch {
				case ok == nil:
					t.Errorf("%s%s: unexpected label %q", name, metLabelString(m), l.GetName())
				case !ok(v):
					t.Errorf("%s%s: label %s=%q is not a config name, target or fixed word", name, metLabelString(m), l.GetName(), v)
				case strings.Contains(v, pathMark), strings.Contains(v, clientAddr):
					t.Errorf("%s%s: label %s=%q carries a request path or a client address", name, metLabelString(m), l.GetName(), v)
				}
			}
		}
	}
	if audited < 50 {
		t.Errorf("audited only %d wsgate_ series", audited)
	}
}

// TestMetricsScrapeDuringFirstSession scrapes /metrics without pause
// while the first WebSocket session of a fresh process starts: the race
// detector in the wsgate binary must find nothing. Each process has one
// chance (the pollers start with its first session); three processes
// found the race below nearly every time.
func TestMetricsScrapeDuringFirstSession(t *testing.T) {
	needBinary(t)
	if !raceEnabled {
		t.Skip("needs -race: the race detector in wsgate is the check")
	}
	backend := newWSBackend()
	cfg := admEchoConfig(backend.start(t), []string{"chat"}, "timeouts: {drain: 1s}\n")
	for i := range 3 {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			g, _, a := admStart(t, cfg)
			stop := make(chan struct{})
			done := make(chan struct{})
			go func() {
				defer close(done)
				c := httpClient()
				for range 10000 {
					select {
					case <-stop:
						return
					default:
					}
					req, _ := http.NewRequest(http.MethodGet, a.base+"/metrics", nil)
					req.Header.Set("Authorization", a.auth())
					resp, err := c.Do(req)
					if err != nil {
						return
					}
					resp.Body.Close()
				}
			}()
			c := dialWS(t, nil, "ws://"+g.Addr+"/chat/first", nil)
			echoOnce(t, c, websocket.TextMessage, []byte("first"))
			close(stop)
			<-done
			c.Close() // nobody would answer the drain's close
			// A race makes the exit code 66, and g's cleanup reports it.
			if code := g.stop(); code != 0 {
				t.Errorf("exit code %d, want 0", code)
			}
		})
	}
}
