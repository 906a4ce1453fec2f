package observe

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/wsgate/wsgate/proxy"
	"github.com/wsgate/wsgate/upstream"
	"github.com/wsgate/wsgate/wsrelay"
)

// scrape serves h once and parses the answer with Prometheus's own text
// parser.
func scrape(t *testing.T, h http.Handler) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics = %d, want 200:\n%s", rec.Code, rec.Body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return mfs
}

// find returns the metric of family name whose labels include want.
func find(t *testing.T, mfs map[string]*dto.MetricFamily, name string, want map[string]string) *dto.Metric {
	t.Helper()
	mf := mfs[name]
	if mf == nil {
		t.Fatalf("no metric family %s", name)
	}
next:
	for _, m := range mf.Metric {
		have := map[string]string{}
		for _, lp := range m.Label {
			have[lp.GetName()] = lp.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		return m
	}
	t.Fatalf("no %s with labels %v", name, want)
	return nil
}

// TestCollector: what the sources hold comes out under the documented
// names, labels and types; histograms are cumulative with +Inf the total.
func TestCollector(t *testing.T) {
	httpStats := proxy.RouteStats{
		Route:             "api",
		Duration:          proxy.Histogram{Counts: make([]uint64, len(proxy.DurationBounds)+1), Sum: 1.5},
		HandshakeDuration: proxy.Histogram{Counts: make([]uint64, len(proxy.DurationBounds)+1)},
		Retries:           2,
		ClientGone:        1,
		Handshakes:        4,
		Refused:           map[int]int64{502: 3},
	}
	httpStats.Requests[0][1] = 7 // GET 2xx
	httpStats.UpstreamErrors[1] = 5
	httpStats.Duration.Counts[0] = 3
	httpStats.Duration.Counts[len(proxy.DurationBounds)] = 2 // above every bound
	sizes := make([]uint64, len(wsrelay.SizeBounds)+1)
	sizes[0], sizes[2] = 4, 1
	ws := wsrelay.RouteStats{
		Route: "chat", Upstream: "app", Open: 2, Opened: 9,
		FromClient:  wsrelay.FlowStats{Messages: 5, Bytes: 1200, Sizes: wsrelay.Histogram{Counts: sizes, Sum: 1200}},
		FromBackend: wsrelay.FlowStats{Messages: 1, Bytes: 3, Sizes: wsrelay.Histogram{Counts: make([]uint64, len(wsrelay.SizeBounds)+1)}},
		Ended:       map[wsrelay.EndKey]int64{{Code: 1000, By: "client"}: 6, {Code: 1006, By: "backend"}: 1},
		Durations:   wsrelay.Histogram{Counts: make([]uint64, len(wsrelay.DurationBounds)+1)},
	}
	expiry := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	h := Handler(Sources{
		HTTP:      func() []proxy.RouteStats { return []proxy.RouteStats{httpStats} },
		WebSocket: func() []wsrelay.RouteStats { return []wsrelay.RouteStats{ws} },
		Upstreams: func() []upstream.SetStatus {
			return []upstream.SetStatus{{Name: "app", Targets: []upstream.TargetStatus{
				{URL: "http://10.0.0.1:80", Healthy: true, Sessions: 2, InFlight: 1, Ejections: 3},
				{URL: "http://10.0.0.2:80"},
			}}}
		},
		Reloads:      func() (int64, int64) { return 3, 1 },
		Certificates: func() []Certificate { return []Certificate{{File: "a.pem", Subject: "a.example", NotAfter: expiry}} },
		Parked:       func() int { return 4 },
		HandOffs:     func() int64 { return 11 },
	})
	mfs := scrape(t, h)

	for _, c := range []struct {
		name   string
		labels map[string]string
		typ    dto.MetricType
		want   float64
	}{
		{"wsgate_http_requests_total", map[string]string{"route": "api", "method": "GET", "status_class": "2xx"}, dto.MetricType_COUNTER, 7},
		{"wsgate_upstream_errors_total", map[string]string{"route": "api", "kind": "refused"}, dto.MetricType_COUNTER, 5},
		{"wsgate_http_retries_total", map[string]string{"route": "api"}, dto.MetricType_COUNTER, 2},
		{"wsgate_http_client_closed_requests_total", map[string]string{"route": "api"}, dto.MetricType_COUNTER, 1},
		{"wsgate_websocket_handshakes_total", map[string]string{"route": "api"}, dto.MetricType_COUNTER, 4},
		{"wsgate_websocket_handshake_refusals_total", map[string]string{"route": "api", "status": "502"}, dto.MetricType_COUNTER, 3},
		{"wsgate_websocket_sessions", map[string]string{"route": "chat", "upstream": "app"}, dto.MetricType_GAUGE, 2},
		{"wsgate_websocket_sessions_opened_total", map[string]string{"route": "chat"}, dto.MetricType_COUNTER, 9},
		{"wsgate_websocket_sessions_ended_total", map[string]string{"route": "chat", "code": "1000", "closed_by": "client"}, dto.MetricType_COUNTER, 6},
		{"wsgate_websocket_sessions_ended_total", map[string]string{"route": "chat", "code": "1006", "closed_by": "backend"}, dto.MetricType_COUNTER, 1},
		{"wsgate_websocket_messages_total", map[string]string{"route": "chat", "direction": "from_client"}, dto.MetricType_COUNTER, 5},
		{"wsgate_websocket_bytes_total", map[string]string{"route": "chat", "direction": "from_client"}, dto.MetricType_COUNTER, 1200},
		{"wsgate_websocket_messages_total", map[string]string{"route": "chat", "direction": "from_backend"}, dto.MetricType_COUNTER, 1},
		{"wsgate_websocket_parked_legs", nil, dto.MetricType_GAUGE, 4},
		{"wsgate_websocket_poller_handoffs_total", nil, dto.MetricType_COUNTER, 11},
		{"wsgate_upstream_target_healthy", map[string]string{"upstream": "app", "target": "http://10.0.0.1:80"}, dto.MetricType_GAUGE, 1},
		{"wsgate_upstream_target_healthy", map[string]string{"upstream": "app", "target": "http://10.0.0.2:80"}, dto.MetricType_GAUGE, 0},
		{"wsgate_upstream_target_sessions", map[string]string{"target": "http://10.0.0.1:80"}, dto.MetricType_GAUGE, 2},
		{"wsgate_upstream_target_in_flight", map[string]string{"target": "http://10.0.0.1:80"}, dto.MetricType_GAUGE, 1},
		{"wsgate_upstream_target_ejections_total", map[string]string{"target": "http://10.0.0.1:80"}, dto.MetricType_COUNTER, 3},
		{"wsgate_config_reloads_total", map[string]string{"result": "ok"}, dto.MetricType_COUNTER, 3},
		{"wsgate_config_reloads_total", map[string]string{"result": "failed"}, dto.MetricType_COUNTER, 1},
		{"wsgate_tls_certificate_not_after_seconds", map[string]string{"cert_file": "a.pem", "subject": "a.example"}, dto.MetricType_GAUGE, float64(expiry.Unix())},
	} {
		m := find(t, mfs, c.name, c.labels)
		if typ := mfs[c.name].GetType(); typ != c.typ {
			t.Errorf("%s is a %v, want %v", c.name, typ, c.typ)
		}
		var got float64
		switch c.typ {
		case dto.MetricType_COUNTER:
			got = m.GetCounter().GetValue()
		case dto.MetricType_GAUGE:
			got = m.GetGauge().GetValue()
		}
		if got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}

	d := find(t, mfs, "wsgate_http_request_duration_seconds", map[string]string{"route": "api"}).GetHistogram()
	if d.GetSampleCount() != 5 || d.GetSampleSum() != 1.5 {
		t.Errorf("request duration count, sum = %d, %v; want 5, 1.5", d.GetSampleCount(), d.GetSampleSum())
	}
	// The parser lists +Inf as a bucket too.
	if b := d.GetBucket(); len(b) != len(proxy.DurationBounds)+1 || b[0].GetCumulativeCount() != 3 ||
		b[len(b)-2].GetCumulativeCount() != 3 || b[len(b)-1].GetCumulativeCount() != 5 {
		t.Errorf("request duration buckets %v: want %d, cumulative, 3 up to the last bound, 5 with +Inf", b, len(proxy.DurationBounds)+1)
	}
	sz := find(t, mfs, "wsgate_websocket_message_size_bytes", map[string]string{"route": "chat", "direction": "from_client"}).GetHistogram()
	if sz.GetSampleCount() != 5 || sz.GetBucket()[1].GetCumulativeCount() != 4 || sz.GetBucket()[2].GetCumulativeCount() != 5 {
		t.Errorf("message sizes %v: want 4 up to 256 bytes, 5 up to 1 KiB", sz)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if mfs[name] == nil {
			t.Errorf("no %s: the Go and process collectors are missing", name)
		}
	}
}

// TestCollectorNilSources: a source that is not set costs its metrics,
// not the scrape.
func TestCollectorNilSources(t *testing.T) {
	mfs := scrape(t, Handler(Sources{}))
	for name := range mfs {
		if len(name) > 7 && name[:7] == "wsgate_" {
			t.Errorf("%s exported without a source", name)
		}
	}
}
