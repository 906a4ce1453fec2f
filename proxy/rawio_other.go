//go:build !linux

package proxy

import "errors"

// rawSockets: off Linux legs read and write through their net.Conn (and
// keep their read buffer); rawIO is never called.
const rawSockets = false

const (
	sysRead  = 0
	sysWrite = 1
)

func rawIO(trap uintptr, fd uintptr, p []byte) (int, error) {
	return 0, errors.New("raw socket I/O is used on Linux only")
}
