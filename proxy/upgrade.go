package proxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/wsgate/wsgate/internal/netpoll"
	"github.com/wsgate/wsgate/routes"
	"github.com/wsgate/wsgate/upstream"
	"github.com/wsgate/wsgate/wsrelay"
)

// isUpgradeAttempt reports whether the request asks for a WebSocket
// upgrade. Only the "websocket" token is ever honoured; any other Upgrade
// (h2c, …) is stripped with the other hop-by-hop headers.
func isUpgradeAttempt(ctx *fasthttp.RequestCtx) bool {
	return hasToken(ctx.Request.Header.Peek("Upgrade"), "websocket")
}

// checkClientHandshake validates a client opening handshake
// (RFC 6455 §4.2.1). It returns 0 when valid, or the status to answer.
func checkClientHandshake(ctx *fasthttp.RequestCtx) (int, string) {
	hd := &ctx.Request.Header
	switch {
	case !ctx.IsGet():
		return fasthttp.StatusBadRequest, "websocket handshake must use GET"
	case !hd.IsHTTP11():
		return fasthttp.StatusBadRequest, "websocket handshake needs HTTP/1.1"
	case !hasToken(hd.Peek("Connection"), "upgrade"):
		return fasthttp.StatusBadRequest, "websocket handshake without Connection: upgrade"
	case string(hd.Peek("Sec-WebSocket-Version")) != "13":
		return fasthttp.StatusUpgradeRequired, "unsupported Sec-WebSocket-Version (want 13)"
	}
	key := hd.Peek("Sec-WebSocket-Key")
	var decoded [18]byte
	if n, err := base64.StdEncoding.Decode(decoded[:], key); err != nil || n != 16 || len(key) != 24 {
		return fasthttp.StatusBadRequest, "invalid Sec-WebSocket-Key"
	}
	return 0, ""
}

// acceptKey computes Sec-WebSocket-Accept for key (RFC 6455 §4.2.2).
func acceptKey(key string) string {
	h := sha1.New()
	h.Write([]byte(key))
	h.Write([]byte("258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(h.Sum(nil))
}

// filterSubprotocols applies the route's subprotocol allow-list to the
// client's offer, before the backend sees it: the offer keeps the allowed
// protocols in the client's order (every Sec-WebSocket-Protocol line,
// RFC 6455 §11.3.4, becomes one). It reports false when the route
// requires a subprotocol and none of the offer is allowed; without that
// requirement the offer is then dropped, and the handshake goes on
// without a subprotocol.
func filterSubprotocols(hd *fasthttp.RequestHeader, ws *routes.WebSocket) bool {
	if len(ws.Subprotocols) == 0 {
		return true
	}
	var kept []string
	for _, line := range hd.PeekAll("Sec-WebSocket-Protocol") {
		for p := range strings.SplitSeq(string(line), ",") {
			p = strings.TrimSpace(p)
			if slices.Contains(ws.Subprotocols, p) && !slices.Contains(kept, p) {
				kept = append(kept, p)
			}
		}
	}
	hd.Del("Sec-WebSocket-Protocol")
	if len(kept) == 0 {
		return !ws.RequireSubprotocol
	}
	hd.Set("Sec-WebSocket-Protocol", strings.Join(kept, ", "))
	return true
}

// originAllowed applies the route's Origin allow-list. A request without
// Origin passes: browsers always send one, and the list exists to stop
// cross-site pages (RFC 6455 §10.2), not non-browser clients.
func originAllowed(ctx *fasthttp.RequestCtx, allow []string) bool {
	if len(allow) == 0 {
		return true
	}
	origin := ctx.Request.Header.Peek("Origin")
	if len(origin) == 0 {
		return true
	}
	for _, o := range allow {
		if strings.EqualFold(o, string(origin)) {
			return true
		}
	}
	return false
}

// serveWebSocket proxies a WebSocket handshake: it validates the client's
// request, dials the backend and completes the handshake there first, and
// only after a valid 101 upgrades the client. Every failure before that
// point is an ordinary HTTP response on a connection that stays HTTP.
//
// expires, when not zero, is when the session's token runs out (auth.jwt):
// the session is closed then.
func (h *Handler) serveWebSocket(ctx *fasthttp.RequestCtx, sn *snapshot, r *routes.Route, expires time.Time) {
	if status, msg := checkClientHandshake(ctx); status != 0 {
		plainError(ctx, status, msg)
		if status == fasthttp.StatusUpgradeRequired {
			ctx.Response.Header.Set("Sec-WebSocket-Version", "13")
			ctx.Response.Header.Set("Upgrade", "websocket")
		}
		h.logRequest(ctx, r, status, "")
		return
	}
	if !originAllowed(ctx, r.WebSocket.Origins) {
		plainError(ctx, fasthttp.StatusForbidden, "origin not allowed")
		h.logRequest(ctx, r, fasthttp.StatusForbidden, "")
		return
	}
	if !filterSubprotocols(&ctx.Request.Header, &r.WebSocket) {
		plainError(ctx, fasthttp.StatusBadRequest, "no allowed subprotocol offered")
		h.logRequest(ctx, r, fasthttp.StatusBadRequest, "")
		return
	}
	slot, status := h.admitSession(ctx, sn, r)
	if status != 0 {
		msg := "too many websocket sessions on this route"
		if status == fasthttp.StatusTooManyRequests {
			msg = "too many websocket sessions from this address"
		}
		plainError(ctx, status, msg)
		ctx.Response.Header.Set("Retry-After", "1")
		h.logRequest(ctx, r, status, "")
		return
	}
	if !h.reg.BeginUpgrade() {
		slot.release()
		plainError(ctx, fasthttp.StatusServiceUnavailable, "shutting down")
		ctx.SetConnectionClose()
		h.logRequest(ctx, r, fasthttp.StatusServiceUnavailable, "")
		return
	}
	var s *wsrelay.Session
	defer func() {
		if s == nil {
			slot.release() // the handshake failed: no session holds it
		}
		if h.reg.EndUpgrade(s) {
			h.recheck(s)
		}
	}()

	timeout := r.WebSocket.HandshakeTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	bctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	set := sn.sets[r.Upstream]
	var a upstream.Attempt
	bh, err := h.dialBackend(bctx, ctx, sn, r, set, &a)
	if err != nil {
		status, msg := handshakeStatus(err)
		backend := ""
		if bh != nil {
			backend = bh.target.Addr
		}
		h.countUpstreamError(r, err)
		h.fail(ctx, r, backend, status, msg, err)
		if status == fasthttp.StatusServiceUnavailable {
			ctx.Response.Header.Set("Retry-After", strconv.Itoa(set.RetryAfter()))
		}
		return
	}
	if c := a.StickyCookie(bh.target, ctx.IsTLS()); c != "" {
		ctx.Response.Header.Add("Set-Cookie", c)
	}
	if bh.resp.StatusCode != http.StatusSwitchingProtocols {
		h.relayRefusal(ctx, sn, r, bh)
		return
	}
	s = h.upgradeClient(ctx, sn, r, bh, slot, expires)
}

// backendHandshake is the backend's answer to wsgate's upgrade request.
type backendHandshake struct {
	target *upstream.Target
	conn   net.Conn
	br     *bufio.Reader // holds any bytes the backend sent after its head
	resp   *http.Response
}

// writerPool and handshakeReaders hold the buffers backend handshakes are
// written and read through.
var (
	writerPool       = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 2048) }}
	handshakeReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
)

// errBadHandshake marks a 101 that is not a valid WebSocket acceptance.
var errBadHandshake = errors.New("invalid websocket handshake response")

// dialBackend does the backend handshake on a target of set, chosen by
// its policy: it connects, writes the upgrade request and reads the head
// of the answer. A target that cannot be reached, or whose connection
// breaks before it answers, is left for the next one (the handshake is a
// GET without a body), within bctx and the upstream's retries; a timeout
// or an answer of any kind ends the search. On success the target is held
// by the caller (see upstream.Attempt): for a session until it ends, for
// a refusal until its body is relayed.
func (h *Handler) dialBackend(bctx context.Context, ctx *fasthttp.RequestCtx, sn *snapshot, r *routes.Route, set *upstream.Set, a *upstream.Attempt) (*backendHandshake, error) {
	var kb [16]byte
	set.Begin(a, ctx.Time(), balanceKey(ctx, sn, set, &kb))
	var (
		bh  *backendHandshake
		err error
	)
	for {
		t := a.Next()
		if t == nil {
			if bh == nil {
				return nil, errNoTarget
			}
			return bh, err
		}
		var result upstream.Result
		bh, result, err = h.tryHandshake(bctx, ctx, sn, r, set.Config(), t)
		if err == nil {
			a.Responded(t, bh.resp.StatusCode)
			return bh, nil
		}
		if !a.Failed(t, result, true, err) || bctx.Err() != nil {
			return bh, err
		}
		h.routeStats(r).retries.Add(1)
	}
}

// tryHandshake does the backend handshake on t. On a 101 it checks
// Upgrade, Connection, Sec-WebSocket-Accept and that the chosen
// subprotocol and extensions were offered. A failure says how it went
// for the target.
func (h *Handler) tryHandshake(bctx context.Context, ctx *fasthttp.RequestCtx, sn *snapshot, r *routes.Route, up *upstream.Config, t *upstream.Target) (*backendHandshake, upstream.Result, error) {
	deadline, _ := bctx.Deadline()
	bh := &backendHandshake{target: t}
	conn, err := dialTarget(bctx, up, t)
	if err != nil {
		result := upstream.ConnectFailed
		if isTimeout(err) || bctx.Err() != nil {
			result = upstream.ConnectTimedOut
		}
		return bh, result, fmt.Errorf("dial backend %q: %w", t.Addr, err)
	}
	_ = conn.SetDeadline(deadline)

	var keyBytes [16]byte
	_, _ = rand.Read(keyBytes[:])
	key := base64.StdEncoding.EncodeToString(keyBytes[:])

	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	ctx.Request.Header.CopyTo(&req.Header)
	req.Header.ResetConnectionClose()
	offerProto := string(ctx.Request.Header.Peek("Sec-WebSocket-Protocol"))
	offerExt := deflateOffer(ctx.Request.Header.Peek("Sec-WebSocket-Extensions"))
	removeHopByHop(&req.Header)
	for _, name := range []string{"Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions", "Sec-WebSocket-Accept", "Content-Length"} {
		req.Header.Del(name)
	}
	setForwarded(&req.Header, &ctx.Request.Header, peerAddr(ctx), ctx.IsTLS(), sn.trusted)
	applyRequestOps(&req.Header, &r.RequestHeaders)
	setUpstreamURI(req, ctx, r)
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Sec-WebSocket-Key", key)
	req.Header.Set("Sec-WebSocket-Version", "13")
	if offerExt != "" {
		req.Header.Set("Sec-WebSocket-Extensions", offerExt)
	}
	req.SetBodyRaw(nil)

	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(conn)
	if err = req.Write(bw); err == nil {
		err = bw.Flush()
	}
	bw.Reset(nil)
	writerPool.Put(bw)
	if err != nil {
		conn.Close()
		return bh, sentResult(err), fmt.Errorf("write handshake to %q: %w", t.Addr, err)
	}
	// The handshake reader becomes the backend leg's read buffer: bytes the
	// backend sends right after its 101 stay in it and are relayed first.
	br := handshakeReaders.Get().(*bufio.Reader)
	br.Reset(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		br.Reset(nil)
		handshakeReaders.Put(br)
		conn.Close()
		return bh, sentResult(err), fmt.Errorf("read handshake from %q: %w", t.Addr, err)
	}
	bh.conn, bh.br, bh.resp = conn, br, resp
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return bh, 0, nil
	}
	if err := checkBackendAccept(resp, key, offerProto, offerExt); err != nil {
		conn.Close()
		return bh, upstream.BadResponse, fmt.Errorf("backend %q: %w", t.Addr, err)
	}
	return bh, 0, nil
}

// sentResult classifies a failure after the request was (partly) sent.
func sentResult(err error) upstream.Result {
	if isTimeout(err) {
		return upstream.TimedOut
	}
	return upstream.Broken
}

// takeBuffered returns a copy of what br holds beyond the handshake (a
// backend may speak first, in the packet of its 101) and recycles br.
func takeBuffered(br *bufio.Reader) []byte {
	var early []byte
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		early = append(early, b...)
	}
	br.Reset(nil)
	handshakeReaders.Put(br)
	return early
}

// dialTarget opens a TCP (and for https targets a TLS) connection.
func dialTarget(bctx context.Context, up *upstream.Config, t *upstream.Target) (net.Conn, error) {
	d := net.Dialer{Timeout: up.ConnectTimeout}
	conn, err := d.DialContext(bctx, "tcp", t.Addr)
	if err != nil {
		return nil, err
	}
	conn = netpoll.NewTCPConn(conn)
	if !t.TLS() {
		return conn, nil
	}
	tc := tls.Client(conn, t.TLSConfig()) // HTTP/1.1 only: a WebSocket needs it
	if err := tc.HandshakeContext(bctx); err != nil {
		conn.Close()
		return nil, err
	}
	return tc, nil
}

// checkBackendAccept validates a 101 from the backend (RFC 6455 §4.1).
func checkBackendAccept(resp *http.Response, key, offerProto, offerExt string) error {
	if !headerHasToken(resp.Header, "Upgrade", "websocket") {
		return fmt.Errorf("%w: no Upgrade: websocket", errBadHandshake)
	}
	if !headerHasToken(resp.Header, "Connection", "upgrade") {
		return fmt.Errorf("%w: no Connection: upgrade", errBadHandshake)
	}
	if resp.Header.Get("Sec-WebSocket-Accept") != acceptKey(key) {
		return fmt.Errorf("%w: wrong Sec-WebSocket-Accept", errBadHandshake)
	}
	if p := resp.Header.Get("Sec-WebSocket-Protocol"); p != "" {
		offered := false
		for _, o := range strings.Split(offerProto, ",") {
			if strings.TrimSpace(o) == p {
				offered = true
			}
		}
		if !offered {
			return fmt.Errorf("%w: subprotocol %q was not offered", errBadHandshake, p)
		}
	}
	if e := resp.Header.Get("Sec-WebSocket-Extensions"); e != "" {
		name, _, _ := strings.Cut(e, ";")
		if offerExt == "" || strings.TrimSpace(name) != "permessage-deflate" || strings.Contains(e, ",") {
			return fmt.Errorf("%w: extension %q was not offered", errBadHandshake, e)
		}
	}
	return nil
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		if hasToken([]byte(v), token) {
			return true
		}
	}
	return false
}

// deflateOffer keeps the permessage-deflate offers of a client's
// Sec-WebSocket-Extensions header and drops the rest: wsgate relays frames
// without decoding them, so it passes on only the extension whose use of
// the reserved bits it knows (RFC 7692: RSV1 on data frames).
func deflateOffer(v []byte) string {
	if len(v) == 0 {
		return ""
	}
	var keep []string
	for _, ext := range strings.Split(string(v), ",") {
		name, _, _ := strings.Cut(ext, ";")
		if strings.TrimSpace(name) == "permessage-deflate" {
			keep = append(keep, strings.TrimSpace(ext))
		}
	}
	return strings.Join(keep, ", ")
}

// handshakeStatus maps a backend handshake failure to the client status.
func handshakeStatus(err error) (int, string) {
	if errors.Is(err, errBadHandshake) {
		return fasthttp.StatusBadGateway, "bad gateway"
	}
	return upstreamStatus(err)
}

// relayRefusal passes a backend's non-101 answer to the client as an
// ordinary HTTP response: status, end-to-end headers and the whole body.
// No byte of the client's connection is ever tunnelled.
func (h *Handler) relayRefusal(ctx *fasthttp.RequestCtx, sn *snapshot, r *routes.Route, bh *backendHandshake) {
	resp := bh.resp
	ctx.SetStatusCode(resp.StatusCode)
	for name, vs := range resp.Header {
		for _, v := range vs {
			ctx.Response.Header.Add(name, v)
		}
	}
	removeHopByHop(&ctx.Response.Header)
	ctx.Response.Header.Del("Content-Length")
	if r.RewriteRedirects {
		rewriteRedirects(&ctx.Response.Header, r, bh.target, upstreamHost(ctx, r), clientScheme(ctx, sn.trusted))
	}
	applyResponseOps(&ctx.Response.Header, &r.ResponseHeaders)
	if ctx.IsHead() || resp.ContentLength == 0 {
		resp.Body.Close()
		bh.conn.Close()
		bh.target.Release()
	} else {
		_ = bh.conn.SetDeadline(time.Now().Add(responseTimeout(bh.target)))
		ctx.Response.SetBodyStream(&refusalBody{body: resp.Body, conn: bh.conn, target: bh.target}, int(resp.ContentLength))
	}
	h.logRequest(ctx, r, resp.StatusCode, bh.target.Addr)
}

func responseTimeout(t *upstream.Target) time.Duration {
	if d := t.Set().Config().ResponseTimeout; d > 0 {
		return d
	}
	return 60 * time.Second
}

// refusalBody streams a refused handshake's body and closes the backend
// connection when fasthttp is done with it.
type refusalBody struct {
	body   io.ReadCloser
	conn   net.Conn
	target *upstream.Target // released by Close
}

func (b *refusalBody) Read(p []byte) (int, error) { return b.body.Read(p) }

func (b *refusalBody) Close() error {
	b.body.Close()
	b.target.Release()
	return b.conn.Close()
}

// upgradeClient answers the client's handshake with a 101 carrying the
// backend's choices (subprotocol, extensions, cookies and other end-to-end
// headers) and hands the connection to a relay session.
func (h *Handler) upgradeClient(ctx *fasthttp.RequestCtx, sn *snapshot, r *routes.Route, bh *backendHandshake, slot *sessionSlot, expires time.Time) *wsrelay.Session {
	_ = bh.conn.SetDeadline(time.Time{})
	ext := bh.resp.Header.Get("Sec-WebSocket-Extensions")
	for name, vs := range bh.resp.Header {
		for _, v := range vs {
			ctx.Response.Header.Add(name, v)
		}
	}
	removeHopByHop(&ctx.Response.Header)
	ctx.Response.Header.Del("Content-Length")
	applyResponseOps(&ctx.Response.Header, &r.ResponseHeaders)
	ctx.SetStatusCode(fasthttp.StatusSwitchingProtocols)
	ctx.Response.Header.Set("Upgrade", "websocket")
	ctx.Response.Header.Set("Connection", "Upgrade")
	ctx.Response.Header.Set("Sec-WebSocket-Accept", acceptKey(string(ctx.Request.Header.Peek("Sec-WebSocket-Key"))))
	ctx.Response.Header.SetNoDefaultContentType(true)

	remote := ctx.RemoteAddr().String()
	target := bh.target
	onEnd := target.SessionClosed
	if slot != nil {
		onEnd = func() {
			target.SessionClosed()
			slot.release()
		}
	}
	s := h.reg.NewSession(wsrelay.Config{
		Route:       sn.relay[r],
		Target:      target.URL,
		Client:      remote,
		Subprotocol: bh.resp.Header.Get("Sec-WebSocket-Protocol"),
		Deflate:     ext != "",
		MaxMessage:  r.WebSocket.MaxMessageSize,
		Idle:        r.WebSocket.IdleTimeout,
		Write:       sn.write,
		Policy:      sn.policy[r],
		Expires:     expires,
		OnEnd:       onEnd,
		Tag:         &wsTag{route: r, target: target},
	}, bh.conn, takeBuffered(bh.br))
	// fasthttp runs the hijack handler after writing the 101; it may skip
	// it (the write failed, the connection is closing). Then nobody owns
	// the backend connection, so a timer reclaims it.
	claimed := make(chan struct{})
	abandon := time.AfterFunc(h.closeWait+responseTimeout(bh.target), func() {
		select {
		case <-claimed:
		default:
			s.Abandon()
		}
	})
	ctx.Hijack(func(c net.Conn) {
		if !abandon.Stop() {
			// The timer already reclaimed the session.
			c.Close()
			return
		}
		close(claimed)
		// Take the socket from fasthttp and return at once: fasthttp then
		// frees its request context and read buffer (KeepHijackedConns
		// leaves the connection open), so an idle session holds only what
		// the relay needs.
		conn, early := unwrapHijacked(c)
		go s.Run(conn, early) // the session removes itself when it ends
	})
	bh.target.SessionOpened()
	h.log.Info("websocket opened", "session", s.ID(), "route", metricName(r), "client", remote, "backend", target.Addr,
		"subprotocol", bh.resp.Header.Get("Sec-WebSocket-Protocol"), "extensions", ext)
	return s
}
