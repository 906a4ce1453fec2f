//go:build !unix

package proxy

import (
	"net"
	"testing"
)

// closedPort returns an address where nothing listens: a port the kernel
// handed out and that was closed again.
func closedPort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
