package proxy

import (
	"time"

	"github.com/valyala/fasthttp"
)

// ServerOptions sizes the front-end server; zero fields take the stated
// defaults.
type ServerOptions struct {
	// HeaderBytes caps the request head (431 beyond it). Default 16 KiB.
	HeaderBytes int
	// RequestHeaderTimeout bounds the arrival of a whole request head
	// (slowloris). Default 10s.
	RequestHeaderTimeout time.Duration
	// IdleTimeout bounds the wait for the next request on a keep-alive
	// connection. Default 60s.
	IdleTimeout time.Duration
	// WriteTimeout bounds writing a response head and buffered body;
	// streamed bodies extend it per chunk. Default 60s.
	WriteTimeout time.Duration
}

// bufferedBodyMax is the largest request body fasthttp reads into memory
// before calling the handler; larger and chunked bodies are streamed.
const bufferedBodyMax = 64 << 10

// NewServer returns a fasthttp.Server that serves h with the settings a
// proxy needs: streamed request bodies, hijacked connections that wsgate
// closes itself (KeepHijackedConns, see Drain), header names normalised
// (WebSocket detection and hop-by-hop removal depend on it), and no
// multipart pre-parsing.
func NewServer(h *Handler, o ServerOptions) *fasthttp.Server {
	if o.HeaderBytes <= 0 {
		o.HeaderBytes = 16 << 10
	}
	if o.RequestHeaderTimeout <= 0 {
		o.RequestHeaderTimeout = 10 * time.Second
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 60 * time.Second
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 60 * time.Second
	}
	sl := &serverLog{h: h, headerBytes: o.HeaderBytes, headerTimeout: o.RequestHeaderTimeout}
	return &fasthttp.Server{
		Handler:                      h.ServeHTTP,
		ErrorHandler:                 sl.requestError,
		Name:                         "wsgate",
		ReadBufferSize:               o.HeaderBytes,
		ReadTimeout:                  o.RequestHeaderTimeout,
		IdleTimeout:                  o.IdleTimeout,
		WriteTimeout:                 o.WriteTimeout,
		MaxRequestBodySize:           bufferedBodyMax,
		StreamRequestBody:            true,
		DisablePreParseMultipartForm: true,
		KeepHijackedConns:            true,
		// Parse errors name a sentinel instead of quoting the request head,
		// which may carry credentials, into logs.
		SecureErrorLogMessage: true,
		CloseOnShutdown:       true,
		NoDefaultContentType:  true,
		Logger:                sl,
	}
}
