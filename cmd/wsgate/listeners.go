package main

import (
	"context"
	stdtls "crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/valyala/fasthttp"

	"github.com/wsgate/wsgate/config"
	"github.com/wsgate/wsgate/internal/netpoll"
	"github.com/wsgate/wsgate/proxy"
	wstls "github.com/wsgate/wsgate/tls"
)

// listenFDsEnv names the listening sockets a process inherits from the
// one it takes over from (see handOver): "FD:KEY" pairs separated by
// commas, KEY the listener's address as written in the config (see
// listenerKeys).
const listenFDsEnv = "WSGATE_LISTEN_FDS"

// listener is one configured listener: a bound socket that lives across
// reloads, and the server generation that accepts on it now.
//
// Each server generation accepts on its own duplicate of the socket's
// file descriptor, so a new generation (other server settings, TLS turned
// on or off, another builtin) starts accepting before the old one stops:
// the socket is never closed, and no connection is refused. The old
// server keeps serving the connections it has until they end.
type listener struct {
	key   string // see listenerKeys
	cfg   config.Listener
	sock  *net.TCPListener // the bound socket; accepts nothing itself
	addr  string           // the bound address, for logs
	sopts proxy.ServerOptions

	cur *gen // the generation accepting now

	// share is how generations share sock where a descriptor cannot be
	// duplicated (Windows); empty on Unix (handover_*.go).
	share socketShare //lint:ignore U1000 used on Windows

	// tlsConf is the certificate store's configuration, swapped by a
	// reload; handshakes read it through GetConfigForClient.
	tlsConf atomic.Pointer[stdtls.Config]
	store   *wstls.Store

	// For proxy_protocol: the trusted proxies now, and where refused
	// connections are logged.
	trusted func() []netip.Prefix
	log     *slog.Logger
}

// inherited holds the listening sockets passed by a parent process
// (handOver), by listener key, until start takes them.
type inherited struct {
	mu    sync.Mutex
	files map[string]*os.File
}

// inheritedListeners reads listenFDsEnv. A malformed value is an error:
// the parent wrote it.
func inheritedListeners() (*inherited, error) {
	in := &inherited{files: map[string]*os.File{}}
	v := os.Getenv(listenFDsEnv)
	if v == "" {
		return in, nil
	}
	os.Unsetenv(listenFDsEnv) // not for a later hand-over's child
	for _, pair := range strings.Split(v, ",") {
		fdStr, addr, ok := strings.Cut(pair, ":")
		fd, err := strconv.Atoi(fdStr)
		if !ok || err != nil || fd < 3 {
			return nil, fmt.Errorf("%s: bad entry %q (want FD:KEY)", listenFDsEnv, pair)
		}
		in.files[addr] = os.NewFile(uintptr(fd), "listener "+addr)
	}
	return in, nil
}

// take returns the inherited socket of the listener key, if any.
func (in *inherited) take(key string) (*net.TCPListener, error) {
	in.mu.Lock()
	f := in.files[key]
	delete(in.files, key)
	in.mu.Unlock()
	if f == nil {
		return nil, nil
	}
	defer f.Close()
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("inherited listener %q: %w", key, err)
	}
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		ln.Close()
		return nil, fmt.Errorf("inherited listener %q is not TCP", key)
	}
	return tl, nil
}

// closeRest closes inherited sockets no listener took: the new config
// dropped them.
func (in *inherited) closeRest() {
	in.mu.Lock()
	defer in.mu.Unlock()
	for key, f := range in.files {
		f.Close()
		delete(in.files, key)
	}
}

// bind opens the socket of l: inherited from a parent process when one
// was passed for its key, else bound anew.
func bind(l config.Listener, key string, in *inherited) (*net.TCPListener, error) {
	if in != nil {
		if tl, err := in.take(key); tl != nil || err != nil {
			return tl, err
		}
	}
	// No TCP keep-alive probes on accepted connections (as nginx's and
	// HAProxy's defaults): an HTTP connection is bounded by the idle
	// timeout, and the four setsockopt calls per accept sat on the
	// latency of every new connection. A WebSocket session turns them on
	// for its client (wsrelay's keepAlive).
	ln, err := (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", l.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen %q: %w", l.Addr, err)
	}
	return ln.(*net.TCPListener), nil
}

// generation returns a listener for a new server generation of l as lc
// describes it: a duplicate of the socket, wrapped for raw socket I/O
// (route listeners) and TLS (through l.tlsConf). The duplicate is made
// without (*os.File).Fd on a file from TCPListener.File, which would
// switch the socket, shared by every generation, to blocking mode until
// net.FileListener sets it back: an accept(2) in that window would block
// its thread, and closing its listener would wait for the next client.
func (l *listener) generation(lc config.Listener) (*onceCloseListener, error) {
	ln, err := l.duplicate()
	if err != nil {
		return nil, fmt.Errorf("listener %q: duplicate socket: %w", lc.Addr, err)
	}
	if lc.Builtin == "" {
		ln = netpoll.Listener(ln) // raw socket I/O on Linux
	}
	if lc.ProxyProtocol {
		ln = proxy.ProxyProtocolListener(ln, l.trusted, l.log)
	}
	if lc.TLS != nil {
		ln = stdtls.NewListener(ln, &stdtls.Config{
			GetConfigForClient: func(*stdtls.ClientHelloInfo) (*stdtls.Config, error) {
				return l.tlsConf.Load(), nil
			},
		})
	}
	return &onceCloseListener{Listener: ln}, nil
}

// gen is one server generation of a listener.
type gen struct {
	srv   *fasthttp.Server
	ln    *onceCloseListener
	conns atomic.Int64 // open connections (ConnState), hijacked ones excluded
}

// countConns makes srv count its open connections in conns.
func (gn *gen) countConns() {
	gn.srv.ConnState = func(_ net.Conn, st fasthttp.ConnState) {
		switch st {
		case fasthttp.StateNew:
			gn.conns.Add(1)
		case fasthttp.StateHijacked, fasthttp.StateClosed:
			gn.conns.Add(-1)
		}
	}
}

// onceCloseListener closes its listener once; later calls return nil.
// fasthttp's Shutdown closes the listener it serves and reports an error
// if it was closed already, as a retired generation's is.
type onceCloseListener struct {
	net.Listener
	once sync.Once
	err  error
}

func (l *onceCloseListener) Close() error {
	l.once.Do(func() { l.err = l.Listener.Close() })
	return l.err
}

// isClosed reports whether err says a listener was closed.
func isClosed(err error) bool { return errors.Is(err, net.ErrClosed) }
