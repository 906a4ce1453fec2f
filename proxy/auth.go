package proxy

import (
	"crypto/tls"
	"errors"
	"net/url"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/wsgate/wsgate/routes"
)

// maxAuthBody caps the body of an auth service's answer: a denial's body
// goes to the client, so it is read whole.
const maxAuthBody = 64 << 10

// forwardAuth is a route's auth service: the nginx auth_request model.
type forwardAuth struct {
	cfg    *routes.ForwardAuth
	uri    string // path and query of cfg.URL
	host   string // its host[:port], the Host header
	client *fasthttp.HostClient
}

func newForwardAuth(cfg *routes.ForwardAuth) *forwardAuth {
	u, err := url.Parse(cfg.URL)
	if err != nil {
		panic("proxy: auth URL " + cfg.URL + " was not validated: " + err.Error())
	}
	addr := u.Host
	if u.Port() == "" {
		if u.Scheme == "https" {
			addr += ":443"
		} else {
			addr += ":80"
		}
	}
	uri := u.RequestURI()
	return &forwardAuth{
		cfg:  cfg,
		uri:  uri,
		host: u.Host,
		client: &fasthttp.HostClient{
			Addr:                addr,
			Name:                "wsgate",
			IsTLS:               u.Scheme == "https",
			TLSConfig:           &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12},
			MaxResponseBodySize: maxAuthBody,
			ReadTimeout:         cfg.Timeout,
			WriteTimeout:        cfg.Timeout,
			MaxIdleConnDuration: 30 * time.Second,
			// The answer is read whole (a denial's body goes to the
			// client); headers are kept as they came.
			DisableHeaderNamesNormalizing: true,
		},
	}
}

// Header names the auth request carries besides the copied ones.
var (
	hdrXFMethod  = []byte("X-Forwarded-Method")
	hdrXFURI     = []byte("X-Forwarded-Uri")
	hdrXOrigURI  = []byte("X-Original-Uri")
	hdrXOrigMeth = []byte("X-Original-Method")
)

// authorize asks the route's auth service about the request in ctx. It
// reports whether the request may go on; when not, ctx holds the answer
// for the client: the auth service's own (any status but 2xx), or 503
// when the service could not be asked.
func (h *Handler) authorize(ctx *fasthttp.RequestCtx, sn *snapshot, r *routes.Route, a *forwardAuth) bool {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)

	req.SetRequestURI(a.uri)
	req.Header.SetHost(a.host)
	req.Header.SetMethodBytes(ctx.Method())
	for _, name := range a.cfg.CopyRequestHeaders {
		for _, v := range ctx.Request.Header.PeekAll(name) {
			req.Header.Add(name, string(v))
		}
	}
	setForwarded(&req.Header, &ctx.Request.Header, peerAddr(ctx), ctx.IsTLS(), sn.trusted)
	req.Header.SetCanonical(hdrXFMethod, ctx.Method())
	req.Header.SetCanonical(hdrXFURI, ctx.RequestURI())
	req.Header.SetCanonical(hdrXOrigMeth, ctx.Method())
	req.Header.SetCanonical(hdrXOrigURI, ctx.RequestURI())
	if id := ctx.Request.Header.PeekBytes(hdrRequestID); len(id) > 0 {
		req.Header.SetCanonical(hdrRequestID, id)
	}
	// A request with a body (POST …) is asked about without it.
	req.Header.SetContentLength(0)

	err := a.client.DoTimeout(req, resp, a.cfg.Timeout)
	if err != nil {
		h.log.Warn("auth service unavailable", "route", r.Name, "auth_url", a.cfg.URL, "error", err.Error())
		status := fasthttp.StatusServiceUnavailable
		if errors.Is(err, fasthttp.ErrTimeout) {
			status = fasthttp.StatusGatewayTimeout
		}
		plainError(ctx, status, "auth service unavailable")
		sn.stats[r].authRejected[authForwardUnavailable].Add(1)
		return false
	}
	// The headers the auth service decides: never the client's own.
	for _, name := range a.cfg.CopyResponseHeaders {
		ctx.Request.Header.Del(name)
	}
	if code := resp.StatusCode(); code >= 200 && code < 300 {
		for _, name := range a.cfg.CopyResponseHeaders {
			for _, v := range resp.Header.PeekAll(name) {
				ctx.Request.Header.Add(name, string(v))
			}
		}
		return true
	}
	// Denied: the auth service's answer goes to the client as it is
	// (its status, headers and body: a 401 with WWW-Authenticate, a
	// redirect to a login page, …), without its hop-by-hop fields.
	ctx.Response.Reset()
	resp.Header.CopyTo(&ctx.Response.Header)
	removeHopByHop(&ctx.Response.Header)
	ctx.Response.Header.Del("Content-Length")
	ctx.Response.SetStatusCode(resp.StatusCode())
	ctx.Response.SetBody(resp.Body())
	sn.stats[r].authRejected[authForwardDenied].Add(1)
	return false
}
