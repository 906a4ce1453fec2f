package proxy

import (
	"syscall"
	"unsafe"
)

// rawSockets: legs read and write their sockets with raw system calls.
const rawSockets = true

const (
	sysRead  = syscall.SYS_READ
	sysWrite = syscall.SYS_WRITE
)

// rawIO is read(2) or write(2) on a non-blocking socket, as a raw system
// call: it cannot block, so it skips the runtime's syscall bookkeeping,
// which on a busy poller made the scheduler hand its P to another thread
// in the middle of a loopback write (a context switch per write).
func rawIO(trap uintptr, fd uintptr, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		n, _, e := syscall.RawSyscall(trap, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch e {
		case 0:
			return int(n), nil
		case syscall.EINTR:
			continue
		}
		return 0, e
	}
}
