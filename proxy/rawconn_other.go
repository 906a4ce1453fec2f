//go:build !linux

package proxy

import "net"

// newRawTCPConn returns c: raw socket I/O is used on Linux only.
func newRawTCPConn(c net.Conn) net.Conn { return c }

// tcpConn returns the *net.TCPConn under c, if there is one.
func tcpConn(c net.Conn) (*net.TCPConn, bool) {
	tc, ok := c.(*net.TCPConn)
	return tc, ok
}

// peerGone reports the connection alive: the check is made on Linux only.
func peerGone(net.Conn) bool { return false }
