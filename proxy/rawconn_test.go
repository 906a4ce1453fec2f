//go:build linux

package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"testing"
	"time"
)

// TestRawTCPConn: the raw-syscall connection behaves like the TCPConn it
// wraps: data both ways, a write larger than the socket buffers that
// waits for the reader, EOF, read deadlines, and errors after Close.
func TestRawTCPConn(t *testing.T) {
	a, peer := tcpPair(t)
	c := newRawTCPConn(a)
	if _, ok := c.(*rawTCPConn); !ok {
		t.Fatalf("newRawTCPConn returned %T, want *rawTCPConn", c)
	}
	if tc, ok := tcpConn(c); !ok || tc != a {
		t.Fatal("tcpConn does not find the TCPConn under the wrapper")
	}

	// A write much larger than the socket buffers completes once the
	// peer reads, in order.
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(peer, int64(len(big))))
		got <- b
	}()
	if n, err := c.Write(big); n != len(big) || err != nil {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(big))
	}
	if b := <-got; !bytes.Equal(b, big) {
		t.Fatalf("peer read %d bytes, not what was written", len(b))
	}

	// Reads: what the peer wrote, then a deadline, then EOF.
	if _, err := peer.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	if n, err := io.ReadAtLeast(c, buf, 5); n != 5 || err != nil || string(buf[:5]) != "hello" {
		t.Fatalf("Read = %q, %v; want hello", buf[:n], err)
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := c.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) || !isTimeout(err) {
		t.Fatalf("Read past the deadline = %v, want a timeout", err)
	}
	c.SetReadDeadline(time.Time{})
	peer.Close()
	if n, err := c.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("Read after the peer closed = %d, %v; want EOF", n, err)
	}

	c.Close()
	if _, err := c.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close = %v, want net.ErrClosed", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close = %v, want net.ErrClosed", err)
	}
}

// TestKeepAlive: a WebSocket client's socket gets TCP keep-alive probes
// (15 s idle, 15 s apart, 9 of them) whether it arrives raw, as a
// rawTCPConn or under TLS; the listener accepted it without.
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
		{"raw", func(c *net.TCPConn) net.Conn { return newRawTCPConn(c) }},
		{"tls", func(c *net.TCPConn) net.Conn { return tls.Server(newRawTCPConn(c), &tls.Config{}) }},
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

// TestRawWriteNoSIGPIPE: a raw write to a peer that is gone fails with
// EPIPE and raises no SIGPIPE (send(2) with MSG_NOSIGNAL): the runtime
// ignores it, but its delivery and sigreturn cost a few microseconds on
// every write after a client hung up (once per server-sent event stream
// a client abandons).
func TestRawWriteNoSIGPIPE(t *testing.T) {
	sig := make(chan os.Signal, 8)
	signal.Notify(sig, syscall.SIGPIPE, syscall.SIGALRM)
	defer signal.Stop(sig)
	a, peer := tcpPair(t)
	c := newRawTCPConn(a)
	if err := peer.(*net.TCPConn).SetLinger(0); err != nil {
		t.Fatal(err)
	}
	peer.Close() // RST: the next write fails with ECONNRESET, later ones with EPIPE
	var err error
	for i := 0; i < 100 && !errors.Is(err, syscall.EPIPE); i++ {
		_, err = c.Write([]byte("x"))
	}
	if !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("writes to a reset peer: %v, want EPIPE", err)
	}
	// SIGALRM is a fence: the runtime hands pending signals over in
	// number order, so a SIGPIPE (13) raised before it (14) arrives first.
	if err := syscall.Kill(os.Getpid(), syscall.SIGALRM); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(10 * time.Second)
	for {
		select {
		case s := <-sig:
			if s == syscall.SIGPIPE {
				t.Fatal("a raw write raised SIGPIPE")
			}
			return
		case <-timeout:
			t.Fatal("SIGALRM not delivered")
		}
	}
}
