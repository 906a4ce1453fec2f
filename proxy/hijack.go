package proxy

import (
	"errors"
	"net"
	"os"
	"time"
)

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

// isTimeout reports whether err is a timeout (a deadline that passed).
func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
