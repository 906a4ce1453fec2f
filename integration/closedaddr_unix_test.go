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
// so a connect is refused and no other socket can take the port (a port
// merely closed again can come back from the next ":0").
func closedAddr(t *testing.T) string { return heldAddr(t, false) }

// freeAddr returns a 127.0.0.1 address for a listener whose port must be
// known before wsgate starts. The port stays bound, with SO_REUSEADDR and
// without listen(2), until the test ends: the kernel hands it to no ":0"
// bind (the other test binaries run at the same time), and wsgate, whose
// listeners set SO_REUSEADDR too, can still listen on it.
func freeAddr(t *testing.T) string { return heldAddr(t, true) }

func heldAddr(t *testing.T, reuse bool) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	syscall.CloseOnExec(fd)
	t.Cleanup(func() { syscall.Close(fd) })
	if reuse {
		if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
}

func TestHeldAddrs(t *testing.T) {
	closed, free := closedAddr(t), freeAddr(t)
	if c, err := net.Dial("tcp", closed); err == nil {
		c.Close()
		t.Errorf("dial %s (closedAddr) succeeded, want refused", closed)
	}
	if ln, err := net.Listen("tcp", closed); err == nil {
		ln.Close()
		t.Errorf("listen on %s (closedAddr) succeeded, want the port held", closed)
	}
	ln, err := net.Listen("tcp", free)
	if err != nil {
		t.Fatalf("listen on %s (freeAddr): %v", free, err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", free)
	if err != nil {
		t.Fatalf("dial %s after listening: %v", free, err)
	}
	c.Close()
	// Neither port comes back from ":0" binds (Linux hands a just-closed
	// port out again within a few thousand).
	for range 5000 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		a := l.Addr().String()
		l.Close()
		if a == closed || a == free {
			t.Fatalf("a :0 listen got the held address %s", a)
		}
	}
}
