package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pires/go-proxyproto"
)

// proxyHeaderTimeout bounds the wait for a PROXY protocol header (and,
// from a peer that sends none, for the first bytes that show it).
const proxyHeaderTimeout = 10 * time.Second

// ProxyProtocolListener wraps ln for listeners[].proxy_protocol: a
// connection from a trusted proxy (trusted returns the current
// trusted_proxies) may start with a PROXY protocol v1 or v2 header
// (HAProxy's send-proxy, AWS NLB, cloud load balancers), whose source
// address then stands for the client everywhere: logs, limits,
// X-Forwarded-For, hash balancing. A connection from anyone else that
// starts with one is closed: an untrusted client cannot pick its own
// address. The header is read on the connection's own goroutine (its
// first Read or RemoteAddr), never in the accept loop. The parsing is
// github.com/pires/go-proxyproto's, the usual Go implementation of the
// spec (both versions, TLVs, LOCAL commands).
func ProxyProtocolListener(ln net.Listener, trusted func() []netip.Prefix, log *slog.Logger) net.Listener {
	return &ppListener{Listener: ln, trusted: trusted, log: log}
}

type ppListener struct {
	net.Listener
	trusted func() []netip.Prefix
	log     *slog.Logger
}

func (l *ppListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &ppConn{Conn: c, l: l}, nil
}

// ppConn is an accepted connection whose PROXY header has not been read
// yet. Once it has, the connection holds nothing the one under it does
// not (the bytes read past the header are kept until read), and Unwrap
// gives the relay the TCP connection under it.
type ppConn struct {
	net.Conn
	l *ppListener

	once   sync.Once
	err    error    // the header's fault: every Read fails with it
	remote net.Addr // the client: the header's source, or the peer

	mu   sync.Mutex
	rest []byte // guarded by mu: read past the header, not yet returned
}

// errUntrustedHeader: a PROXY header from a peer not in trusted_proxies.
var errUntrustedHeader = errors.New("PROXY protocol header from an untrusted peer")

// init reads the header, once.
func (c *ppConn) init() {
	c.once.Do(func() {
		peer := c.Conn.RemoteAddr()
		c.remote = peer
		trusted := false
		if ap, err := netip.ParseAddrPort(peer.String()); err == nil {
			trusted = isTrusted(ap.Addr().Unmap(), c.l.trusted())
		}
		_ = c.Conn.SetReadDeadline(time.Now().Add(proxyHeaderTimeout))
		br := bufio.NewReaderSize(c.Conn, int(proxyproto.MaxV2HeaderSize)+16)
		h, err := proxyproto.Read(br)
		_ = c.Conn.SetReadDeadline(time.Time{})
		switch {
		case errors.Is(err, proxyproto.ErrNoProxyProtocol):
			// No header: the peer's own address. Read past the check.
		case err != nil:
			c.err = fmt.Errorf("PROXY protocol header: %w", err)
		case !trusted:
			c.err = errUntrustedHeader
		case h.Command.IsLocal():
			// LOCAL (a load balancer's own health check): the peer.
		default:
			if src, _, ok := h.TCPAddrs(); ok {
				c.remote = src
			} else {
				c.err = errors.New("PROXY protocol header without a TCP source address")
			}
		}
		if c.err != nil {
			c.l.log.Warn("connection refused", "peer", peer.String(), "error", c.err.Error())
			_ = c.Conn.Close()
			return
		}
		if n := br.Buffered(); n > 0 {
			b, _ := br.Peek(n)
			c.rest = append([]byte(nil), b...)
		}
	})
}

func (c *ppConn) Read(p []byte) (int, error) {
	c.init()
	if c.err != nil {
		// Refused and logged once (see init): to the server, the
		// connection just ended before a request.
		return 0, io.EOF
	}
	c.mu.Lock()
	if len(c.rest) > 0 {
		n := copy(p, c.rest)
		c.rest = c.rest[n:]
		if len(c.rest) == 0 {
			c.rest = nil
		}
		c.mu.Unlock()
		return n, nil
	}
	c.mu.Unlock()
	return c.Conn.Read(p)
}

// RemoteAddr is the client's address: the PROXY header's source.
func (c *ppConn) RemoteAddr() net.Addr {
	c.init()
	return c.remote
}

// Unwrap returns the connection under c, for the relay's raw I/O, once
// every byte read past the header has been returned; until then, nil
// (the relay then reads through c).
func (c *ppConn) Unwrap() net.Conn {
	c.init()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil || len(c.rest) > 0 {
		return nil
	}
	return c.Conn
}
