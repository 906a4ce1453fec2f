package main

import (
	"net"
	"runtime"
	"strings"
	"testing"
	"time"
)

// acceptBlocked reports whether acceptShare's goroutine holds an
// accepted connection and waits to hand it over (its select).
func acceptBlocked() bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "(*acceptShare).accept(") && strings.Contains(g, "[select") {
			return true
		}
	}
	return false
}

// TestReview14ShareRetiredGenerationDropsConn: on Windows, a reload
// creates a new generation and closes the old one. A connection the
// accepting goroutine took while the old generation was the newest, and
// that the old generation had not yet taken from its channel when it was
// closed, is closed (share.go: `case <-to.done: c.Close()`) although a
// newer generation is open and would serve it. On Unix the kernel keeps
// it in the backlog for the new generation; here the client gets a reset
// or EOF. The same happens on a reload that fails after creating the new
// generation (gateway.go fail()).
func TestReview14ShareRetiredGenerationDropsConn(t *testing.T) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var s acceptShare
	old := s.listener(ln)

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte{'x'}); err != nil {
		t.Fatal(err)
	}
	// Wait until the accepting goroutine has the connection and waits
	// for the old generation (which, busy, has not called Accept).
	deadline := time.Now().Add(10 * time.Second)
	for !acceptBlocked() {
		if time.Now().After(deadline) {
			t.Fatal("the accepting goroutine never took the connection")
		}
		time.Sleep(time.Millisecond)
	}

	// A reload: the new generation, then the old one retired.
	cur := s.listener(ln)
	defer cur.Close()
	old.Close()

	got := make(chan net.Conn, 1)
	go func() {
		a, err := cur.Accept()
		if err == nil {
			got <- a
		}
	}()
	select {
	case a := <-got:
		defer a.Close()
		b := make([]byte, 1)
		a.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := a.Read(b); err != nil || b[0] != 'x' {
			t.Fatalf("read %q, %v", b, err)
		}
	case <-time.After(5 * time.Second):
		c.SetReadDeadline(time.Now().Add(time.Second))
		_, rerr := c.Read(make([]byte, 1))
		t.Fatalf("the connection accepted for the retired generation never reached the open one (client read: %v)", rerr)
	}
}
