//go:build unix

package integration

import (
	"net"
	"strconv"
	"syscall"
	"testing"
)

// closedAddr returns a 127.0.0.1 address nobody listens on until the test
// ends: the port stays bound, without SO_REUSEADDR and without listen(2),
// so a connect is refused and the kernel hands the port to no other
// socket (a port merely closed again can come back from the next ":0").
func closedAddr(t *testing.T) string {
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
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
}
