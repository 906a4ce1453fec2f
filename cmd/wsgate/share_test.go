package main

import (
	"errors"
	"net"
	"testing"
	"time"
)

// TestAcceptShare: generations sharing one socket (the Windows path) get
// the connections accepted while they are the newest open one; closing
// the socket ends every Accept with an error.
func TestAcceptShare(t *testing.T) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var s acceptShare
	old := s.listener(ln)
	if old.Addr().String() != ln.Addr().String() {
		t.Fatalf("Addr = %v, want %v", old.Addr(), ln.Addr())
	}
	type accepted struct {
		c   net.Conn
		err error
	}
	accept := func(l net.Listener) <-chan accepted {
		ch := make(chan accepted, 1)
		go func() {
			c, err := l.Accept()
			ch <- accepted{c, err}
		}()
		return ch
	}
	// dial connects and says which side it is, so that the receiving
	// generation can be told by what it reads.
	dial := func(tag byte) net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte{tag}); err != nil {
			t.Fatal(err)
		}
		return c
	}
	got := func(ch <-chan accepted, want byte) {
		t.Helper()
		select {
		case a := <-ch:
			if a.err != nil {
				t.Fatalf("Accept: %v", a.err)
			}
			defer a.c.Close()
			b := make([]byte, 1)
			a.c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := a.c.Read(b); err != nil || b[0] != want {
				t.Fatalf("read %q, %v; want %q", b, err, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no connection accepted (want %q)", want)
		}
	}

	c1 := dial('1')
	defer c1.Close()
	got(accept(old), '1')

	// A new generation takes the next connections; the old one gets none.
	cur := s.listener(ln)
	oldCh := accept(old)
	c2 := dial('2')
	defer c2.Close()
	got(accept(cur), '2')
	select {
	case a := <-oldCh:
		t.Fatalf("the old generation accepted a connection (%v, %v)", a.c, a.err)
	default:
	}

	// Closed, the old one's pending Accept ends with net.ErrClosed.
	old.Close()
	select {
	case a := <-oldCh:
		if !errors.Is(a.err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v, want net.ErrClosed", a.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
	if err := old.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	// The socket closed: the newest generation's Accept fails too.
	curCh := accept(cur)
	ln.Close()
	select {
	case a := <-curCh:
		if a.err == nil {
			a.c.Close()
			t.Fatal("Accept succeeded after the socket was closed")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Accept did not return after the socket was closed")
	}
}
