package main

import (
	"bufio"
	_ "embed"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"
)

//go:embed demo.html
var demoPage []byte

// newDemoServer returns the built-in demo backend (listener "builtin:
// demo"): a page at /, a WebSocket echo at /echo and a server-sent event
// stream at /events. It is an ordinary backend: the demo route sends
// requests to it through wsgate's real proxy path.
func newDemoServer(log *slog.Logger) *fasthttp.Server {
	up := websocket.FastHTTPUpgrader{
		// The page and the socket share an origin through the proxy; the
		// demo echoes for anyone.
		CheckOrigin:  func(*fasthttp.RequestCtx) bool { return true },
		Subprotocols: []string{"echo"},
	}
	return &fasthttp.Server{
		Name:        "wsgate-demo",
		ReadTimeout: 10 * time.Second,
		IdleTimeout: 60 * time.Second,
		Logger:      fasthttpLogger{log},
		Handler: func(ctx *fasthttp.RequestCtx) {
			switch string(ctx.Path()) {
			case "/", "/index.html":
				ctx.SetContentType("text/html; charset=utf-8")
				ctx.SetBody(demoPage)
			case "/echo":
				if !websocket.FastHTTPIsWebSocketUpgrade(ctx) {
					ctx.Error("WebSocket endpoint: connect with a WebSocket client\n", fasthttp.StatusBadRequest)
					return
				}
				if err := up.Upgrade(ctx, echo); err != nil {
					log.Info("demo upgrade failed", "error", err.Error())
				}
			case "/events":
				ctx.SetContentType("text/event-stream")
				ctx.Response.Header.Set("Cache-Control", "no-cache")
				ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
					for i := 1; i <= 5; i++ {
						fmt.Fprintf(w, "data: tick %d\n\n", i)
						if w.Flush() != nil {
							return
						}
						time.Sleep(time.Second) // the stream's pace, not a wait for an event
					}
				})
			default:
				ctx.Error("not found\n", fasthttp.StatusNotFound)
			}
		},
	}
}

// echo sends every message back with its type until the peer closes.
func echo(c *websocket.Conn) {
	defer c.Close()
	for {
		mt, r, err := c.NextReader()
		if err != nil {
			return
		}
		w, err := c.NextWriter(mt)
		if err != nil {
			return
		}
		if _, err := io.Copy(w, r); err != nil {
			return
		}
		if err := w.Close(); err != nil {
			return
		}
	}
}

// fasthttpLogger sends fasthttp's own messages to slog.
type fasthttpLogger struct{ l *slog.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) {
	f.l.Warn("fasthttp", "message", fmt.Sprintf(format, args...))
}
