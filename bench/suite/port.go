//go:build linux

package main

import "syscall"

// reservePort picks a 127.0.0.1 port for a proxy's listener and holds it
// until release: bound with SO_REUSEADDR but not listening, so the kernel
// hands it to no ":0" bind or outgoing connection in the meantime, while
// the proxy (nginx, HAProxy, Caddy and wsgate all set SO_REUSEADDR on
// their listeners) can still listen on it.
func reservePort() (port int, release func(), err error) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		return 0, nil, err
	}
	syscall.CloseOnExec(fd)
	release = func() { syscall.Close(fd) }
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1); err != nil {
		release()
		return 0, nil, err
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		release()
		return 0, nil, err
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		release()
		return 0, nil, err
	}
	return sa.(*syscall.SockaddrInet4).Port, release, nil
}
