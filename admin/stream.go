package admin

import (
	"encoding/json"
	"errors"
	"net/http"
	"time"
)

// stream answers GET /api/stream with Server-Sent Events: an "overview"
// event at once and then every interval, and a comment every heartbeat
// so that proxies in between see traffic. It returns when the request's
// context ends, when a write fails, or when its server shuts down.
func (h *handler) stream(w http.ResponseWriter, r *http.Request) {
	shutdown := h.shutdownOf(r)
	rc := http.NewResponseController(w)
	hd := w.Header()
	hd.Set("Content-Type", "text/event-stream")
	hd.Set("Cache-Control", "no-store")
	hd.Set("X-Content-Type-Options", "nosniff")
	// nginx buffers responses unless told not to.
	hd.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}

	// send writes b and flushes it. Each write gets its own deadline: a
	// client that stops reading is dropped, and the server's
	// WriteTimeout, if any, does not end a healthy stream.
	// The server resets a connection's write deadline for the next
	// request only when it has a WriteTimeout of its own.
	defer rc.SetWriteDeadline(time.Time{})
	send := func(b []byte) bool {
		if err := rc.SetWriteDeadline(time.Now().Add(h.writeTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return false
		}
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	event := func() []byte {
		b, err := json.Marshal(h.takeOverview())
		if err != nil {
			h.log.Error("admin stream: encode overview", "error", err)
			return []byte(": encode overview failed\n\n")
		}
		// JSON from encoding/json has no newline, so one data line
		// carries it.
		out := make([]byte, 0, len(b)+32)
		out = append(out, "event: overview\ndata: "...)
		out = append(out, b...)
		return append(out, "\n\n"...)
	}

	if !send(event()) {
		return
	}
	tick := time.NewTicker(h.interval)
	defer tick.Stop()
	beat := time.NewTicker(h.heartbeat)
	defer beat.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-shutdown:
			return
		case <-h.closed:
			return
		case <-tick.C:
			if !send(event()) {
				return
			}
		case <-beat.C:
			if !send([]byte(": heartbeat\n\n")) {
				return
			}
		}
	}
}

// shutdownOf returns a channel closed when the http.Server serving r
// starts its Shutdown, or nil when r came from elsewhere. Shutdown waits
// for active requests and does not cancel their contexts: without this,
// an open dashboard would hold it until its deadline.
func (h *handler) shutdownOf(r *http.Request) <-chan struct{} {
	srv, _ := r.Context().Value(http.ServerContextKey).(*http.Server)
	if srv == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	ch, ok := h.shutdown[srv]
	if !ok {
		// One entry and one hook per server, whatever the number of
		// streams it serves. The entry stays after Shutdown (a server is
		// not restarted): a stream that starts on a connection Shutdown
		// has not closed yet finds the closed channel and ends.
		ch = make(chan struct{})
		h.shutdown[srv] = ch
		srv.RegisterOnShutdown(func() { close(ch) })
	}
	return ch
}
