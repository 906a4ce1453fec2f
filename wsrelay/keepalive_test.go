//go:build linux

package wsrelay

import (
	"context"
	"crypto/tls"
	"net"
	"syscall"
	"testing"

	"github.com/wsgate/wsgate/internal/netpoll"
)

// TestKeepAlive: a WebSocket client's socket gets TCP keep-alive probes
// (15 s idle, 15 s apart, 9 of them) whether it arrives raw, as a
// raw TCP conn or under TLS; the listener accepted it without.
func TestKeepAlive(t *testing.T) {
	ln, err := (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accept := func() *net.TCPConn {
		t.Helper()
		d, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.TCPConn)
	}
	opt := func(c *net.TCPConn, level, name int) int {
		t.Helper()
		rc, err := c.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var v int
		var gerr error
		if err := rc.Control(func(fd uintptr) { v, gerr = syscall.GetsockoptInt(int(fd), level, name) }); err != nil || gerr != nil {
			t.Fatal(err, gerr)
		}
		return v
	}
	for _, tc := range []struct {
		name string
		wrap func(*net.TCPConn) net.Conn
	}{
		{"tcp", func(c *net.TCPConn) net.Conn { return c }},
		{"raw", func(c *net.TCPConn) net.Conn { return netpoll.NewTCPConn(c) }},
		{"tls", func(c *net.TCPConn) net.Conn { return tls.Server(netpoll.NewTCPConn(c), &tls.Config{}) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := accept()
			if v := opt(c, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE); v != 0 {
				t.Fatalf("accepted with SO_KEEPALIVE %d, want 0", v)
			}
			keepAlive(tc.wrap(c))
			got := [4]int{
				opt(c, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE),
				opt(c, syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE),
				opt(c, syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL),
				opt(c, syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT),
			}
			if want := [4]int{1, 15, 15, 9}; got != want {
				t.Errorf("SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT = %v, want %v", got, want)
			}
		})
	}
}
