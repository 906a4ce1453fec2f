//go:build linux

package netpoll

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"testing"
	"time"

	"github.com/wsgate/wsgate/internal/testnet"
)

// TestRawTCPConn: the raw-syscall connection behaves like the TCPConn it
// wraps: data both ways, a write larger than the socket buffers that
// waits for the reader, EOF, read deadlines, and errors after Close.
func TestRawTCPConn(t *testing.T) {
	a, peer := tcpPair(t)
	c := NewTCPConn(a)
	if _, ok := c.(*rawTCPConn); !ok {
		t.Fatalf("NewTCPConn returned %T, want *rawTCPConn", c)
	}
	if tc, ok := TCPConn(c); !ok || tc != a {
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
	if _, err := c.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
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
	c := NewTCPConn(a)
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

// Shared with the other packages' tests.
var tcpPair = testnet.TCPPair
