package main

import (
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"
)

// readyFDEnv names the pipe a process taking over writes "ready\n" to
// once it serves (see handOver).
const readyFDEnv = "WSGATE_READY_FD"

// handOverTimeout bounds the wait for the new process to be ready; after
// it, the new process is killed and this one goes on serving.
const handOverTimeout = time.Minute

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
	var (
		files []*os.File
		pairs []string
	)
	closeFiles := func() {
		for _, f := range files {
			f.Close()
		}
	}
	for _, key := range slices.Sorted(maps.Keys(g.lns)) {
		f, err := g.lns[key].sock.File()
		if err != nil {
			g.mu.Unlock()
			closeFiles()
			g.log.Error("hand-over failed", "error", fmt.Sprintf("listener %q: %v", key, err))
			return
		}
		// ExtraFiles[i] becomes descriptor 3+i in the new process.
		pairs = append(pairs, strconv.Itoa(3+len(files))+":"+key)
		files = append(files, f)
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
		closeFiles()
		failed("hand-over failed", "error", err.Error())
		return
	}
	r, w, err := os.Pipe()
	if err != nil {
		closeFiles()
		failed("hand-over failed", "error", err.Error())
		return
	}
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = append(files, w)
	cmd.Env = append(os.Environ(),
		listenFDsEnv+"="+strings.Join(pairs, ","),
		readyFDEnv+"="+strconv.Itoa(3+len(files)))
	err = cmd.Start()
	closeFiles() // the new process has its own copies
	w.Close()
	if err != nil {
		r.Close()
		failed("hand-over failed", "error", err.Error())
		return
	}
	g.log.Info("hand-over: new process started", "pid", cmd.Process.Pid)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaps it if it dies before this process exits
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
				g.log.Info("hand-over: new process ready; draining", "pid", cmd.Process.Pid)
				close(done)
				return
			}
			err := <-exited
			failed("hand-over failed: the new process exited before it was ready; still serving", "pid", cmd.Process.Pid, "error", fmt.Sprint(err))
		case <-timer.C:
			_ = cmd.Process.Kill()
			<-exited
			failed("hand-over failed: the new process was not ready in time and was killed; still serving",
				"pid", cmd.Process.Pid, "timeout", handOverTimeout.String())
		}
	}()
}

// tellParentReady tells the process this one takes over from (if any)
// that every listener serves.
func tellParentReady(log *slog.Logger) {
	v := os.Getenv(readyFDEnv)
	if v == "" {
		return
	}
	os.Unsetenv(readyFDEnv)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		log.Warn("bad "+readyFDEnv, "value", v)
		return
	}
	f := os.NewFile(uintptr(fd), "ready pipe")
	if _, err := f.WriteString("ready\n"); err != nil {
		log.Warn("cannot tell the previous process that this one is ready", "error", err.Error())
	}
	f.Close()
	log.Info("took over the listening sockets")
}
