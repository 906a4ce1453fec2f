package admin

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"unicode/utf8"

	"github.com/wsgate/wsgate/wsrelay"
)

// Limits of the session endpoints.
const (
	// defaultLimit and maxLimit bound a page of GET /api/sessions.
	defaultLimit = 100
	maxLimit     = 1000
	// maxMessage is the largest body of a message to send (1 MiB).
	maxMessage = 1 << 20
	// maxReason is the longest close reason: a close frame is a control
	// frame, at most 125 bytes of payload, 2 of them the code (RFC 6455
	// section 5.5).
	maxReason = 123
)

// sessionPage answers GET /api/sessions.
type sessionPage struct {
	Sessions []wsrelay.Info `json:"sessions"`
	Total    int            `json:"total"`
	Offset   int            `json:"offset"`
	Limit    int            `json:"limit"`
}

func (h *handler) listSessions(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	offset, err := queryInt(q.Get("offset"), "offset", 0, 0, -1)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	limit, err := queryInt(q.Get("limit"), "limit", defaultLimit, 1, maxLimit)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	all := h.o.Sessions.List(wsrelay.Filter{
		Route:    q.Get("route"),
		Upstream: q.Get("upstream"),
		Target:   q.Get("target"),
		Client:   q.Get("client"),
	})
	page := sessionPage{Sessions: []wsrelay.Info{}, Total: len(all), Offset: offset, Limit: limit}
	if offset < len(all) {
		page.Sessions = all[offset:min(len(all), offset+limit)]
	}
	writeJSON(w, http.StatusOK, page)
}

// queryInt parses the query parameter name, def when empty, which must
// be at least lo and, unless hi < 0, at most hi.
func queryInt(s, name string, def, lo, hi int) (int, error) {
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || (hi >= 0 && n > hi) {
		if hi < 0 {
			return 0, fmt.Errorf("invalid %s %q: want an integer from %d", name, s, lo)
		}
		return 0, fmt.Errorf("invalid %s %q: want an integer from %d to %d", name, s, lo, hi)
	}
	return n, nil
}

func (h *handler) getSession(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	info, ok := h.o.Sessions.Get(id)
	if !ok {
		writeError(w, http.StatusNotFound, "no such session %q", id)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

func (h *handler) closeSession(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	q := r.URL.Query()
	code, err := parseCloseCode(q.Get("code"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	reason := q.Get("reason")
	if err := checkReason(reason); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if err := h.o.Sessions.Close(id, code, reason); err != nil {
		h.sessionError(w, "close", id, err)
		return
	}
	h.log.Info("admin closed session", "session", id, "close_code", code, "reason", reason, "remote", r.RemoteAddr)
	// 202: the closing handshake has started; the session ends when
	// both sides have closed.
	writeJSON(w, http.StatusAccepted, struct {
		Closed string `json:"closed"`
	}{id})
}

// parseCloseCode returns the close code of the code query parameter:
// 1000 when empty, else one that an endpoint may send (RFC 6455 section
// 7.4): 1000, 1001, 1008, 1011, 1012, 1013, or 3000–4999 (registered and
// private codes). The others are reserved, mean a protocol failure the
// admin did not see, or must never be sent.
func parseCloseCode(s string) (uint16, error) {
	if s == "" {
		return 1000, nil
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("invalid close code %q: want 1000, 1001, 1008, 1011, 1012, 1013 or 3000-4999", s)
	}
	switch code := uint16(n); {
	case code == 1000, code == 1001, code == 1008, code == 1011, code == 1012, code == 1013,
		code >= 3000 && code <= 4999:
		return code, nil
	default:
		return 0, fmt.Errorf("close code %d not allowed: want 1000, 1001, 1008, 1011, 1012, 1013 or 3000-4999", code)
	}
}

// checkReason returns an error if reason cannot be a close reason.
func checkReason(reason string) error {
	if len(reason) > maxReason {
		return fmt.Errorf("close reason is %d bytes, more than %d", len(reason), maxReason)
	}
	if !utf8.ValidString(reason) {
		return errors.New("close reason is not valid UTF-8")
	}
	return nil
}

func (h *handler) sendMessage(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	binary, msg, ok := readMessage(w, r)
	if !ok {
		return
	}
	if err := h.o.Sessions.Send(id, binary, msg); err != nil {
		h.sessionError(w, "send to", id, err)
		return
	}
	h.log.Info("admin sent message", "session", id, "binary", binary, "bytes", len(msg), "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, struct {
		Sent bool `json:"sent"`
	}{true})
}

func (h *handler) broadcast(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var names []string
	if h.o.Routes != nil {
		names = h.o.Routes()
	}
	if !slices.Contains(names, name) {
		writeError(w, http.StatusNotFound, "no such route %q", name)
		return
	}
	binary, msg, ok := readMessage(w, r)
	if !ok {
		return
	}
	sent := h.o.Sessions.Broadcast(name, binary, msg)
	h.log.Info("admin broadcast", "route", name, "binary", binary, "bytes", len(msg), "sessions", sent, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, struct {
		Route string `json:"route"`
		Sent  int    `json:"sent"`
	}{name, sent})
}

// readMessage reads the message to send from r: the body, at most
// maxMessage bytes, text (valid UTF-8) unless ?binary=1. When it cannot,
// it answers r and returns ok false.
func readMessage(w http.ResponseWriter, r *http.Request) (binary bool, msg []byte, ok bool) {
	if s := r.URL.Query().Get("binary"); s != "" {
		var err error
		if binary, err = strconv.ParseBool(s); err != nil {
			writeError(w, http.StatusBadRequest, "invalid binary %q: want 1 or 0", s)
			return false, nil, false
		}
	}
	if r.ContentLength > maxMessage {
		writeError(w, http.StatusRequestEntityTooLarge, "message is %d bytes, more than %d", r.ContentLength, maxMessage)
		return false, nil, false
	}
	msg, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxMessage))
	if err != nil {
		if _, big := errors.AsType[*http.MaxBytesError](err); big {
			writeError(w, http.StatusRequestEntityTooLarge, "message is more than %d bytes", maxMessage)
			return false, nil, false
		}
		writeError(w, http.StatusBadRequest, "read message: %v", err)
		return false, nil, false
	}
	if !binary && !utf8.Valid(msg) {
		writeError(w, http.StatusBadRequest, "text message is not valid UTF-8 (send binary with ?binary=1)")
		return false, nil, false
	}
	return binary, msg, true
}

// sessionError answers the error err of an operation on session id.
func (h *handler) sessionError(w http.ResponseWriter, op, id string, err error) {
	switch {
	case errors.Is(err, wsrelay.ErrNotFound):
		writeError(w, http.StatusNotFound, "no such session %q", id)
	case errors.Is(err, wsrelay.ErrClosing):
		writeError(w, http.StatusConflict, "session %q is closing", id)
	case errors.Is(err, wsrelay.ErrTooBig):
		writeError(w, http.StatusRequestEntityTooLarge, "%s session %q: %v", op, id, err)
	case errors.Is(err, wsrelay.ErrBusy):
		// The backend holds the client's write side with a fragmented
		// message: a try later may pass.
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, "%s session %q: %v", op, id, err)
	default:
		h.log.Error("admin session operation failed", "op", op, "session", id, "error", err)
		writeError(w, http.StatusInternalServerError, "%s session %q: %v", op, id, err)
	}
}
