package proxy

import (
	"syscall"
	"unsafe"
)

// rawSockets: legs read and write their sockets with raw system calls.
const rawSockets = true

// recv(2) and send(2), not read(2) and write(2): send takes
// MSG_NOSIGNAL, so a write to a peer that has gone fails with EPIPE
// without raising SIGPIPE (the runtime ignores it, but its delivery and
// sigreturn cost a few microseconds per failed write).
const (
	sysRead  = syscall.SYS_RECVFROM
	sysWrite = syscall.SYS_SENDTO
)

// rawIO is recv(2) or send(2) on a non-blocking socket, as a raw system
// call: it cannot block, so it skips the runtime's syscall bookkeeping,
// which on a busy poller made the scheduler hand its P to another thread
// in the middle of a loopback write (a context switch per write).
func rawIO(trap uintptr, fd uintptr, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var flags uintptr
	if trap == sysWrite {
		flags = syscall.MSG_NOSIGNAL
	}
	for {
		n, _, e := syscall.RawSyscall6(trap, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), flags, 0, 0)
		switch e {
		case 0:
			return int(n), nil
		case syscall.EINTR:
			continue
		}
		return 0, e
	}
}
