package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/wsgate/wsgate/internal/netpoll"
)

// serverLog is the error handler and the logger of one front-end server
// (see NewServer). A request fasthttp could not read is answered and
// logged in requestError, once, in wsgate's words. fasthttp's worker pool
// then logs the same error again as what ended the connection; Printf
// drops that line and passes fasthttp's other messages to slog.
type serverLog struct {
	h             *Handler
	headerBytes   int           // limits.header_bytes, for the 431 line
	headerTimeout time.Duration // timeouts.request_header, for the 408 line

	mu sync.Mutex
	// logged holds the connections whose error requestError logged and
	// fasthttp is about to log too, by connKey; Printf takes them out.
	logged map[string]struct{} // guarded by mu
}

// maxLogged bounds serverLog.logged. An entry lives from requestError to
// fasthttp's log call right after it on the same goroutine, so the map
// stays tiny; only a fasthttp that stopped logging some error it logs
// today (see fasthttpLogs) could leave entries behind, and the bound
// keeps that from growing.
const maxLogged = 1024

// requestError answers a request fasthttp could not read: it is
// fasthttp.Server.ErrorHandler. fasthttp closes the connection after it.
func (s *serverLog) requestError(ctx *fasthttp.RequestCtx, err error) {
	client := ctx.RemoteAddr().String()
	var rh tls.RecordHeaderError
	switch {
	case errors.As(err, &rh) && rh.Conn != nil && looksLikeHTTP(rh.RecordHeader):
		ctx.SetConnectionClose()
		s.h.log.Info("plain HTTP on TLS listener", "client", client)
		answerPlainHTTP(rh.Conn, rh.RecordHeader)
	case isTLSHandshakeError(err):
		// Nothing useful can be written on a connection whose TLS
		// handshake failed.
		ctx.SetConnectionClose()
		s.h.log.Debug("tls handshake failed", "client", client, "error", err.Error())
	default:
		status, msg, why := s.describe(err)
		plainError(ctx, status, msg)
		s.h.log.Info("bad request", "status", status, "client", client, "error", why)
	}
	s.remember(ctx.Conn(), err)
}

// describe returns the status, the response text and the log text of a
// request fasthttp could not read. A head over ReadBufferSize gets 431
// (RFC 6585 §5; nginx answers 400 "Request Header Or Cookie Too Large").
func (s *serverLog) describe(err error) (status int, msg, why string) {
	var small *fasthttp.ErrSmallBuffer
	switch {
	case errors.As(err, &small):
		return fasthttp.StatusRequestHeaderFieldsTooLarge, "request header too large",
			"request head larger than limits.header_bytes (" + strconv.Itoa(s.headerBytes) + " bytes)"
	case isTimeout(err):
		// ReadTimeout covers the head and a body fasthttp reads before
		// the handler (one of known length up to bufferedBodyMax).
		return fasthttp.StatusRequestTimeout, "request timeout",
			"request not complete within timeouts.request_header (" + s.headerTimeout.String() + ")"
	case errors.Is(err, fasthttp.ErrUnsupportedTransferEncoding):
		return fasthttp.StatusNotImplemented, "unsupported transfer coding", "unsupported transfer coding"
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		return fasthttp.StatusRequestEntityTooLarge, "request body too large", "request body too large"
	}
	return fasthttp.StatusBadRequest, "bad request", parseErrorText(err)
}

// parseErrorText words a fasthttp parse error for the log: "error when
// reading request headers: fasthttp: cannot find http request method:
// buffer size=11" becomes "malformed request head: cannot find http
// request method".
func parseErrorText(err error) string {
	t := err.Error()
	what := "malformed request: "
	if rest, ok := strings.CutPrefix(t, "error when reading request headers: "); ok {
		what, t = "malformed request head: ", rest
	}
	if i := strings.Index(t, ": buffer size="); i >= 0 {
		t = t[:i]
	}
	return what + strings.ReplaceAll(t, "fasthttp: ", "")
}

// isTLSHandshakeError reports whether err comes from a failed TLS
// handshake (a bad hello, a client that gave up, an alert either side
// sent: crypto/tls returns those as a *net.OpError "remote error" or
// "local error" around its unexported alert type).
func isTLSHandshakeError(err error) bool {
	var rh tls.RecordHeaderError
	var alert tls.AlertError
	var op *net.OpError
	return errors.As(err, &rh) || errors.As(err, &alert) ||
		(errors.As(err, &op) && (op.Op == "remote error" || op.Op == "local error")) ||
		strings.HasPrefix(err.Error(), "tls: ")
}

// serveConnError is the format of the line fasthttp's worker pool logs
// for the error that ended a connection (workerpool.go, workerFunc): the
// local address, the remote address, the error.
const serveConnError = "error when serving connection %q<->%q: %v"

// Printf logs fasthttp's messages as warnings, except its repeat of an
// error requestError logged.
func (s *serverLog) Printf(format string, args ...any) {
	if format == serveConnError && len(args) == 3 {
		local, ok1 := args[0].(net.Addr)
		remote, ok2 := args[1].(net.Addr)
		if ok1 && ok2 && s.forget(connKey(local, remote)) {
			return
		}
	}
	s.h.log.Warn("fasthttp", "message", fmt.Sprintf(format, args...))
}

// remember notes that requestError logged the error that ends c, when
// fasthttp will log it too.
func (s *serverLog) remember(c net.Conn, err error) {
	if c == nil || !fasthttpLogs(err) {
		return
	}
	key := connKey(c.LocalAddr(), c.RemoteAddr())
	s.mu.Lock()
	if s.logged == nil || len(s.logged) >= maxLogged {
		s.logged = map[string]struct{}{}
	}
	s.logged[key] = struct{}{}
	s.mu.Unlock()
}

// forget reports whether requestError logged the error of the connection
// key, and forgets it.
func (s *serverLog) forget(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.logged[key]
	delete(s.logged, key)
	return ok
}

// connKey names a connection by its two addresses: unique among the open
// connections.
func connKey(local, remote net.Addr) string {
	if local == nil || remote == nil {
		return ""
	}
	return local.String() + " " + remote.String()
}

// fasthttpLogs reports whether fasthttp's worker pool logs err as what
// ended a connection: it leaves out these (workerFunc in workerpool.go,
// fasthttp v1.74.0).
func fasthttpLogs(err error) bool {
	t := err.Error()
	return !strings.Contains(t, "broken pipe") &&
		!strings.Contains(t, "reset by peer") &&
		!strings.Contains(t, "request headers: "+fasthttp.ErrSmallReadBuffer.Error()) &&
		!strings.Contains(t, "unexpected EOF") &&
		!strings.Contains(t, "i/o timeout") &&
		!errors.Is(err, fasthttp.ErrBadTrailer)
}

// looksLikeHTTP reports whether the first five bytes of a connection are
// the start of an HTTP/1 request line ("GET /", "POST ", "OPTIO"): an
// upper-case method, maybe followed by a space. A TLS record starts with
// its content type (0x14 to 0x18), an SSLv2 hello with a byte >= 0x80.
func looksLikeHTTP(head [5]byte) bool {
	if head[0] < 'A' || head[0] > 'Z' {
		return false
	}
	for _, c := range head[1:] {
		if c == ' ' {
			return true
		}
		if c < 'A' || c > 'Z' {
			return false
		}
	}
	return true
}

// plainHTTPBody is the answer to plain HTTP on a TLS listener (nginx's
// 497 "The plain HTTP request was sent to HTTPS port", sent as 400). It
// names no host: crypto/tls has read the request head, Host included,
// into a buffer no one else can read.
const plainHTTPBody = "This port speaks HTTPS: use https:// instead of http://\n"

var plainHTTPHead = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n" +
	"Content-Length: " + strconv.Itoa(len(plainHTTPBody)) + "\r\n\r\n"

// plainHTTPLinger bounds writing the answer to plain HTTP on a TLS
// listener and then reading what is left of the request.
const plainHTTPLinger = 2 * time.Second

// answerPlainHTTP writes a 400 on c, the TCP connection under a TLS
// connection whose first bytes, head, were an HTTP request, as net/http
// does. It runs on the connection's goroutine (fasthttp's ErrorHandler).
// Then it reads and drops what is left of the request until the client
// closes (the answer says Connection: close), up to 64 KiB or
// plainHTTPLinger: closing with unread bytes would reset the connection,
// and a reset can destroy the answer before the client reads it.
func answerPlainHTTP(c net.Conn, head [5]byte) {
	resp := plainHTTPHead + plainHTTPBody
	if string(head[:]) == "HEAD " {
		resp = plainHTTPHead
	}
	_ = c.SetWriteDeadline(time.Now().Add(plainHTTPLinger))
	if _, err := io.WriteString(c, resp); err != nil {
		return
	}
	if tc, ok := netpoll.TCPConn(c); ok {
		_ = tc.CloseWrite()
	}
	_ = c.SetReadDeadline(time.Now().Add(plainHTTPLinger))
	_, _ = io.CopyN(io.Discard, c, 64<<10)
}
