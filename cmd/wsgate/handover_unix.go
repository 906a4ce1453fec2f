//go:build unix

package main

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// handOverTimeout bounds the wait for the new process to be ready; after
// it, the new process is killed and this one goes on serving.
const handOverTimeout = time.Minute

// socketShare is empty on Unix: each generation gets a duplicate of the
// socket (duplicate).
//
//lint:ignore U1000 used on Windows
type socketShare struct{}

// notifySignals routes the handled signals to sigs' channels.
func notifySignals(term, hup, usr2 chan<- os.Signal) {
	signal.Notify(term, syscall.SIGTERM, syscall.SIGINT)
	signal.Notify(hup, syscall.SIGHUP)
	signal.Notify(usr2, syscall.SIGUSR2)
}

// handOver starts a new process of the current executable with the same
// arguments, passing it every listening socket (the way nginx's USR2 and
// HAProxy's -sf do), and closes done once it reports that it serves: the
// caller then drains as on SIGTERM, without shutdown_delay. The sockets
// stay open throughout, so no connection is refused. A new process that
// fails (a bad config, a crash, no readiness within handOverTimeout)
// leaves this one serving.
func (g *gateway) handOver(done chan<- struct{}) {
	g.mu.Lock()
	if g.stopping || g.handingOver {
		g.mu.Unlock()
		g.log.Warn("hand-over already in progress or shutting down; SIGUSR2 ignored")
		return
	}
	// Duplicates of the sockets' descriptors (close-on-exec: no other
	// child gets them), taken without (*os.File).Fd, which would switch
	// the sockets, shared with this process's listeners, to blocking
	// mode: an accept here would then block its thread, and closing the
	// listener would wait for the next client.
	var (
		fds   []int
		pairs []string
	)
	closeFDs := func() {
		for _, fd := range fds {
			syscall.Close(fd)
		}
	}
	for _, key := range slices.Sorted(maps.Keys(g.lns)) {
		fd, err := dupSocket(g.lns[key].sock)
		if err != nil {
			g.mu.Unlock()
			closeFDs()
			g.log.Error("hand-over failed", "error", fmt.Sprintf("listener %q: %v", key, err))
			return
		}
		// fds[i] becomes descriptor 3+i in the new process.
		pairs = append(pairs, strconv.Itoa(3+len(fds))+":"+key)
		fds = append(fds, fd)
	}
	if a := g.adminSrv; a != nil {
		if tl, ok := a.ln.(*net.TCPListener); ok {
			fd, err := dupSocket(tl)
			if err != nil {
				g.mu.Unlock()
				closeFDs()
				g.log.Error("hand-over failed", "error", fmt.Sprintf("admin listener: %v", err))
				return
			}
			pairs = append(pairs, strconv.Itoa(3+len(fds))+":"+adminKey(a.addr))
			fds = append(fds, fd)
		}
	}
	g.handingOver = true
	g.mu.Unlock()
	failed := func(msg string, args ...any) {
		g.log.Error(msg, args...)
		g.mu.Lock()
		g.handingOver = false
		g.mu.Unlock()
	}

	exe, err := os.Executable()
	if err != nil {
		closeFDs()
		failed("hand-over failed", "error", err.Error())
		return
	}
	r, w, err := os.Pipe()
	if err != nil {
		closeFDs()
		failed("hand-over failed", "error", err.Error())
		return
	}
	files := []uintptr{0, 1, 2}
	for _, fd := range fds {
		files = append(files, uintptr(fd))
	}
	files = append(files, w.Fd()) // our end of the pipe: blocking is fine
	env := append(os.Environ(),
		listenFDsEnv+"="+strings.Join(pairs, ","),
		readyFDEnv+"="+strconv.Itoa(3+len(fds)))
	pid, err := syscall.ForkExec(exe, append([]string{exe}, os.Args[1:]...), &syscall.ProcAttr{Env: env, Files: files})
	closeFDs() // the new process has its own copies
	w.Close()
	if err != nil {
		r.Close()
		failed("hand-over failed", "error", err.Error())
		return
	}
	proc, err := os.FindProcess(pid)
	if err != nil { // not on Unix
		r.Close()
		failed("hand-over failed", "error", err.Error())
		return
	}
	g.log.Info("hand-over: new process started", "pid", pid)
	exited := make(chan error, 1)
	go func() { // reaps it if it dies before this process exits
		st, err := proc.Wait()
		if err == nil && !st.Success() {
			err = errors.New(st.String())
		}
		exited <- err
	}()
	go func() {
		defer r.Close()
		ready := make(chan bool, 1)
		go func() {
			b, _ := io.ReadAll(io.LimitReader(r, 64))
			ready <- strings.HasPrefix(string(b), "ready\n")
		}()
		timer := time.NewTimer(handOverTimeout)
		defer timer.Stop()
		select {
		case ok := <-ready:
			if ok {
				g.log.Info("hand-over: new process ready; draining", "pid", pid)
				close(done)
				return
			}
			err := <-exited
			failed("hand-over failed: the new process exited before it was ready; still serving", "pid", pid, "error", fmt.Sprint(err))
		case <-timer.C:
			_ = proc.Kill()
			<-exited
			failed("hand-over failed: the new process was not ready in time and was killed; still serving",
				"pid", pid, "timeout", handOverTimeout.String())
		}
	}()
}

// duplicate returns a listener on a duplicate of l's socket, which
// closes on its own: each server generation has one.
func (l *listener) duplicate() (net.Listener, error) {
	fd, err := dupSocket(l.sock)
	if err != nil {
		return nil, err
	}
	// A descriptor NewFile finds non-blocking stays so through Fd.
	f := os.NewFile(uintptr(fd), "listener "+l.sock.Addr().String())
	ln, err := net.FileListener(f)
	f.Close()
	return ln, err
}

// dupSocket returns a close-on-exec duplicate of ln's descriptor, taken
// under RawConn.Control. It shares the socket's flags: it stays
// non-blocking.
func dupSocket(ln *net.TCPListener) (int, error) {
	rc, err := ln.SyscallConn()
	if err != nil {
		return -1, err
	}
	dup, dupErr := -1, error(nil)
	err = rc.Control(func(fd uintptr) {
		r, _, errno := syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_DUPFD_CLOEXEC, 0)
		if errno != 0 {
			dupErr = errno
			return
		}
		dup = int(r)
	})
	if err == nil {
		err = dupErr
	}
	return dup, err
}
