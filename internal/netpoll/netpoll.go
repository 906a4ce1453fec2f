// Package netpoll is wsgate's own socket layer under the WebSocket relay
// and the HTTP front end: raw non-blocking socket I/O, a TCP connection
// that uses it, the front-end listener, and an epoll poller that waits for
// many sockets on one goroutine.
//
// The contract, which each platform file provides (netpoll_linux.go with
// epoll and raw system calls; netpoll_other.go, whose stubs hold no logic):
//
//   - Supported: the poller and raw socket I/O work here. When false, New
//     fails, Recv and Send fail, and NewTCPConn returns its argument.
//   - Recv, Send: one recv(2) or send(2) on a non-blocking descriptor, as
//     a raw system call that cannot block.
//   - NewTCPConn, TCPConn, PeerGone: the raw TCP connection.
//   - Poller: New, Arm, Disarm, Run.
//
// This file holds what is the same everywhere. It imports only the
// standard library.
package netpoll

import (
	"io"
	"net"
	"runtime"
	"syscall"
)

// Writer is the state of one write through a RawConn with raw send(2)
// calls (see Send), shared with its callback so that a write allocates
// nothing. Used by WebSocket legs and the raw TCP connection; one write
// at a time. The zero value is ready to use.
type Writer struct {
	p       []byte
	n       int
	err     error
	onWrite func(fd uintptr) bool // w.writeFd, bound on first use
	onNow   func(fd uintptr)      // for WriteNow, bound on first use
}

// Write writes all of p, waiting through the runtime's poller (and within
// the connection's write deadline) while the socket is full.
func (w *Writer) Write(rc syscall.RawConn, p []byte) (int, error) {
	w.p = p
	if w.onWrite == nil {
		w.onWrite = w.writeFd
	}
	return w.done(rc.Write(w.onWrite))
}

// WriteNow writes p to a socket known to be writable without waiting and
// returns what it wrote: fewer bytes, with syscall.EAGAIN or no error,
// when the socket buffer is full. Write deadlines do not apply.
func (w *Writer) WriteNow(rc syscall.RawConn, p []byte) (int, error) {
	w.p = p
	if w.onNow == nil {
		w.onNow = func(fd uintptr) { w.writeFd(fd) }
	}
	return w.done(rc.Control(w.onNow))
}

// done returns the result of the write that ended with err and resets w.
func (w *Writer) done(err error) (int, error) {
	n := w.n
	if err == nil {
		err = w.err
	}
	w.p, w.n, w.err = nil, 0, nil
	return n, err
}

// writeFd writes what is left of p until it is all written, the socket is
// full (it reports false: wait for writability) or an error.
func (w *Writer) writeFd(fd uintptr) bool {
	for w.n < len(w.p) {
		n, err := Send(fd, w.p[w.n:min(len(w.p), w.n+maxRawWrite)])
		if err == syscall.EAGAIN {
			return false
		}
		if err != nil {
			w.err = err
			return true
		}
		w.n += n
	}
	return true
}

// maxRawWrite bounds one raw write(2): the runtime does not know a raw
// system call is running, so none may take long (see Send).
const maxRawWrite = 256 << 10

// ReadResult turns the outcome of a RawConn.Read (err) whose callback read
// n bytes or failed with rerr into what an io.Reader returns: a read of 0
// bytes is the end of the stream.
func ReadResult(err error, n int, rerr error) (int, error) {
	switch {
	case err != nil:
		return 0, err
	case rerr != nil:
		return 0, rerr
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Wrapper is a connection over another that, once Unwrap returns it (not
// nil), holds nothing of its own: no buffered bytes, no framing (a PROXY
// protocol header reader whose header is read). Raw I/O may then go to
// the connection under it.
type Wrapper interface {
	net.Conn
	Unwrap() net.Conn
}

// Listener wraps a TCP listener for the front end: on Linux, accepted
// connections read and write with raw system calls (see NewTCPConn). TLS
// listeners go on top of it.
func Listener(ln net.Listener) net.Listener { return rawListener{ln} }

type rawListener struct{ net.Listener }

// Accept yields before accepting. fasthttp's accept loop hands each
// connection to a worker goroutine and calls Accept again at once; that
// accept(2) usually finds nothing (EAGAIN), and it ran before the worker
// read the new connection's request. Yielding first lets the worker
// serve the request up to its first wait, and the empty accept comes
// after.
func (l rawListener) Accept() (net.Conn, error) {
	runtime.Gosched()
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return NewTCPConn(c), nil
}
