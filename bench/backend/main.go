// Command backend is the origin server of the wsgate benchmark suite: the
// same plain net/http (HTTP/1.1 only) server sits behind wsgate, nginx,
// HAProxy and Caddy, or is hit directly.
//
//	backend -addr 127.0.0.1:0 [-ready-file F]
//
// It prints exactly one line to stdout, "listening 127.0.0.1:PORT", and
// writes the same address to the ready file (atomically, by rename) when
// one is given. Endpoints:
//
//	GET  /small                      200, text/plain, "hello, world\n" (13 bytes)
//	GET  /bytes/N                    N bytes (0..1<<30) with Content-Length
//	POST /echo                       the request body streamed back
//	GET  /sse?n=K&interval=D         K events "data: i\n\n", one every D (5, 100ms)
//	GET  /ws                         WebSocket echo, subprotocols "echo" and "chat"
//	GET  /healthz                    200
//
// SIGTERM and SIGINT shut it down: listeners close, in-flight requests
// finish, WebSocket clients get a 1001 close frame; exit code 0. It does
// not import any wsgate package: it must not share code with what it measures.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/fasthttp/websocket"
)

// config is the command line.
type config struct {
	addr      string
	readyFile string
}

func main() {
	fs := flag.NewFlagSet("backend", flag.ContinueOnError)
	var cfg config
	fs.StringVar(&cfg.addr, "addr", "127.0.0.1:0", "listen `address`")
	fs.StringVar(&cfg.readyFile, "ready-file", "", "write the listening address to this `file` once serving")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "backend: unexpected argument %q\n", fs.Arg(0))
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "backend: %v\n", err)
		os.Exit(1)
	}
}

// run listens on cfg.addr, announces the address on stdout (and in the
// ready file) and serves until ctx is done.
func run(ctx context.Context, cfg config, stdout io.Writer) error {
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return err
	}
	addr := ln.Addr().String()
	if _, err := fmt.Fprintf(stdout, "listening %s\n", addr); err != nil {
		ln.Close()
		return err
	}
	if cfg.readyFile != "" {
		if err := writeFileAtomic(cfg.readyFile, addr+"\n"); err != nil {
			ln.Close()
			return err
		}
	}
	return serve(ctx, ln)
}

// shutdownTimeout bounds the graceful part of a shutdown.
const shutdownTimeout = 5 * time.Second

// serve serves HTTP on ln until ctx is done, then shuts down: it stops
// accepting, lets in-flight requests end (their contexts are cancelled, so
// streams stop early), and sends 1001 to every WebSocket client.
func serve(ctx context.Context, ln net.Listener) error {
	b := newBackend()
	srv := &http.Server{
		Handler:           b.handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// Request contexts derive from ctx, so SSE and /bytes streams end
		// as soon as the shutdown starts instead of holding it up.
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	// HTTP/1.1 only, like the proxies' upstream side; h2c stays off.
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}

	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	var wg sync.WaitGroup
	var shutErr error
	// Shutdown ignores hijacked (WebSocket) conns, so close them side by side.
	wg.Go(func() { shutErr = srv.Shutdown(sctx) })
	wg.Go(func() { b.closeWebSockets(sctx) })
	wg.Wait()
	<-errc // http.ErrServerClosed
	if shutErr != nil {
		srv.Close()
		return fmt.Errorf("shutdown: %w", shutErr)
	}
	return nil
}

// writeFileAtomic writes data to a temporary file next to name and renames
// it, so a poller never reads a partial file.
func writeFileAtomic(name, data string) error {
	tmp, err := os.CreateTemp(filepath.Dir(name), ".ready-*")
	if err != nil {
		return err
	}
	if _, err := tmp.WriteString(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), name)
}

// backend holds the handlers' shared state.
type backend struct {
	upgrader websocket.Upgrader

	mu      sync.Mutex
	conns   map[*websocket.Conn]struct{} // open WebSockets; guarded by mu
	closing bool                         // guarded by mu
	wsWG    sync.WaitGroup               // one per tracked WebSocket handler
}

func newBackend() *backend {
	return &backend{
		upgrader: websocket.Upgrader{
			ReadBufferSize:  4096,
			WriteBufferSize: 4096,
			// Write buffers return to the pool between messages, so thousands
			// of idle connections cost only their read buffers.
			WriteBufferPool: &sync.Pool{},
			Subprotocols:    []string{"echo", "chat"},
			CheckOrigin:     func(*http.Request) bool { return true },
		},
		conns: make(map[*websocket.Conn]struct{}),
	}
}

func (b *backend) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /small", serveSmall)
	mux.HandleFunc("GET /bytes/{n}", serveBytes)
	mux.HandleFunc("POST /echo", serveEcho)
	mux.HandleFunc("GET /sse", serveSSE)
	mux.HandleFunc("GET /ws", b.serveWS)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header()["Content-Type"] = textPlain
		w.Write([]byte("ok\n"))
	})
	return mux
}

var (
	smallBody = []byte("hello, world\n")
	// Header values shared by all responses; net/http only reads them.
	textPlain   = []string{"text/plain"}
	smallLength = []string{strconv.Itoa(len(smallBody))}
	octetStream = []string{"application/octet-stream"}
)

// serveSmall answers the request-rate benchmark: no allocation beyond what
// net/http itself does.
func serveSmall(w http.ResponseWriter, _ *http.Request) {
	h := w.Header()
	h["Content-Type"] = textPlain
	h["Content-Length"] = smallLength
	w.Write(smallBody)
}

// maxBytes is the largest body /bytes/N serves.
const maxBytes = 1 << 30

// pattern is the body of /bytes/N, repeated: its length is a multiple of the
// 64-byte period, so the stream reads "0123...xyzABC...-_0123..." throughout.
var pattern = func() []byte {
	const period = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_"
	p := make([]byte, 64<<10)
	for i := range p {
		p[i] = period[i%len(period)]
	}
	return p
}()

func serveBytes(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.ParseInt(r.PathValue("n"), 10, 64)
	if err != nil || n < 0 || n > maxBytes {
		http.Error(w, fmt.Sprintf("bad length %q (want 0..%d)", r.PathValue("n"), maxBytes), http.StatusBadRequest)
		return
	}
	h := w.Header()
	h["Content-Type"] = octetStream
	h["Content-Length"] = []string{strconv.FormatInt(n, 10)}
	if r.Method == http.MethodHead {
		return
	}
	done := r.Context().Done()
	for n > 0 {
		chunk := pattern[:min(n, int64(len(pattern)))]
		if _, err := w.Write(chunk); err != nil {
			return // client gone
		}
		n -= int64(len(chunk))
		select {
		case <-done: // shutting down or client gone
			return
		default:
		}
	}
}

var copyBufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// serveEcho streams the request body back while it is still arriving: with
// the request's Content-Length when it has one, chunked otherwise.
func serveEcho(w http.ResponseWriter, r *http.Request) {
	// Without full duplex, net/http closes the request body once the
	// response headers are flushed, so a body larger than the response
	// buffer could not be streamed back.
	http.NewResponseController(w).EnableFullDuplex()
	h := w.Header()
	h["Content-Type"] = octetStream
	if r.ContentLength >= 0 {
		h["Content-Length"] = []string{strconv.FormatInt(r.ContentLength, 10)}
	}
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	// Hide w's ReadFrom so the copy uses our pooled buffer rather than
	// net/http's own.
	io.CopyBuffer(struct{ io.Writer }{w}, r.Body, *bp)
}

// maxEvents bounds /sse?n=K.
const maxEvents = 10_000_000

func serveSSE(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	n, interval := 5, 100*time.Millisecond
	if s := q.Get("n"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 0 || v > maxEvents {
			http.Error(w, fmt.Sprintf("bad n %q (want 0..%d)", s, maxEvents), http.StatusBadRequest)
			return
		}
		n = v
	}
	if s := q.Get("interval"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			http.Error(w, fmt.Sprintf("bad interval %q (want a duration like 100ms)", s), http.StatusBadRequest)
			return
		}
		interval = d
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)

	var timer *time.Timer
	if interval > 0 && n > 1 {
		timer = time.NewTimer(interval)
		defer timer.Stop()
	}
	done := r.Context().Done()
	buf := make([]byte, 0, 32)
	for i := range n {
		if i > 0 && timer != nil {
			select {
			case <-timer.C:
				timer.Reset(interval)
			case <-done:
				return
			}
		}
		buf = append(strconv.AppendInt(append(buf[:0], "data: "...), int64(i), 10), "\n\n"...)
		if _, err := w.Write(buf); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}

// wsReadLimit bounds one WebSocket message; the suite sends at most 64 KiB.
const wsReadLimit = 64 << 20

func (b *backend) serveWS(w http.ResponseWriter, r *http.Request) {
	c, err := b.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // Upgrade has answered with an HTTP error
	}
	defer c.Close()
	if !b.track(c) {
		c.WriteControl(websocket.CloseMessage,
			websocket.FormatCloseMessage(websocket.CloseGoingAway, "backend shutting down"),
			time.Now().Add(time.Second))
		return
	}
	defer b.untrack(c)
	c.SetReadLimit(wsReadLimit)
	echoMessages(c)
}

// echoMessages echoes every message with its type until the connection
// fails or closes. Each message is streamed: the reader's frames go straight
// into the writer's buffer (messageWriter.ReadFrom), never into a message-sized
// buffer. Pings are answered by the default ping handler; a close frame is
// answered by the default close handler and ends the loop.
func echoMessages(c *websocket.Conn) error {
	for {
		mt, r, err := c.NextReader()
		if err != nil {
			return err
		}
		w, err := c.NextWriter(mt)
		if err != nil {
			return err
		}
		if _, err := io.Copy(w, r); err != nil {
			return err
		}
		if err := w.Close(); err != nil {
			return err
		}
	}
}

// track registers c for closeWebSockets; it reports false once shutting down.
func (b *backend) track(c *websocket.Conn) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closing {
		return false
	}
	b.conns[c] = struct{}{}
	b.wsWG.Add(1)
	return true
}

func (b *backend) untrack(c *websocket.Conn) {
	b.mu.Lock()
	delete(b.conns, c)
	b.mu.Unlock()
	b.wsWG.Done()
}

// closeWebSockets sends 1001 to every open WebSocket and waits until their
// handlers return (the client answers the close frame, or the read deadline
// passes) or ctx is done, in which case it closes what is left.
func (b *backend) closeWebSockets(ctx context.Context) {
	b.mu.Lock()
	b.closing = true
	conns := make([]*websocket.Conn, 0, len(b.conns))
	for c := range b.conns {
		conns = append(conns, c)
	}
	b.mu.Unlock()

	msg := websocket.FormatCloseMessage(websocket.CloseGoingAway, "backend shutting down")
	deadline := time.Now().Add(time.Second)
	for _, c := range conns {
		// WriteControl and Close are safe alongside the handler's reads and
		// writes; the read deadline bounds the wait for the client's reply.
		c.WriteControl(websocket.CloseMessage, msg, deadline)
		c.NetConn().SetReadDeadline(deadline)
	}
	done := make(chan struct{})
	go func() { b.wsWG.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		for _, c := range conns {
			c.Close()
		}
		<-done
	}
}
