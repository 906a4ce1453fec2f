//go:build !unix

package integration

import "testing"

// closedAddr returns a 127.0.0.1 address nobody listens on: a port the
// kernel handed out and that was closed again.
func closedAddr(t *testing.T) string { return freeAddr(t) }
