//go:build linux

package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
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
