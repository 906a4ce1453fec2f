package main

import (
	"errors"
	"net"
	"sync"
	"time"
)

// acceptShare lets server generations share a listening socket whose
// descriptor cannot be duplicated (Windows): one goroutine accepts and
// hands each connection to the newest generation still open. It is
// portable, and tested on every platform.
type acceptShare struct {
	once   sync.Once
	mu     sync.Mutex
	gens   []*sharedListener // open generations, newest last
	failed chan struct{}     // closed when the socket's Accept fails for good
	err    error             // why, set before failed is closed
}

// listener returns a listener for a new generation on ln: it receives
// the connections accepted from now on, until it is closed. The first
// call starts the accepting goroutine, which ends when ln is closed.
func (s *acceptShare) listener(ln *net.TCPListener) net.Listener {
	s.once.Do(func() {
		s.failed = make(chan struct{})
		go s.accept(ln)
	})
	sl := &sharedListener{share: s, addr: ln.Addr(), conns: make(chan net.Conn), done: make(chan struct{})}
	s.mu.Lock()
	s.gens = append(s.gens, sl)
	s.mu.Unlock()
	return sl
}

func (s *acceptShare) accept(ln *net.TCPListener) {
	backoff := 5 * time.Millisecond
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if !errors.Is(err, net.ErrClosed) {
				time.Sleep(backoff) // out of handles: as net/http does
				if backoff < time.Second {
					backoff *= 2
				}
				continue
			}
			s.err = err
			close(s.failed)
			return
		}
		backoff = 5 * time.Millisecond
		s.hand(c)
	}
}

// hand gives c to the newest open generation. One retired while c waited
// for it (a reload) passes it on to the generation that replaced it, as
// the kernel's backlog does for duplicated sockets; with none open, c is
// closed.
func (s *acceptShare) hand(c net.Conn) {
	for {
		s.mu.Lock()
		var to *sharedListener
		if n := len(s.gens); n > 0 {
			to = s.gens[n-1]
		}
		s.mu.Unlock()
		if to == nil {
			c.Close()
			return
		}
		select {
		case to.conns <- c:
			return
		case <-to.done:
		}
	}
}

// sharedListener is one generation's view of a shared socket.
type sharedListener struct {
	share *acceptShare
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (sl *sharedListener) Accept() (net.Conn, error) {
	select {
	case c := <-sl.conns:
		return c, nil
	case <-sl.done:
		return nil, net.ErrClosed
	case <-sl.share.failed:
		return nil, sl.share.err
	}
}

func (sl *sharedListener) Close() error {
	sl.once.Do(func() {
		// Out of the list first, so that hand, woken by done, picks
		// another generation.
		s := sl.share
		s.mu.Lock()
		for i, g := range s.gens {
			if g == sl {
				s.gens = append(s.gens[:i], s.gens[i+1:]...)
				break
			}
		}
		s.mu.Unlock()
		close(sl.done)
	})
	return nil
}

func (sl *sharedListener) Addr() net.Addr { return sl.addr }
