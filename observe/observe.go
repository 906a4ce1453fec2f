package observe

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wsgate/wsgate/proxy"
	"github.com/wsgate/wsgate/upstream"
	"github.com/wsgate/wsgate/wsrelay"
)

// Sources are where the collector reads at scrape time. Any may be nil.
type Sources struct {
	HTTP         func() []proxy.RouteStats
	WebSocket    func() []wsrelay.RouteStats
	Upstreams    func() []upstream.SetStatus
	Reloads      func() (ok, failed int64)
	Certificates func() []Certificate
	// Parked and HandOffs describe the relay's poller (see wsrelay).
	Parked   func() int
	HandOffs func() int64
}

// Certificate is one certificate in use.
type Certificate struct {
	File, Subject string
	NotAfter      time.Time
}

// Handler returns the /metrics handler: wsgate's collector, the Go
// runtime's and the process's.
func Handler(s Sources) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		&collector{s: s},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("wsgate_"+name, help, labels, nil)
}

var (
	httpRequests = desc("http_requests_total",
		"HTTP requests answered, by route, method and status class (WebSocket upgrades count as 1xx). Route \"\" is requests that matched no route.",
		"route", "method", "status_class")
	httpDuration = desc("http_request_duration_seconds",
		"Time from the request to its response head (streamed bodies: to the end of the body).", "route")
	upstreamErrors = desc("upstream_errors_total",
		"Upstream failures by kind: unavailable (no target could take it), refused, timeout, reset, bad_response.", "route", "kind")
	httpRetries = desc("http_retries_total",
		"Requests and handshakes sent again to another target after a failure.", "route")
	clientGone = desc("http_client_closed_requests_total",
		"Responses the client did not wait for (logged as 499).", "route")

	wsOpen = desc("websocket_sessions",
		"Open WebSocket sessions.", "route", "upstream")
	wsOpened = desc("websocket_sessions_opened_total",
		"WebSocket sessions opened.", "route", "upstream")
	wsEnded = desc("websocket_sessions_ended_total",
		"WebSocket sessions ended, by the close code of the side that closed first and which side it was (client, backend or wsgate); code 1006 is a connection that ended without a close frame.",
		"route", "upstream", "code", "closed_by")
	wsMessages = desc("websocket_messages_total",
		"WebSocket data messages relayed, counted as their first frame passes, by direction (from_client, from_backend).",
		"route", "upstream", "direction")
	wsBytes = desc("websocket_bytes_total",
		"WebSocket payload bytes relayed, counted as frames pass, by direction.", "route", "upstream", "direction")
	wsSizes = desc("websocket_message_size_bytes",
		"Sizes of WebSocket data messages, observed as their last frame passes.", "route", "upstream", "direction")
	wsDuration = desc("websocket_session_duration_seconds",
		"Lifetimes of ended WebSocket sessions.", "route", "upstream")
	wsHandshakes = desc("websocket_handshakes_total",
		"WebSocket upgrades that succeeded.", "route")
	wsHandshakeDuration = desc("websocket_handshake_duration_seconds",
		"Time from the client's upgrade request to the 101 (both handshakes).", "route")
	wsRefusals = desc("websocket_handshake_refusals_total",
		"WebSocket handshakes that did not upgrade, by the status the client got.", "route", "status")
	httpRateLimited = desc("http_rate_limited_total",
		"Requests and handshakes refused with 429 over the route's limits.requests_per_second_per_ip.", "route")
	wsPings = desc("websocket_pings_total",
		"Keepalive pings wsgate sent, by the side pinged (client, backend).", "route", "upstream", "side")
	wsPingTimeouts = desc("websocket_ping_timeouts_total",
		"Sessions ended because a side did not answer wsgate's ping in time.", "route", "upstream", "side")
	wsRateClosed = desc("websocket_rate_limit_closes_total",
		"Sessions closed with 1008 because a side sent messages over max_messages_per_second.", "route", "upstream", "side")
	wsDropped = desc("websocket_dropped_messages_total",
		"Messages dropped over max_messages_per_second (rate_limit_action: drop), by the side that sent them.", "route", "upstream", "side")
	wsInvalidUTF8 = desc("websocket_invalid_utf8_total",
		"Sessions closed with 1007 because a side sent text that is not UTF-8.", "route", "upstream", "side")
	wsExpired = desc("websocket_token_expired_total",
		"Sessions closed because the token they were opened with expired (auth.jwt).", "route", "upstream")
	authRejected = desc("http_auth_rejected_total",
		"Requests and handshakes refused by the route's auth, by reason (jwt_missing, jwt_invalid, jwt_expired, forward_denied, forward_unavailable).", "route", "reason")
	wsParked = desc("websocket_parked_legs",
		"WebSocket legs waiting in the poller without a goroutine.")
	wsHandOffs = desc("websocket_poller_handoffs_total",
		"Legs the poller gave back to a goroutine (large frames, slow peers, closes).")

	targetHealthy = desc("upstream_target_healthy",
		"1 while the target is in rotation, 0 while it is unhealthy or ejected.", "upstream", "target")
	targetEjections = desc("upstream_target_ejections_total",
		"Passive ejections of the target.", "upstream", "target")
	targetSessions = desc("upstream_target_sessions",
		"Open WebSocket sessions on the target.", "upstream", "target")
	targetInFlight = desc("upstream_target_in_flight",
		"HTTP requests and WebSocket handshakes in progress on the target.", "upstream", "target")

	reloads = desc("config_reloads_total",
		"Config reloads, by result (ok, failed).", "result")
	certNotAfter = desc("tls_certificate_not_after_seconds",
		"When the certificate expires, in seconds since the Unix epoch (alert on it minus time()).", "cert_file", "subject")
)

var allDescs = []*prometheus.Desc{
	httpRequests, httpDuration, upstreamErrors, httpRetries, clientGone,
	wsOpen, wsOpened, wsEnded, wsMessages, wsBytes, wsSizes, wsDuration,
	wsHandshakes, wsHandshakeDuration, wsRefusals, wsParked, wsHandOffs,
	httpRateLimited, wsPings, wsPingTimeouts, wsRateClosed, wsDropped, wsInvalidUTF8, wsExpired, authRejected,
	targetHealthy, targetEjections, targetSessions, targetInFlight,
	reloads, certNotAfter,
}

// collector reads Sources at scrape time.
type collector struct{ s Sources }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	hist := func(d *prometheus.Desc, bounds []float64, counts []uint64, sum float64, labels ...string) {
		buckets := make(map[float64]uint64, len(bounds))
		var n uint64
		for i, b := range bounds {
			n += counts[i]
			buckets[b] = n
		}
		n += counts[len(bounds)]
		ch <- prometheus.MustNewConstHistogram(d, n, sum, buckets, labels...)
	}

	if c.s.HTTP != nil {
		for _, st := range c.s.HTTP() {
			for m, byStatus := range st.Requests {
				for sc, v := range byStatus {
					if v > 0 {
						counter(httpRequests, float64(v), st.Route, proxy.MethodClasses[m], proxy.StatusClasses[sc])
					}
				}
			}
			hist(httpDuration, proxy.DurationBounds[:], st.Duration.Counts, st.Duration.Sum, st.Route)
			for k, v := range st.UpstreamErrors {
				counter(upstreamErrors, float64(v), st.Route, proxy.ErrorKinds[k])
			}
			counter(httpRetries, float64(st.Retries), st.Route)
			counter(clientGone, float64(st.ClientGone), st.Route)
			counter(httpRateLimited, float64(st.RateLimited), st.Route)
			for i, v := range st.AuthRejected {
				if v > 0 {
					counter(authRejected, float64(v), st.Route, proxy.AuthReasons[i])
				}
			}
			if st.Handshakes > 0 || len(st.Refused) > 0 {
				counter(wsHandshakes, float64(st.Handshakes), st.Route)
				hist(wsHandshakeDuration, proxy.DurationBounds[:], st.HandshakeDuration.Counts, st.HandshakeDuration.Sum, st.Route)
				for status, v := range st.Refused {
					counter(wsRefusals, float64(v), st.Route, strconv.Itoa(status))
				}
			}
		}
	}
	if c.s.WebSocket != nil {
		for _, st := range c.s.WebSocket() {
			gauge(wsOpen, float64(st.Open), st.Route, st.Upstream)
			counter(wsOpened, float64(st.Opened), st.Route, st.Upstream)
			for k, v := range st.Ended {
				counter(wsEnded, float64(v), st.Route, st.Upstream, strconv.Itoa(int(k.Code)), k.By)
			}
			for _, f := range []struct {
				dir string
				fs  *wsrelay.FlowStats
			}{{"from_client", &st.FromClient}, {"from_backend", &st.FromBackend}} {
				counter(wsMessages, float64(f.fs.Messages), st.Route, st.Upstream, f.dir)
				counter(wsBytes, float64(f.fs.Bytes), st.Route, st.Upstream, f.dir)
				hist(wsSizes, wsrelay.SizeBounds[:], f.fs.Sizes.Counts, f.fs.Sizes.Sum, st.Route, st.Upstream, f.dir)
			}
			hist(wsDuration, wsrelay.DurationBounds[:], st.Durations.Counts, st.Durations.Sum, st.Route, st.Upstream)
			for _, a := range []struct {
				side string
				a    *wsrelay.Actions
			}{{"client", &st.ClientActions}, {"backend", &st.BackendActions}} {
				counter(wsPings, float64(a.a.Pings), st.Route, st.Upstream, a.side)
				counter(wsPingTimeouts, float64(a.a.PingTimeouts), st.Route, st.Upstream, a.side)
				counter(wsRateClosed, float64(a.a.RateLimited), st.Route, st.Upstream, a.side)
				counter(wsDropped, float64(a.a.Dropped), st.Route, st.Upstream, a.side)
				counter(wsInvalidUTF8, float64(a.a.InvalidUTF8), st.Route, st.Upstream, a.side)
			}
			counter(wsExpired, float64(st.ClientActions.Expired), st.Route, st.Upstream)
		}
	}
	if c.s.Parked != nil {
		gauge(wsParked, float64(c.s.Parked()))
	}
	if c.s.HandOffs != nil {
		counter(wsHandOffs, float64(c.s.HandOffs()))
	}
	if c.s.Upstreams != nil {
		seen := map[[2]string]bool{} // a target listed by two sets (mid-reload) once
		for _, set := range c.s.Upstreams() {
			for _, t := range set.Targets {
				k := [2]string{set.Name, t.URL}
				if seen[k] {
					continue
				}
				seen[k] = true
				healthy := 0.0
				if t.Healthy {
					healthy = 1
				}
				gauge(targetHealthy, healthy, set.Name, t.URL)
				counter(targetEjections, float64(t.Ejections), set.Name, t.URL)
				gauge(targetSessions, float64(t.Sessions), set.Name, t.URL)
				gauge(targetInFlight, float64(t.InFlight), set.Name, t.URL)
			}
		}
	}
	if c.s.Reloads != nil {
		ok, failed := c.s.Reloads()
		counter(reloads, float64(ok), "ok")
		counter(reloads, float64(failed), "failed")
	}
	if c.s.Certificates != nil {
		seen := map[[2]string]bool{}
		for _, cert := range c.s.Certificates() {
			k := [2]string{cert.File, cert.Subject}
			if seen[k] {
				continue // one file on two listeners
			}
			seen[k] = true
			gauge(certNotAfter, float64(cert.NotAfter.Unix()), cert.File, cert.Subject)
		}
	}
}
