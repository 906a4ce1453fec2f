package main

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fasthttp/websocket"
)

// idleResult is the report of -mode idle.
type idleResult struct {
	Mode       string  `json:"mode"`
	URL        string  `json:"url"`
	N          int     `json:"n"`
	Opened     int     `json:"opened"`
	Failed     int     `json:"failed"`
	OpenS      float64 `json:"open_s"`  // from the first dial to the last dial's end
	HoldS      float64 `json:"hold_s"`  // held after ready
	Dropped    int64   `json:"dropped"` // opened but closed by the peer before our close
	FirstError string  `json:"first_error"`
}

func (r *idleResult) summary(w io.Writer) {
	fmt.Fprintf(w, "idle %s: %d of %d connections open in %.3fs (%d failed), held %.2fs, %d dropped by the peer\n",
		r.URL, r.Opened, r.N, r.OpenS, r.Failed, r.HoldS, r.Dropped)
	if r.FirstError != "" {
		fmt.Fprintf(w, "  first error: %s\n", r.FirstError)
	}
}

// runIdle opens cfg.n connections, calls ready once every dial has ended,
// holds the connections without traffic for cfg.hold and closes them with
// 1000. Each connection has a reader goroutine, which answers pings, notices
// a peer that closes early and completes the closing handshake.
func runIdle(ctx context.Context, cfg config, ready func() error) (*idleResult, error) {
	res := &idleResult{Mode: "idle", URL: cfg.url, N: cfg.n}
	// Small read buffers and pooled write buffers: the client should not
	// need much more memory per connection than the proxy under test.
	d := newDialer(256, 256, "", &sync.Pool{})
	octx, cancel := context.WithTimeout(ctx, openTimeout)
	start := time.Now()
	conns, errs := dialAll(octx, d, cfg.url, cfg.n)
	res.OpenS = time.Since(start).Seconds()
	cancel()

	var (
		closing atomic.Bool
		mu      sync.Mutex
		drops   errTally // guarded by mu
		readers sync.WaitGroup
	)
	open := conns[:0]
	for _, c := range conns {
		if c == nil {
			continue
		}
		open = append(open, c)
		readers.Go(func() {
			defer c.Close()
			for {
				if _, _, err := c.NextReader(); err != nil {
					if !closing.Load() {
						mu.Lock()
						drops.add(fmt.Errorf("connection dropped while idle: %w", err), time.Now())
						mu.Unlock()
					}
					return
				}
			}
		})
	}
	res.Opened = len(open)
	res.Failed = cfg.n - res.Opened

	var err error
	if res.Opened == 0 {
		err = fmt.Errorf("no connection opened: %s", errs.firstError())
	} else if rerr := ready(); rerr != nil {
		err = fmt.Errorf("report ready: %w", rerr)
	} else {
		held := time.Now()
		t := time.NewTimer(cfg.hold)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			err = fmt.Errorf("interrupted: %w", ctx.Err())
		}
		res.HoldS = time.Since(held).Seconds()
	}

	// Close: a close frame to each (64 at a time), then the readers end
	// with the peer's close frame, or the deadline.
	closing.Store(true)
	deadline := time.Now().Add(closeTimeout)
	msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
	var next atomic.Int64
	var closers sync.WaitGroup
	for range min(dialConcurrency, len(open)) {
		closers.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(open) {
					return
				}
				open[i].SetReadDeadline(deadline)
				open[i].WriteControl(websocket.CloseMessage, msg, deadline)
			}
		})
	}
	closers.Wait()
	readers.Wait()

	// The readers have returned: drops is ours again.
	res.Dropped = drops.count
	res.FirstError = errs.firstError()
	if res.FirstError == "" {
		res.FirstError = drops.firstError()
	}
	return res, err
}
