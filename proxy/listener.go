package proxy

import "net"

// Listener wraps a TCP listener for the front end: on Linux, accepted
// connections read and write with raw system calls (see rawTCPConn). TLS
// listeners go on top of it.
func Listener(ln net.Listener) net.Listener { return rawListener{ln} }

type rawListener struct{ net.Listener }

func (l rawListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return newRawTCPConn(c), nil
}
