//go:build unix

package proxy

import (
	"errors"
	"net"
	"strconv"
	"syscall"
	"testing"
)

// closedPort returns a 127.0.0.1 address where nothing listens and nothing
// can start listening until the test ends: the port stays bound, without
// SO_REUSEADDR and without listen(2), so a connect is refused and the
// kernel hands the port to no other socket. A port that was merely closed
// again can come back from the next ":0" listen, even the proxy's own,
// which then proxies to itself.
func closedPort(t testing.TB) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	syscall.CloseOnExec(fd)
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	port := sa.(*syscall.SockaddrInet4).Port
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

func TestClosedPort(t *testing.T) {
	addr := closedPort(t)
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatalf("dial %s succeeded, want refused", addr)
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial %s: %v, want connection refused", addr, err)
	}
	if ln, err := net.Listen("tcp", addr); err == nil {
		ln.Close()
		t.Errorf("listen on %s succeeded, want the port held", addr)
	}
}
