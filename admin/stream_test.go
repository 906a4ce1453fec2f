package admin

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// hangGuard bounds waits for things that happen at once unless the code
// is broken: long, so that a slow machine never trips it.
const hangGuard = time.Minute

// streamServer serves h and returns a channel that receives once per
// /api/stream handler that returns.
func streamServer(t *testing.T, h *handler) (*httptest.Server, <-chan struct{}) {
	t.Helper()
	ended := make(chan struct{}, 16)
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
		if r.URL.Path == "/api/stream" {
			ended <- struct{}{}
		}
	}))
	return srv, ended
}

// openStream starts GET /api/stream and returns the response; cancel
// ends the request.
func openStream(t *testing.T, srv *httptest.Server, hdr ...string) (res *http.Response, cancel context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, "GET", srv.URL+"/api/stream", nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err = srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { res.Body.Close() })
	return res, cancel
}

// sseEvent is one event of a stream; comment holds a comment line.
type sseEvent struct {
	event, data, comment string
}

// nextEvent reads one event block (or comment) from br.
func nextEvent(t *testing.T, br *bufio.Reader) sseEvent {
	t.Helper()
	var ev sseEvent
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("read stream: %v (so far %+v)", err, ev)
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "":
			if ev != (sseEvent{}) {
				return ev
			}
		case strings.HasPrefix(line, ":"):
			ev.comment = strings.TrimSpace(line[1:])
		case strings.HasPrefix(line, "event: "):
			ev.event = line[len("event: "):]
		case strings.HasPrefix(line, "data: "):
			ev.data += line[len("data: "):]
		default:
			t.Fatalf("unexpected stream line %q", line)
		}
	}
}

// waitEnded waits until a stream handler has returned.
func waitEnded(t *testing.T, ended <-chan struct{}) {
	t.Helper()
	select {
	case <-ended:
	case <-time.After(hangGuard):
		t.Fatal("the stream handler did not return")
	}
}

func TestStream(t *testing.T) {
	var calls atomic.Int64
	o := testOptions(newFakeSessions())
	overview := o.Overview
	o.Overview = func() Overview {
		ov := overview()
		ov.Routes[0].Handshakes = calls.Add(1)
		return ov
	}
	o.Token = "s3cret"
	h := newHandler(o)
	h.interval = 5 * time.Millisecond
	srv, ended := streamServer(t, h)

	res, cancel := openStream(t, srv, "Authorization", "Bearer s3cret")
	if res.StatusCode != 200 {
		t.Fatalf("status %d, want 200", res.StatusCode)
	}
	if ct := res.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("Content-Type %q, want text/event-stream", ct)
	}
	if cc := res.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q, want no-store", cc)
	}
	br := bufio.NewReader(res.Body)
	var last int64
	for n := 0; n < 3; {
		ev := nextEvent(t, br)
		if ev.comment != "" {
			continue
		}
		if ev.event != "overview" {
			t.Fatalf("event %q, want overview", ev.event)
		}
		var ov Overview
		if err := json.Unmarshal([]byte(ev.data), &ov); err != nil {
			t.Fatalf("event data %q: %v", ev.data, err)
		}
		if len(ov.Routes) != 1 || ov.Routes[0].Route != "chat" || len(ov.Sessions) != 3 || ov.SessionsTotal != 3 {
			t.Fatalf("overview %s", ev.data)
		}
		// Each event is a new overview.
		if got := ov.Routes[0].Handshakes; got <= last {
			t.Errorf("event %d has handshakes %d after %d: not a new overview", n, got, last)
		} else {
			last = got
		}
		n++
	}
	cancel()
	waitEnded(t, ended)
}

func TestStreamHeartbeat(t *testing.T) {
	h := newHandler(testOptions(newFakeSessions()))
	h.interval = time.Hour // only the first overview
	h.heartbeat = 5 * time.Millisecond
	srv, ended := streamServer(t, h)
	res, cancel := openStream(t, srv)
	br := bufio.NewReader(res.Body)
	if ev := nextEvent(t, br); ev.event != "overview" {
		t.Fatalf("first event %+v, want overview at once", ev)
	}
	if ev := nextEvent(t, br); ev.comment != "heartbeat" {
		t.Fatalf("second event %+v, want the heartbeat comment", ev)
	}
	cancel()
	waitEnded(t, ended)
}

// TestStreamEndsOnShutdown proves that an open stream does not hold
// http.Server.Shutdown: the stream's interval is an hour, the guard a
// minute.
func TestStreamEndsOnShutdown(t *testing.T) {
	h := newHandler(testOptions(newFakeSessions()))
	h.interval = time.Hour
	h.heartbeat = time.Hour
	srv, ended := streamServer(t, h)
	res, _ := openStream(t, srv)
	br := bufio.NewReader(res.Body)
	if ev := nextEvent(t, br); ev.event != "overview" {
		t.Fatalf("first event %+v, want overview", ev)
	}
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	if err := srv.Config.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v (the stream held it)", err)
	}
	waitEnded(t, ended)
}

func TestStreamAuth(t *testing.T) {
	o := testOptions(newFakeSessions())
	o.Token = "s3cret"
	srv := serve(t, New(o))
	r := do(t, srv, "GET", "/api/stream", nil)
	wantError(t, r, 401)
}

// TestStreamEndsOnClose: Close ends the handler's streams (a reload
// replaces the handler with one that has a new token: a stream the old
// token opened must not go on).
func TestStreamEndsOnClose(t *testing.T) {
	h := newHandler(testOptions(newFakeSessions()))
	h.interval = time.Hour
	h.heartbeat = time.Hour
	srv, ended := streamServer(t, h)
	res, _ := openStream(t, srv)
	br := bufio.NewReader(res.Body)
	if ev := nextEvent(t, br); ev.event != "overview" {
		t.Fatalf("first event %+v, want overview", ev)
	}
	New(testOptions(newFakeSessions())).(interface{ Close() }).Close() // another handler: no effect here
	h.Close()
	waitEnded(t, ended)
}
