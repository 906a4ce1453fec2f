package main

import (
	"net"
	"os"
	"os/signal"
	"syscall"
)

// notifySignals routes Ctrl-C and SIGTERM to term. There is no SIGHUP
// or SIGUSR2 on Windows: a config change is seen by the file watch.
func notifySignals(term, _, _ chan<- os.Signal) {
	signal.Notify(term, os.Interrupt, syscall.SIGTERM)
}

// handOver is not available on Windows.
func (g *gateway) handOver(chan<- struct{}) {
	g.log.Warn("hand-over is not supported on Windows")
}

// socketShare: the socket's descriptor cannot be duplicated into a
// listener of its own (no net.FileListener), so generations share one
// accepting goroutine.
type socketShare struct{ acceptShare }

// duplicate returns a listener for a new generation: it receives the
// connections accepted from now on, until it is closed.
func (l *listener) duplicate() (net.Listener, error) {
	return l.share.listener(l.sock), nil
}
