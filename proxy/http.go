package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/valyala/fasthttp"

	"github.com/wsgate/wsgate/internal/bufpool"
	"github.com/wsgate/wsgate/internal/netpoll"
	"github.com/wsgate/wsgate/routes"
	"github.com/wsgate/wsgate/upstream"
)

// client returns t's HTTP client, creating it on first use.
func client(t *upstream.Target) *fasthttp.HostClient {
	return t.Attached(newHostClient).(*fasthttp.HostClient)
}

// newHostClient returns the pooled HTTP client of a target.
func newHostClient(t *upstream.Target) any {
	up := t.Set().Config()
	connect := up.ConnectTimeout
	if connect <= 0 {
		connect = 5 * time.Second
	}
	var tlsConfig *tls.Config
	if t.TLS() {
		tlsConfig = t.TLSConfig()
	}
	maxConns := up.MaxConnections
	if maxConns <= 0 {
		maxConns = math.MaxInt32 // no cap (fasthttp's 0 would mean 512)
	}
	c := &fasthttp.HostClient{
		Addr:  t.Addr,
		IsTLS: t.TLS(),
		// The TLS handshake happens here, within the connect timeout,
		// so that a target that cannot be reached at all fails as a
		// dialError: nothing of the request was sent, and it may be
		// tried elsewhere whatever its method.
		Dial: func(addr string) (net.Conn, error) {
			c, err := (&net.Dialer{Timeout: connect}).Dial("tcp", addr)
			if err != nil {
				return nil, &dialError{err}
			}
			conn := netpoll.NewTCPConn(c)
			if tlsConfig == nil {
				return &idleConn{Conn: conn, timeout: up.ResponseTimeout}, nil
			}
			tc := tls.Client(conn, tlsConfig)
			ctx, cancel := context.WithTimeout(context.Background(), connect)
			err = tc.HandshakeContext(ctx)
			cancel()
			if err != nil {
				conn.Close()
				return nil, &dialError{err}
			}
			return &idleTLSConn{idleConn{Conn: tc, timeout: up.ResponseTimeout}}, nil
		},
		MaxConns:           maxConns,
		MaxConnWaitTimeout: connect,
		StreamResponseBody: true,
		// The most recently used idle connection first, as nginx's
		// upstream keepalive cache and Go's Transport do. FIFO cycles
		// every pooled connection: after a burst of small requests had
		// opened 64 of them, 1 MiB responses over 8 client connections
		// had p90 42 ms and p99 61 ms (8.7 ms and 9.5 ms with LIFO), and
		// connections never went idle long enough to be closed.
		ConnPoolStrategy:         fasthttp.LIFO,
		NoDefaultUserAgentHeader: true,
		DisablePathNormalizing:   true,
		ReadBufferSize:           16 << 10, // also the response head limit
		MaxIdleConnDuration:      30 * time.Second,
		RetryIfErr:               retryIfErr,
		TLSConfig:                tlsConfig,
	}
	return c
}

// idleTLSConn is an idleConn over a TLS connection whose handshake is
// done; fasthttp sees its Handshake method and does not wrap it in TLS
// again.
type idleTLSConn struct{ idleConn }

// Handshake returns the result of the finished handshake.
func (c *idleTLSConn) Handshake() error { return c.Conn.(*tls.Conn).Handshake() }

// balanceKey returns the request's value of the key its upstream balances
// on (see upstream.Set.Key), or nil. buf holds a client_ip key.
func balanceKey(ctx *fasthttp.RequestCtx, sn *snapshot, set *upstream.Set, buf *[16]byte) []byte {
	k := set.Key()
	switch k.Kind {
	case upstream.KeyClientIP:
		return clientIP(ctx, sn.trusted, buf)
	case upstream.KeyHeader:
		return ctx.Request.Header.Peek(k.Name)
	case upstream.KeyCookie:
		return ctx.Request.Header.Cookie(k.Name)
	case upstream.KeyQuery:
		return ctx.QueryArgs().Peek(k.Name)
	}
	return nil
}

// clientIP returns the client's address as the key of client_ip hashing:
// the peer's, or, when the peer is a trusted proxy, the last address in
// X-Forwarded-For that is not itself a trusted proxy (the leftmost ones
// could be forged by the client). It is the address's 16-byte form (an
// IPv4 address IPv4-mapped) written into buf, so that a client has one key
// whether it reaches wsgate directly or through a proxy, over IPv4 or a
// dual-stack listener, on every replica. An X-Forwarded-For element that
// is not an address is the key as written.
func clientIP(ctx *fasthttp.RequestCtx, trusted []netip.Prefix, buf *[16]byte) []byte {
	addr := peerAddr(ctx)
	if len(trusted) > 0 && isTrusted(addr, trusted) {
		lines := ctx.Request.Header.PeekAll("X-Forwarded-For")
	scan:
		for i := len(lines) - 1; i >= 0; i-- {
			v := lines[i]
			for len(v) > 0 {
				j := bytes.LastIndexByte(v, ',')
				elem := trimOWS(v[j+1:])
				v = v[:max(j, 0)]
				if len(elem) == 0 {
					continue
				}
				a, ok := parseAddr(elem)
				if !ok {
					return elem
				}
				if a = a.Unmap(); !isTrusted(a, trusted) {
					addr = a
					break scan
				}
			}
		}
	}
	*buf = addr.As16()
	return buf[:]
}

// parseAddr parses an IP address without allocating: netip.ParseAddr
// keeps a zone, so a string conversion of b would be copied to the heap.
// The string here shares b's bytes (the request header, unchanged during
// the call), and zones are refused first, so nothing keeps it.
func parseAddr(b []byte) (netip.Addr, bool) {
	if len(b) == 0 || bytes.IndexByte(b, '%') >= 0 {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(unsafe.String(unsafe.SliceData(b), len(b)))
	return a, err == nil
}

// retryIfErr retries an idempotent request once when a pooled keep-alive
// connection turned out to be closed by the backend before it answered;
// never on timeouts (a 504 must not take several response timeouts).
//
// A request that found its pooled connection closed before any byte was
// written (errStaleConn) is retried whatever its method, on another
// pooled or a new connection: several pooled connections may have gone
// stale together, up to fasthttp's 5 attempts.
func retryIfErr(req *fasthttp.Request, attempts int, err error) (resetTimeout, retry bool) {
	if errors.Is(err, errStaleConn) {
		return false, true
	}
	if attempts > 1 {
		return false, false
	}
	switch string(req.Header.Method()) {
	case "GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE":
	default:
		return false, false
	}
	return true, errors.Is(err, io.EOF) || errors.Is(err, fasthttp.ErrConnectionClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// idleConn applies the upstream response timeout to every read and
// write: the response head must start, the body keep flowing, and a
// request body keep draining within it (like nginx's proxy_read_timeout
// and proxy_send_timeout). HostClient.ReadTimeout would instead cut long
// streams such as server-sent events, and HostClient has no per-write
// idle bound, so a backend that stops reading an upload would hold the
// request forever.
type idleConn struct {
	net.Conn
	timeout time.Duration
	// lastRead is when the last read ended: the connection has been idle
	// since, in the pool, if the next operation is a write. writing says
	// a request is being written (reset by the next read).
	lastRead time.Time
	writing  bool
	// The deadlines last set, moved forward only once they are more than
	// timeout/16 behind: a busy connection then pays for a timer update
	// every few seconds instead of on every read and write, and each
	// silence is still bounded by at least 15/16 of the timeout.
	readBy, writeBy time.Time
}

func (c *idleConn) Read(p []byte) (int, error) {
	now := time.Now()
	c.writing = false
	if c.timeout > 0 {
		if by, ok := c.movedAt(now, c.readBy); ok {
			c.readBy = by
			_ = c.Conn.SetReadDeadline(by)
		}
	}
	// The start of the last read stands for its end: it overstates the
	// idle time by the wait for the answer, which only makes a check a
	// little more likely, and saves a clock read.
	c.lastRead = now
	return c.Conn.Read(p)
}

// A pooled connection is checked (peerGone, one recv(2)) before a request
// is written on it. fasthttp does not watch idle connections: one the
// backend closed meanwhile (an idle timeout, a restart, a crash) takes the
// request and fails it, and a POST that went out on it can never be sent
// again. A request that is not idempotent is checked on every reuse. An
// idempotent one is sent again after such a failure anyway (fasthttp's
// retryIfErr, then the next target), so it is checked only after
// idempotentCheckAfter of quiet, the idle timeouts backends close
// connections after: a busy pool pays nothing. Measured on the 13 B GET
// load, checking every reuse cost 3 to 11 % of the requests per
// CPU-second (0.84 more recv(2) per request, 9 paired runs each).
const idempotentCheckAfter = time.Second

func (c *idleConn) Write(p []byte) (int, error) {
	now := time.Now()
	if !c.writing {
		// The first write of a request: it starts with the request line.
		c.writing = true
		if !c.lastRead.IsZero() && (!idempotentLine(p) || now.Sub(c.lastRead) >= idempotentCheckAfter) && netpoll.PeerGone(c.Conn) {
			return 0, errStaleConn // nothing written
		}
	}
	if c.timeout > 0 {
		if by, ok := c.movedAt(now, c.writeBy); ok {
			c.writeBy = by
			_ = c.Conn.SetWriteDeadline(by)
		}
	}
	return c.Conn.Write(p)
}

// idempotentLine reports whether a request line starts with an
// idempotent method (RFC 9110 §9.2.2).
func idempotentLine(p []byte) bool {
	for _, m := range idempotentMethods {
		if len(p) > len(m) && string(p[:len(m)]) == m && p[len(m)] == ' ' {
			return true
		}
	}
	return false
}

var idempotentMethods = [...]string{"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"}

// movedAt returns the deadline for an operation starting at now and
// whether it is far enough past the one in force to be worth setting.
// Read and Write each touch only their own field.
func (c *idleConn) movedAt(now, current time.Time) (time.Time, bool) {
	by := now.Add(c.timeout)
	return by, by.Sub(current) > c.timeout/16
}

// SetReadDeadline is a no-op: Read owns the read deadline.
func (c *idleConn) SetReadDeadline(time.Time) error { return nil }

// SetWriteDeadline is a no-op: Write owns the write deadline.
func (c *idleConn) SetWriteDeadline(time.Time) error { return nil }

// serveHTTP forwards a plain HTTP request to r's upstream and streams the
// response back.
func (h *Handler) serveHTTP(ctx *fasthttp.RequestCtx, sn *snapshot, r *routes.Route) {
	set := sn.sets[r.Upstream]
	limit := r.MaxRequestBody

	// Body limit before any byte goes upstream (413).
	if cl := ctx.Request.Header.ContentLength(); limit > 0 && int64(cl) > limit {
		h.fail(ctx, r, "", fasthttp.StatusRequestEntityTooLarge, "request body too large", nil)
		ctx.SetConnectionClose()
		return
	}

	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	ctx.Request.Header.CopyTo(&req.Header)
	removeHopByHop(&req.Header)
	req.Header.ResetConnectionClose()
	setForwarded(&req.Header, &ctx.Request.Header, peerAddr(ctx), ctx.IsTLS(), sn.trusted)
	applyRequestOps(&req.Header, &r.RequestHeaders)
	setUpstreamURI(req, ctx, r)

	// A body held in memory can be sent again: after a connection that
	// failed before any byte went out (any method), or one that broke
	// before the answer (idempotent requests only).
	inMemory := true
	bodyLen := 0 // of a streamed body
	var body *requestBody
	if stream := ctx.RequestBodyStream(); stream != nil {
		body = &requestBody{r: stream, limit: limit, conn: ctx.Conn(), timeout: sn.body}
		cl := ctx.Request.Header.ContentLength()
		if up := set.Config(); up.Retries > 0 && cl >= 0 && int64(cl) <= up.RetryBodyLimit {
			bp, err := readBody(body, cl)
			if err != nil {
				status, msg := bodyStatus(body)
				h.fail(ctx, r, "", status, msg, nil)
				ctx.SetConnectionClose()
				return
			}
			defer bodyBufs.Put(bp)
			req.SetBodyRaw(*bp)
		} else {
			inMemory = false // streamed: gone once sent
			bodyLen = cl
		}
	} else {
		req.SetBodyRaw(ctx.Request.Body())
	}
	replayable := inMemory && isIdempotent(ctx)

	resp := fasthttp.AcquireResponse()
	var (
		err error
		t   *upstream.Target
		a   upstream.Attempt
	)
	var kb [16]byte
	set.Begin(&a, ctx.Time(), balanceKey(ctx, sn, set, &kb))
	for {
		next := a.Next()
		if next == nil {
			if t == nil {
				err = errNoTarget // nothing was tried: no target can take it
			}
			break
		}
		t = next
		req.URI().SetScheme(t.Scheme)
		if !inMemory {
			req.SetBodyStream(body, bodyLen) // fasthttp drops it once written
		}
		err = client(t).Do(req, resp)
		if err == nil {
			a.Responded(t, resp.StatusCode())
			break
		}
		result := tryResult(err)
		switch {
		case body != nil && (body.tooLarge || body.err != nil):
			result = upstream.Aborted // the client's body failed, not the target
		case !inMemory && !body.unsent() && (result == upstream.Busy || result == upstream.Stale || result == upstream.ConnectFailed):
			// Part of the streamed body is gone (into fasthttp's
			// buffer, or out): what is left cannot be sent again.
			result = upstream.Broken
		}
		if !a.Failed(t, result, replayable, err) {
			break
		}
		h.routeStats(r).retries.Add(1)
	}
	if err != nil {
		fasthttp.ReleaseResponse(resp)
		status, msg := upstreamStatus(err)
		if body != nil && (body.tooLarge || body.err != nil) {
			status, msg = bodyStatus(body)
		} else {
			h.countUpstreamError(r, err)
		}
		h.fail(ctx, r, targetAddr(t), status, msg, err)
		if status == fasthttp.StatusServiceUnavailable {
			ctx.Response.Header.Set("Retry-After", strconv.Itoa(set.RetryAfter()))
		}
	}
	if body != nil && !body.eof {
		// The client's body was not read to its end: the connection
		// cannot carry another request, or what is left of the body
		// would be read as the next one (smuggling). After fail, which
		// resets the response.
		ctx.SetConnectionClose()
	}
	if err != nil {
		return
	}
	if resp.StatusCode() == fasthttp.StatusSwitchingProtocols {
		// wsgate forwarded no Upgrade, so nothing may switch (RFC 9110
		// §15.2.2); relaying the 101 would leave the client believing
		// its connection changed protocol.
		_ = resp.CloseBodyStream()
		fasthttp.ReleaseResponse(resp)
		t.Release()
		h.countUpstreamError(r, errUnexpectedSwitch)
		h.fail(ctx, r, t.Addr, fasthttp.StatusBadGateway, "bad gateway", errUnexpectedSwitch)
		return
	}

	resp.Header.CopyTo(&ctx.Response.Header)
	// CopyTo also copies what describes the backend's message rather
	// than wsgate's: an HTTP/1.0 status line (an intermediary sends its
	// own version, RFC 9110 §6.2) and fasthttp's default Content-Type,
	// which would be added to a response that had none.
	ctx.Response.Header.SetProtocol(http11)
	ctx.Response.Header.SetNoDefaultContentType(true)
	// Hop-by-hop removal first: ResetConnectionClose would drop the
	// Connection lines it reads.
	removeHopByHop(&ctx.Response.Header)
	ctx.Response.Header.ResetConnectionClose()
	if r.RewriteRedirects {
		rewriteRedirects(&ctx.Response.Header, r, t, req.URI().Host(), clientScheme(ctx, sn.trusted))
	}
	applyResponseOps(&ctx.Response.Header, &r.ResponseHeaders)
	if c := a.StickyCookie(t, ctx.IsTLS()); c != "" {
		ctx.Response.Header.Add("Set-Cookie", c)
	}

	stream := resp.BodyStream()
	if size := resp.Header.ContentLength(); stream != nil && !ctx.IsHead() && size >= 0 && size <= smallBody {
		// A small body of known size is read now: the upstream
		// connection goes back to the pool at once and fasthttp writes
		// head and body together. A backend that breaks off inside it
		// gets an honest 502 instead of a truncated response.
		err := resp.BodyWriteTo(ctx.Response.BodyWriter())
		fasthttp.ReleaseResponse(resp)
		t.Release()
		if err != nil {
			h.countUpstreamError(r, err)
			h.fail(ctx, r, t.Addr, fasthttp.StatusBadGateway, "bad gateway", err)
			ctx.SetConnectionClose()
			return
		}
		h.logRequest(ctx, r, ctx.Response.StatusCode(), t.Addr)
		return
	}
	if stream == nil || ctx.IsHead() {
		if !ctx.IsHead() {
			ctx.Response.SetBody(resp.Body())
		}
		fasthttp.ReleaseResponse(resp)
		t.Release()
		h.logRequest(ctx, r, ctx.Response.StatusCode(), t.Addr)
		return
	}
	size := resp.Header.ContentLength()
	if size < 0 {
		size = -1 // chunked toward the client, also for read-until-close bodies
	}
	rb := &responseBody{
		h: h, resp: resp, r: stream, conn: ctx.Conn(), timeout: sn.write, target: t,
		logAttrs: h.accessAttrs(ctx, r, t.Addr),
		stats:    h.routeStats(r),
		method:   methodClass(ctx.Method()),
		status:   resp.StatusCode(),
		start:    ctx.Time(),
	}
	// fasthttp writes the body after the handler returns and then calls
	// rb.Close, which releases the upstream connection.
	ctx.Response.SetBodyStream(rb, size)
}

// smallBody is the largest response body of known length that is read
// whole before answering; longer and chunked bodies stream.
const smallBody = 64 << 10

// isAbsoluteForm reports whether the request target is in absolute form
// ("GET http://host/path"), not origin form ("/path") or "*".
func isAbsoluteForm(ctx *fasthttp.RequestCtx) bool {
	uri := ctx.Request.Header.RequestURI()
	return len(uri) > 0 && uri[0] != '/' && uri[0] != '*'
}

// setUpstreamURI sets the request target sent upstream: the client's raw
// path, minus the route prefix with strip_prefix, plus the query; and the
// Host (the client's, or the route's request_headers.set Host).
func setUpstreamURI(req *fasthttp.Request, ctx *fasthttp.RequestCtx, r *routes.Route) {
	u := req.URI()
	// The path goes upstream as the client wrote it (percent-encoding
	// kept, like nginx's proxy_pass without a URI); routing used the
	// normalised form, so what a route allows is decided on what the
	// backend will resolve.
	path := ctx.URI().PathOriginal()
	if r.StripPrefix && r.PathPrefix != "" {
		var buf [512]byte
		path = stripPrefix(buf[:0], path, ctx.Path(), strings.TrimSuffix(r.PathPrefix, "/"))
	}
	u.SetPathBytes(path) // sent verbatim: the HostClient has DisablePathNormalizing
	u.SetQueryStringBytes(ctx.URI().QueryString())
	u.SetHostBytes(upstreamHost(ctx, r))
	// Userinfo in an absolute-form target ("http://user:pw@host/") would
	// become an Authorization header when fasthttp writes the request,
	// after the route's header edits (RFC 9110 §4.2.4: treat as an error).
	u.SetUsername("")
	u.SetPassword("")
}

// upstreamHost returns the Host a request is sent upstream with: the
// client's, or the route's request_headers.set Host.
func upstreamHost(ctx *fasthttp.RequestCtx, r *routes.Route) []byte {
	host := ctx.Host()
	for _, kv := range r.RequestHeaders.Set {
		if strings.EqualFold(kv.Name, "Host") {
			host = []byte(kv.Value) // the last set wins, as in applyRequestOps
		}
	}
	return host
}

// stripPrefix appends to dst the request path without the route prefix.
// It cuts the prefix from the raw path when the raw path starts with it on
// a segment boundary; otherwise (the prefix was percent-encoded or reached
// through dot segments) it cuts it from the normalised path and
// re-escapes the rest. The result always starts with "/".
func stripPrefix(dst, raw, normalized []byte, prefix string) []byte {
	if hasSegmentPrefix(raw, prefix) {
		rest := raw[len(prefix):]
		if len(rest) == 0 || rest[0] != '/' {
			dst = append(dst, '/')
		}
		return append(dst, rest...)
	}
	rest := normalized
	if hasSegmentPrefix(normalized, prefix) {
		rest = normalized[len(prefix):]
	}
	if len(rest) == 0 || rest[0] != '/' {
		dst = append(dst, '/')
	}
	return appendEscapedPath(dst, rest)
}

// hasSegmentPrefix reports whether path starts with prefix followed by
// "/" or the end ("/" itself prefixes everything).
func hasSegmentPrefix(path []byte, prefix string) bool {
	if prefix == "/" {
		return len(path) > 0 && path[0] == '/'
	}
	return len(path) >= len(prefix) && string(path[:len(prefix)]) == prefix &&
		(len(path) == len(prefix) || path[len(prefix)] == '/')
}

// appendEscapedPath appends a decoded path to dst, percent-encoding every
// byte that may not appear raw in a path (RFC 3986 §3.3: pchar and "/").
func appendEscapedPath(dst, p []byte) []byte {
	const hex = "0123456789ABCDEF"
	for _, c := range p {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			strings.IndexByte("-._~!$&'()*+,;=:@/", c) >= 0:
			dst = append(dst, c)
		default:
			dst = append(dst, '%', hex[c>>4], hex[c&15])
		}
	}
	return dst
}

// dialError marks a failure to connect to a target (TCP or TLS): nothing
// of the request was sent.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// tryResult classifies a failed try for the upstream set.
func tryResult(err error) upstream.Result {
	var de *dialError
	switch {
	case errors.As(err, &de):
		if isTimeout(de.err) {
			return upstream.ConnectTimedOut
		}
		return upstream.ConnectFailed
	case errors.Is(err, errStaleConn):
		return upstream.Stale
	case errors.Is(err, fasthttp.ErrNoFreeConns):
		return upstream.Busy
	case errors.Is(err, fasthttp.ErrTimeout), isTimeout(err):
		return upstream.TimedOut
	}
	return upstream.Broken
}

// targetAddr returns t's address for logs; "" for none.
func targetAddr(t *upstream.Target) string {
	if t == nil {
		return ""
	}
	return t.Addr
}

// isIdempotent reports whether the request may be sent twice without a
// second side effect: its method is idempotent (RFC 9110 §9.2.2), or the
// client marked it with Idempotency-Key.
func isIdempotent(ctx *fasthttp.RequestCtx) bool {
	switch string(ctx.Method()) { // no allocation: switch on a conversion
	case fasthttp.MethodGet, fasthttp.MethodHead, fasthttp.MethodOptions, fasthttp.MethodPut, fasthttp.MethodDelete, fasthttp.MethodTrace:
		return true
	}
	return len(ctx.Request.Header.Peek("Idempotency-Key")) > 0
}

// bodyBufs holds the buffers of request bodies kept for a retry.
var bodyBufs = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}

// readBody reads a request body of n bytes into a pooled buffer; put the
// buffer back when the request is done.
func readBody(body *requestBody, n int) (*[]byte, error) {
	bp := bodyBufs.Get().(*[]byte)
	if cap(*bp) < n {
		*bp = make([]byte, n)
	}
	*bp = (*bp)[:n]
	if _, err := io.ReadFull(body, *bp); err != nil {
		if body.err == nil && !body.tooLarge {
			body.err = err // a body shorter than its Content-Length
		}
		bodyBufs.Put(bp)
		return nil, err
	}
	body.eof = true // Content-Length bytes are the whole body
	return bp, nil
}

// bodyStatus returns the status for a client whose request body failed.
func bodyStatus(body *requestBody) (int, string) {
	switch {
	case body.tooLarge:
		return fasthttp.StatusRequestEntityTooLarge, "request body too large"
	case body.err != nil && isTimeout(body.err):
		return fasthttp.StatusRequestTimeout, "request body timeout"
	}
	// A malformed body (bad chunk framing, a client gone mid-body) is
	// the client's fault, not the backend's.
	return fasthttp.StatusBadRequest, "bad request body"
}

// upstreamStatus maps an upstream error to the status the client gets:
// no target could take the request 503, timeouts 504, no free connection
// 503, anything else (refused, reset, garbage instead of HTTP) 502.
func upstreamStatus(err error) (int, string) {
	switch {
	case errors.Is(err, errNoTarget):
		return fasthttp.StatusServiceUnavailable, "no upstream target available"
	case errors.Is(err, fasthttp.ErrTimeout), errors.Is(err, fasthttp.ErrDialTimeout), isTimeout(err):
		return fasthttp.StatusGatewayTimeout, "upstream timed out"
	case errors.Is(err, fasthttp.ErrNoFreeConns):
		return fasthttp.StatusServiceUnavailable, "upstream busy"
	}
	return fasthttp.StatusBadGateway, "bad gateway"
}

// fail answers with a short plain error and logs the cause.
func (h *Handler) fail(ctx *fasthttp.RequestCtx, r *routes.Route, backend string, status int, msg string, err error) {
	ctx.Response.Reset()
	plainError(ctx, status, msg)
	if err != nil {
		h.log.Warn("upstream error", "route", r.Name, "backend", backend, "status", status, "error", err.Error())
	}
	h.logRequest(ctx, r, status, backend)
}

var (
	errNoTarget         = errors.New("no target can take the request (all unhealthy, ejected or at max_connections)")
	errStaleConn        = errors.New("pooled connection closed by the backend while idle")
	errBodyTooLarge     = errors.New("request body too large")
	errUnexpectedSwitch = errors.New("backend switched protocols on a request without Upgrade")
	http11              = []byte("HTTP/1.1")
)

// requestBody streams a client's request body upstream, enforcing the
// route's size limit (fasthttp's MaxRequestBodySize does not apply to
// streamed bodies) and a read-inactivity timeout.
type requestBody struct {
	r        io.Reader
	pending  []byte // read from the client, not sent (see WriteTo)
	limit    int64
	n        int64
	conn     net.Conn
	timeout  time.Duration
	eof      bool
	tooLarge bool
	err      error // the client's body failed: bad framing, timeout, gone
}

func (b *requestBody) Read(p []byte) (int, error) {
	if b.timeout > 0 {
		_ = b.conn.SetReadDeadline(time.Now().Add(b.timeout))
	}
	n, err := b.r.Read(p)
	b.n += int64(n)
	if b.limit > 0 && b.n > b.limit {
		b.tooLarge = true
		return 0, errBodyTooLarge
	}
	switch {
	case err == io.EOF:
		b.eof = true
	case err != nil:
		b.err = err
	}
	return n, err
}

// SupportsBodyWriteTo tells fasthttp to write the body with WriteTo.
func (b *requestBody) SupportsBodyWriteTo() bool { return true }

// WriteTo writes the body to w, fasthttp's buffered writer to the
// upstream (or its chunk writer); see copyBody.
//
// The first write of a request on a reused connection may find that the
// backend closed it (errStaleConn): then nothing reached the socket, and
// the request may go out again on another connection. So that no body
// byte is lost to that, the head is flushed before the first body byte is
// read where w allows it (a body of known length), and a chunk that met
// errStaleConn (a chunked body: each chunk is flushed) is kept in pending
// and written first by the next WriteTo.
func (b *requestBody) WriteTo(w io.Writer) (int64, error) {
	if bw, ok := w.(*bufio.Writer); ok {
		if err := bw.Flush(); err != nil {
			return 0, err
		}
	}
	var written int64
	if len(b.pending) > 0 {
		if _, err := w.Write(b.pending); err != nil {
			return 0, err // a second stale connection: pending stays
		}
		written, b.pending = int64(len(b.pending)), b.pending[:0]
	}
	n, err := copyBodyKeep(w, b, b)
	return written + n, err
}

// unsent reports whether every body byte read from the client so far is
// still at hand (none, or all of it in pending): the request can then go
// out again whole.
func (b *requestBody) unsent() bool { return b.n == int64(len(b.pending)) }

// copyBody copies a streamed body from r to w through a pooled 32 KiB
// buffer, writing each read as it arrives: toward a chunked message that
// is one chunk per read, so events still go out one by one. io.EOF ends
// it without error.
//
// Without it fasthttp copies a body of known length with
// bufio.Writer.ReadFrom: 4 KiB reads into its buffer, then
// net.TCPConn.ReadFrom, whose io.Copy allocates 32 KiB per response and
// writes through the runtime's blocking write path instead of
// rawTCPConn's raw writes (1 MiB responses: 14% less CPU per MiB here);
// and a chunked one through a 4 KiB buffer, one chunk and flush per
// 4 KiB.
//
// Measured and not kept, on 1 MiB responses: 64, 128 and 256 KiB buffers
// (2,600, 2,600 and 2,360 MiB per CPU-second against 3,300 at 32 KiB),
// and splice(2) from the upstream socket through a pipe to the client
// (per CPU-second within noise of this copy, MiB/s 5-25% lower: pages
// pinned until the client reads them cost the backend new ones).
func copyBody(w io.Writer, r io.Reader) (int64, error) { return copyBodyKeep(w, r, nil) }

// copyBodyKeep is copyBody that, when a write fails with errStaleConn
// (nothing was sent), keeps the chunk in keep.pending.
func copyBodyKeep(w io.Writer, r io.Reader, keep *requestBody) (int64, error) {
	bp := bufpool.Get()
	defer bufpool.Put(bp)
	buf := *bp
	var written int64
	for {
		n, rerr := r.Read(buf)
		if n > 0 {
			m, err := w.Write(buf[:n])
			written += int64(m)
			if err == nil && m < n {
				err = io.ErrShortWrite
			}
			if err != nil {
				if keep != nil && m == 0 && errors.Is(err, errStaleConn) {
					keep.pending = append(keep.pending[:0], buf[:n]...)
				}
				return written, err
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				rerr = nil
			}
			return written, rerr
		}
	}
}

// responseBody streams an upstream response to the client. Each chunk
// moves the client write deadline forward, so a long stream (server-sent
// events) lives as long as it keeps flowing. Close releases the upstream
// connection and writes the access log; closing before the end means the
// client went away (logged as 499) or the upstream broke.
type responseBody struct {
	h        *Handler
	target   *upstream.Target // released by Close
	resp     *fasthttp.Response
	r        io.Reader
	conn     net.Conn
	timeout  time.Duration
	n        int64
	eof      bool
	readErr  error
	logAttrs []slog.Attr
	stats    *routeStats
	method   int // methodClass of the request
	status   int
	start    time.Time
}

func (b *responseBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.n += int64(n)
	if n > 0 && b.timeout > 0 {
		_ = b.conn.SetWriteDeadline(time.Now().Add(b.timeout))
	}
	switch {
	case err == io.EOF:
		b.eof = true
	case err != nil:
		b.readErr = err
	}
	return n, err
}

// SupportsBodyWriteTo tells fasthttp to write the body with WriteTo.
func (b *responseBody) SupportsBodyWriteTo() bool { return true }

// WriteTo writes the body to w, fasthttp's buffered writer to the client
// (or its chunk writer for a body of unknown length); see copyBody.
func (b *responseBody) WriteTo(w io.Writer) (int64, error) { return copyBody(w, b) }

func (b *responseBody) Close() error {
	_ = b.resp.CloseBodyStream()
	fasthttp.ReleaseResponse(b.resp)
	b.target.Release()
	b.count()
	if !b.h.accessLog && b.readErr == nil {
		return nil
	}
	attrs := append(b.logAttrs,
		slog.Int64("bytes", b.n),
		slog.Int64("duration_ms", time.Since(b.start).Milliseconds()))
	status, level, msg := b.status, slog.LevelInfo, "request"
	switch {
	case b.readErr != nil:
		// The upstream broke mid-body; fasthttp aborts the client
		// connection, so the truncation is visible.
		level, msg = slog.LevelWarn, "upstream body error"
		attrs = append(attrs, slog.String("error", b.readErr.Error()))
	case !b.eof:
		status = 499 // fasthttp stopped reading: the client went away
	}
	attrs = append(attrs, slog.Int("status", status))
	b.h.log.LogAttrs(context.Background(), level, msg, attrs...)
	return nil
}

// count counts the request of a streamed response once its body ended.
func (b *responseBody) count() {
	status := b.status
	switch {
	case b.readErr != nil:
		b.stats.upstreamErrors[errorKind(b.readErr)].Add(1)
	case !b.eof:
		status = 499
		b.stats.clientGone.Add(1)
	}
	b.stats.requests[b.method][statusClass(status)].Add(1)
	b.stats.duration.observe(time.Since(b.start))
}

// accessAttrs captures the request fields of the access log line, for
// responses that finish after the handler returned.
func (h *Handler) accessAttrs(ctx *fasthttp.RequestCtx, r *routes.Route, backend string) []slog.Attr {
	if !h.accessLog {
		return nil
	}
	return []slog.Attr{
		slog.String("method", string(ctx.Method())),
		slog.String("host", string(ctx.Host())),
		slog.String("uri", string(ctx.RequestURI())),
		slog.String("route", r.Name),
		slog.String("backend", backend),
		slog.String("client", ctx.RemoteAddr().String()),
		slog.String("request_id", string(ctx.Request.Header.PeekBytes(hdrRequestID))),
	}
}
