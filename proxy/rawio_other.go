//go:build !unix

package proxy

import "syscall"

// rawSockets: elsewhere legs read and write through their net.Conn (and
// keep their read buffer); rawIO is never called.
const rawSockets = false

const (
	sysRead  = 0
	sysWrite = 1
)

func rawIO(trap uintptr, fd uintptr, p []byte) (int, error) { return 0, syscall.EWINDOWS }
