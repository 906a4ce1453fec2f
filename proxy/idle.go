package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// readBufferSize is a leg's read buffer. A frame that fits in it (header
// included) is forwarded with one write straight from the buffer.
const readBufferSize = 4096

// readerPool holds the read buffers of idle legs. A leg whose socket can
// be polled without reading (plain TCP) gives its buffer back whenever it
// has no buffered bytes, so an idle session holds no read buffer at all.
var readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readBufferSize) }}

// reader returns the leg's read buffer, taking one from the pool if the
// leg is idle.
func (l *leg) reader() *bufio.Reader {
	if l.br == nil {
		l.br = readerPool.Get().(*bufio.Reader)
		l.br.Reset(l.conn)
	}
	return l.br
}

// release gives the read buffer back to the pool when it holds no bytes
// and the leg can wait for data without one.
func (l *leg) release() {
	if l.raw == nil || l.br == nil || l.br.Buffered() > 0 {
		return
	}
	if l.early != nil {
		if l.early.Len() > 0 {
			return // bytes from before the hijack are still to come
		}
		l.early = nil // the buffer reads the connection directly from now on
	}
	l.br.Reset(nil)
	readerPool.Put(l.br)
	l.br = nil
}

// waitReadable blocks until the leg has data (or EOF, an error, or a
// deadline) without holding a buffer: the runtime's poller wakes it, and a
// one-byte MSG_PEEK tells readiness apart from a spurious wake-up.
// It is a no-op for a leg that holds a buffer or cannot be polled (TLS).
func (l *leg) waitReadable() error {
	if l.br != nil || l.raw == nil {
		return nil
	}
	var b [1]byte
	var opErr error
	err := l.raw.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch err {
		case syscall.EAGAIN:
			return false // not yet: park in the poller
		case syscall.EINTR:
			return false
		case nil:
		default:
			opErr = err
		}
		return true
	})
	if err != nil {
		return err
	}
	return opErr // a socket error surfaces on the next real read as well
}

// newLeg returns a leg reading conn. br, if not nil, is a buffer that
// already holds bytes read from conn (the handshake reader); early holds
// bytes read before the hijack that come before anything on conn.
func newLeg(name string, conn net.Conn, br *bufio.Reader, early []byte, masked bool) *leg {
	l := &leg{name: name, conn: conn, masked: masked}
	l.st.fromClient = name == "client"
	if tc, ok := conn.(*net.TCPConn); ok {
		if rc, err := tc.SyscallConn(); err == nil {
			l.raw = rc
		}
	}
	switch {
	case len(early) > 0:
		l.early = bytes.NewReader(early)
		l.br = bufio.NewReaderSize(io.MultiReader(l.early, conn), readBufferSize)
	case br != nil:
		l.br = br
	}
	l.release()
	return l
}

// unwrapHijacked returns the connection under fasthttp's hijacked conn and
// the bytes fasthttp had already read past the request (a client may send
// frames in the same packet as its handshake). Reading the hijacked conn
// with a deadline in the past returns what its buffer holds and then
// times out without touching the socket; after that the session reads the
// socket directly and fasthttp's read buffer can be collected.
func unwrapHijacked(c net.Conn) (net.Conn, []byte) {
	u, ok := c.(interface{ UnsafeConn() net.Conn })
	if !ok {
		return c, nil
	}
	raw := u.UnsafeConn()
	if err := raw.SetReadDeadline(time.Unix(1, 0)); err != nil {
		return c, nil // cannot drain: keep reading through fasthttp's buffer
	}
	var early []byte
	var buf [512]byte
	for {
		n, err := c.Read(buf[:])
		early = append(early, buf[:n]...)
		if err != nil {
			break
		}
	}
	_ = raw.SetReadDeadline(time.Time{})
	return raw, early
}
