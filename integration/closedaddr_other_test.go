//go:build !unix

package integration

import (
	"net"
	"testing"
)

// closedAddr returns a 127.0.0.1 address nobody listens on: a port the
// kernel handed out and that was closed again.
func closedAddr(t *testing.T) string { return freeAddr(t) }

// freeAddr returns a 127.0.0.1 address that was free a moment ago, for a
// listener whose port must be known before wsgate starts.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
