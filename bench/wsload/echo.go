package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fasthttp/websocket"
)

// echoResult is the report of -mode echo. Latencies are round trips in
// microseconds; msgs_per_s counts round trips (one message each way).
type echoResult struct {
	Mode        string  `json:"mode"`
	URL         string  `json:"url"`
	Connections int     `json:"connections"` // requested (-c)
	Connected   int     `json:"connected"`   // of which the handshake succeeded
	Size        int     `json:"size"`
	DurationS   float64 `json:"duration_s"` // measured window, warm-up excluded
	RoundTrips  int64   `json:"round_trips"`
	MsgsPerS    float64 `json:"msgs_per_s"`
	P50US       float64 `json:"p50_us"`
	P90US       float64 `json:"p90_us"`
	P99US       float64 `json:"p99_us"`
	MaxUS       float64 `json:"max_us"`
	Errors      int64   `json:"errors"` // failed dials plus connections that failed mid-run
	FirstError  string  `json:"first_error"`
}

func (r *echoResult) summary(w io.Writer) {
	fmt.Fprintf(w, "echo %s: %d connections (%d connected) x %d B, %.2fs measured\n",
		r.URL, r.Connections, r.Connected, r.Size, r.DurationS)
	fmt.Fprintf(w, "  round trips  %d  (%.0f msgs/s)\n", r.RoundTrips, r.MsgsPerS)
	fmt.Fprintf(w, "  latency      p50 %.1fµs  p90 %.1fµs  p99 %.1fµs  max %.1fµs\n", r.P50US, r.P90US, r.P99US, r.MaxUS)
	fmt.Fprintf(w, "  errors       %d", r.Errors)
	if r.FirstError != "" {
		fmt.Fprintf(w, " (first: %s)", r.FirstError)
	}
	fmt.Fprintln(w)
}

// dialConcurrency bounds the handshakes in progress at once.
const dialConcurrency = 64

// echoBufferSizes returns the Dialer's buffer sizes for messages of size
// bytes: a whole small message (and its frame header) fits in one buffer, so
// it is one write and usually one read; from 4 KiB up, 4096 (larger messages
// go out as 4 KiB frames, like a browser-sized client).
func echoBufferSizes(size int) (read, write int) {
	const maxHeader = 14 // RFC 6455 section 5.2, masked, 64-bit length
	return max(256, min(size+maxHeader, 4096)), max(256, min(size, 4096))
}

func newDialer(readBuf, writeBuf int, subprotocol string, pool websocket.BufferPool) *websocket.Dialer {
	d := &websocket.Dialer{
		NetDialContext:   (&net.Dialer{Timeout: dialTimeout}).DialContext,
		HandshakeTimeout: dialTimeout,
		ReadBufferSize:   readBuf,
		WriteBufferSize:  writeBuf,
		WriteBufferPool:  pool,
		// wss:// targets in a benchmark use throwaway certificates.
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}
	if subprotocol != "" {
		d.Subprotocols = []string{subprotocol}
	}
	return d
}

// dial opens one connection and checks that the subprotocol, if requested,
// was agreed.
func dial(ctx context.Context, d *websocket.Dialer, url string) (*websocket.Conn, error) {
	c, resp, err := d.DialContext(ctx, url, nil)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("dial %q: %w (HTTP %d)", url, err, resp.StatusCode)
		}
		return nil, fmt.Errorf("dial %q: %w", url, err)
	}
	if len(d.Subprotocols) > 0 && c.Subprotocol() != d.Subprotocols[0] {
		got := c.Subprotocol()
		c.Close()
		return nil, fmt.Errorf("dial %q: subprotocol %q not agreed (got %q)", url, d.Subprotocols[0], got)
	}
	return c, nil
}

// dialAll opens n connections, at most dialConcurrency at a time, without
// retries. conns[i] is nil where the dial failed.
func dialAll(ctx context.Context, d *websocket.Dialer, url string, n int) (conns []*websocket.Conn, errs errTally) {
	conns = make([]*websocket.Conn, n)
	var (
		next atomic.Int64
		mu   sync.Mutex // guards errs
		wg   sync.WaitGroup
	)
	for range min(dialConcurrency, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				c, err := dial(ctx, d, url)
				if err != nil {
					mu.Lock()
					errs.add(err, time.Now())
					mu.Unlock()
					continue
				}
				conns[i] = c
			}
		})
	}
	wg.Wait()
	return conns, errs
}

// echoWorker drives one connection. Everything a round trip touches is
// allocated up front.
type echoWorker struct {
	id   int
	conn *websocket.Conn
	out  []byte // the message, rewritten in place
	in   []byte // the echo
	mt   int    // websocket.BinaryMessage, or TextMessage with -text
	one  [1]byte
	hist histogram
	errs errTally
}

// runEcho measures round trips of cfg.size-byte binary (or text) messages over
// cfg.conns connections, each with exactly one message in flight.
func runEcho(ctx context.Context, cfg config) (*echoResult, error) {
	res := &echoResult{Mode: "echo", URL: cfg.url, Connections: cfg.conns, Size: cfg.size}
	rb, wb := echoBufferSizes(cfg.size)
	// One write buffer per connection (no pool): each writes all the time.
	d := newDialer(rb, wb, cfg.subprotocol, nil)
	conns, dialErrs := dialAll(ctx, d, cfg.url, cfg.conns)

	workers := make([]*echoWorker, 0, len(conns))
	for i, c := range conns {
		if c == nil {
			continue
		}
		w := &echoWorker{id: i, conn: c, out: make([]byte, cfg.size), in: make([]byte, cfg.size), mt: websocket.BinaryMessage}
		if cfg.text {
			w.mt = websocket.TextMessage
		}
		for j := range w.out {
			w.out[j] = byte('a' + j%26)
		}
		workers = append(workers, w)
	}
	res.Connected = len(workers)
	if len(workers) == 0 {
		res.Errors, res.FirstError = dialErrs.count, dialErrs.firstError()
		return res, fmt.Errorf("no connection opened: %s", res.FirstError)
	}

	// A signal closes the connections, which ends every blocked read or write.
	stop := context.AfterFunc(ctx, func() {
		for _, w := range workers {
			w.conn.Close()
		}
	})
	defer stop()

	start := time.Now()
	warmEnd := start.Add(cfg.warmup)
	end := warmEnd.Add(cfg.duration)
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Go(func() {
			if err := w.run(warmEnd, end); err != nil && ctx.Err() == nil {
				w.errs.add(fmt.Errorf("conn %d: %w", w.id, err), time.Now())
				w.conn.Close()
				return
			}
			closeGracefully(w.conn)
		})
	}
	wg.Wait()

	var h histogram
	errs := dialErrs
	for _, w := range workers {
		h.merge(&w.hist)
		errs.merge(w.errs)
	}
	window := cfg.duration
	if ctx.Err() != nil {
		// Interrupted: the rate is over the part of the window that ran.
		window = max(min(time.Since(warmEnd), cfg.duration), 0)
	}
	res.DurationS = window.Seconds()
	res.RoundTrips = h.total
	if window > 0 {
		res.MsgsPerS = float64(h.total) / window.Seconds()
	}
	res.P50US = micros(h.quantile(0.50))
	res.P90US = micros(h.quantile(0.90))
	res.P99US = micros(h.quantile(0.99))
	res.MaxUS = micros(h.max)
	res.Errors, res.FirstError = errs.count, errs.firstError()
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("interrupted: %w", err)
	}
	return res, nil
}

// run does round trips until end. A round trip counts when it completes in
// [warmEnd, end]; the one that straddles end is dropped, so the count over
// the window is exact.
func (w *echoWorker) run(warmEnd, end time.Time) error {
	// One deadline for the whole run rather than one per message: a round
	// trip that is still unanswered stallGrace after the end is a failure.
	w.conn.SetReadDeadline(end.Add(stallGrace))
	w.conn.SetWriteDeadline(end.Add(stallGrace))
	last := len(w.out) - 1
	for seq := 0; ; seq++ {
		t0 := time.Now()
		if !t0.Before(end) {
			return nil
		}
		// Vary both ends per message, so a stale or misrouted echo shows.
		w.out[0] = byte(seq)
		w.out[last] = byte(seq>>8) ^ byte(w.id)
		if w.mt == websocket.TextMessage {
			// Text stays ASCII (valid UTF-8), still varied per message.
			w.out[0] = 'A' + byte(seq)%26
			w.out[last] = 'a' + byte(seq>>8^w.id)%26
		}
		if err := w.conn.WriteMessage(w.mt, w.out); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		if err := w.readEcho(); err != nil {
			return err
		}
		t1 := time.Now()
		if !t1.Before(warmEnd) && !t1.After(end) {
			w.hist.record(t1.Sub(t0))
		}
	}
}

var errWrongType = errors.New("echo is not of the type sent")

// readEcho reads one message into w.in and checks it against w.out: type,
// exact size, first and last byte.
func (w *echoWorker) readEcho() error {
	mt, r, err := w.conn.NextReader()
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if mt != w.mt {
		return errWrongType
	}
	n, err := io.ReadFull(r, w.in)
	if err == io.ErrUnexpectedEOF || err == io.EOF {
		return fmt.Errorf("echo has %d bytes, want %d", n, len(w.in))
	} else if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if extra, err := r.Read(w.one[:]); extra > 0 {
		return fmt.Errorf("echo is longer than %d bytes", len(w.in))
	} else if err != io.EOF {
		return fmt.Errorf("read: %w", err)
	}
	last := len(w.in) - 1
	if w.in[0] != w.out[0] || w.in[last] != w.out[last] {
		return fmt.Errorf("echo differs from the message: first/last bytes %#x/%#x, want %#x/%#x",
			w.in[0], w.in[last], w.out[0], w.out[last])
	}
	return nil
}

// closeGracefully sends close 1000, waits briefly for the peer's close
// frame and closes the connection. Errors are not the benchmark's concern.
func closeGracefully(c *websocket.Conn) {
	deadline := time.Now().Add(closeTimeout)
	c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), deadline)
	c.SetReadDeadline(deadline)
	for {
		// Discards any data message; ends with the peer's close frame (a
		// *CloseError) or the deadline.
		if _, _, err := c.NextReader(); err != nil {
			break
		}
	}
	c.Close()
}
