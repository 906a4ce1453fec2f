package proxy

import (
	"net/http"
	"testing"
	"time"

	"github.com/wsgate/wsgate/routes"
)

// TestReviewRequestRate: limits.requests_per_second_per_ip answers 429
// with Retry-After beyond the burst, counts it, and a reload that keeps
// the limit keeps the buckets while one that changes it refills them.
func TestReviewRequestRate(t *testing.T) {
	limited := func(rate float64, burst int) *routes.Route {
		return &routes.Route{
			Name: "r", ID: "name:r", Path: "/r",
			Respond: &routes.Respond{Status: http.StatusOK, Body: "ok"},
			Limits:  routes.Limits{RequestsPerSecondPerIP: rate, RequestBurst: burst},
		}
	}
	p := startProxy(t, limited(1.0/60, 2))
	c := httpClient(t)
	get := func() (int, string) {
		t.Helper()
		resp, err := c.Get("http://" + p.addr + "/r")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Retry-After")
	}
	for i := range 2 {
		if st, _ := get(); st != http.StatusOK {
			t.Fatalf("request %d within the burst: status %d, want 200", i, st)
		}
	}
	st, retry := get()
	if st != http.StatusTooManyRequests || retry != "60" {
		t.Fatalf("request over the burst: status %d, Retry-After %q; want 429, 60", st, retry)
	}
	for _, rs := range p.h.Stats() {
		if rs.Route == "r" && rs.RateLimited != 1 {
			t.Errorf("RateLimited = %d, want 1", rs.RateLimited)
		}
	}
	p.reload(t, time.Second, nil, limited(1.0/60, 2))
	if st, _ := get(); st != http.StatusTooManyRequests {
		t.Errorf("after a reload with the same limit: status %d, want 429 (the bucket is kept)", st)
	}
	p.reload(t, time.Second, nil, limited(1.0/60, 3))
	if st, _ := get(); st != http.StatusOK {
		t.Errorf("after a reload with a new limit: status %d, want 200 (a new bucket)", st)
	}
}
