package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"time"
)

// sseResult is the report of -mode sse: time from the start of a request
// (including the TCP connect) to its first "data:" line, in microseconds.
type sseResult struct {
	Mode       string  `json:"mode"`
	URL        string  `json:"url"`
	Count      int     `json:"count"` // requests made
	P50US      float64 `json:"p50_us"`
	P99US      float64 `json:"p99_us"`
	MeanUS     float64 `json:"mean_us"`
	MaxUS      float64 `json:"max_us"`
	Errors     int64   `json:"errors"`
	FirstError string  `json:"first_error"`
}

func (r *sseResult) summary(w io.Writer) {
	fmt.Fprintf(w, "sse %s: %d requests, time to first event p50 %.1fµs  p99 %.1fµs  mean %.1fµs  max %.1fµs\n",
		r.URL, r.Count, r.P50US, r.P99US, r.MeanUS, r.MaxUS)
	fmt.Fprintf(w, "  errors       %d", r.Errors)
	if r.FirstError != "" {
		fmt.Fprintf(w, " (first: %s)", r.FirstError)
	}
	fmt.Fprintln(w)
}

// runSSE makes cfg.count sequential requests, each on a new connection.
func runSSE(ctx context.Context, cfg config) (*sseResult, error) {
	res := &sseResult{Mode: "sse", URL: cfg.url}
	client := &http.Client{
		Transport: &http.Transport{
			// A fresh connection per request: time to first event includes
			// the connect, as for a browser opening an EventSource. No
			// Proxy: the environment's HTTP_PROXY must not interfere.
			DisableKeepAlives:  true,
			DisableCompression: true,
			DialContext:        (&net.Dialer{Timeout: dialTimeout}).DialContext,
			TLSClientConfig:    &tls.Config{InsecureSkipVerify: true},
		},
		Timeout: sseTimeout,
	}
	defer client.CloseIdleConnections()

	samples := make([]time.Duration, 0, cfg.count)
	var errs errTally
	br := bufio.NewReaderSize(nil, 4096)
	for i := 0; i < cfg.count && ctx.Err() == nil; i++ {
		res.Count++
		d, err := firstEvent(ctx, client, cfg.url, br)
		if err != nil {
			if ctx.Err() == nil {
				errs.add(err, time.Now())
			}
			continue
		}
		samples = append(samples, d)
	}
	res.Errors, res.FirstError = errs.count, errs.firstError()
	if len(samples) > 0 {
		slices.Sort(samples)
		var sum time.Duration
		for _, s := range samples {
			sum += s
		}
		res.P50US = micros(nearestRank(samples, 0.50))
		res.P99US = micros(nearestRank(samples, 0.99))
		res.MeanUS = micros(sum / time.Duration(len(samples)))
		res.MaxUS = micros(samples[len(samples)-1])
	}
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("interrupted: %w", err)
	}
	if len(samples) == 0 {
		return res, fmt.Errorf("no request reached its first event: %s", res.FirstError)
	}
	return res, nil
}

// nearestRank returns the q quantile of sorted, which is not empty.
func nearestRank(sorted []time.Duration, q float64) time.Duration {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// firstEvent makes one request and returns the time until its first "data:"
// line has arrived. It closes the response without reading the rest.
func firstEvent(ctx context.Context, client *http.Client, url string, br *bufio.Reader) (time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Accept", "text/event-stream")
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %q: status %s", url, resp.Status)
	}
	br.Reset(resp.Body)
	defer br.Reset(nil)
	midLine := false // the previous ReadSlice ended inside a long line
	for {
		line, err := br.ReadSlice('\n')
		if !midLine && bytes.HasPrefix(line, []byte("data:")) {
			return time.Since(start), nil
		}
		midLine = err == bufio.ErrBufferFull
		if midLine {
			continue
		} else if err == io.EOF {
			return 0, fmt.Errorf("GET %q: stream ended before the first data line", url)
		} else if err != nil {
			return 0, fmt.Errorf("GET %q: %w", url, err)
		}
	}
}
