package proxy

import (
	"net"
	"runtime"
)

// Listener wraps a TCP listener for the front end: on Linux, accepted
// connections read and write with raw system calls (see rawTCPConn). TLS
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
	return newRawTCPConn(c), nil
}
