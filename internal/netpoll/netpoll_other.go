//go:build !linux

package netpoll

import (
	"errors"
	"net"
	"syscall"
	"time"
)

// Supported: off Linux there is no poller and no raw socket I/O; legs
// read and write through their net.Conn and wait on their goroutines.
const Supported = false

var errUnsupported = errors.New("netpoll: not supported on this platform")

// Recv fails: raw socket I/O is used on Linux only.
func Recv(fd uintptr, p []byte) (int, error) { return 0, errUnsupported }

// Send fails: raw socket I/O is used on Linux only.
func Send(fd uintptr, p []byte) (int, error) { return 0, errUnsupported }

// NewTCPConn returns c: raw socket I/O is used on Linux only.
func NewTCPConn(c net.Conn) net.Conn { return c }

// TCPConn returns the *net.TCPConn under c, if there is one. It looks
// through a connection that holds nothing of its own (see Wrapper).
func TCPConn(c net.Conn) (*net.TCPConn, bool) {
	switch c := c.(type) {
	case *net.TCPConn:
		return c, true
	case Wrapper:
		if u := c.Unwrap(); u != nil {
			return TCPConn(u)
		}
	}
	return nil, false
}

// SetUserTimeout does nothing: TCP_USER_TIMEOUT is Linux's.
func SetUserTimeout(c *net.TCPConn, d time.Duration) error { return nil }

// UserTimeout reports none: TCP_USER_TIMEOUT is Linux's.
func UserTimeout(c *net.TCPConn) (time.Duration, error) { return 0, nil }

// PeerGone reports the connection alive: the check is made on Linux only.
func PeerGone(net.Conn) bool { return false }

// Poller does not exist here: New fails.
type Poller struct{}

// New fails: there is no poller on this platform.
func New() (*Poller, error) { return nil, errUnsupported }

// Arm fails: there is no poller on this platform.
func (p *Poller) Arm(src syscall.RawConn, id uint64, edge bool) error { return errUnsupported }

// Disarm does nothing: there is no poller on this platform.
func (p *Poller) Disarm(src syscall.RawConn) {}

// Run returns at once: there is no poller on this platform.
func (p *Poller) Run(tick time.Duration, onEvent func(id uint64, end bool, now time.Time), onTick func(now time.Time)) {
}
