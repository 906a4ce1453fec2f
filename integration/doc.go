// Package integration builds the real wsgate binary and tests it from the
// outside: CLI exit codes, proxying over real sockets to real backends,
// TLS with SNI and reload, graceful shutdown, the built-in demo in a
// headless browser, and third-party WebSocket clients. It also checks the
// import boundaries between packages. It has no non-test code; every test
// is skipped under -short.
//
// Tests talk to 127.0.0.1 only, on ports picked by the kernel: the binary
// listens on 127.0.0.1:0 and the test reads the address from its
// "listening" log line.
package integration
