package main

import (
	"log/slog"
	"os"
	"strconv"
)

// readyFDEnv names the pipe a process taking over writes "ready\n" to
// once it serves (see handOver).
const readyFDEnv = "WSGATE_READY_FD"

// tellParentReady tells the process this one takes over from (if any)
// that every listener serves, and reports whether there was one.
func tellParentReady(log *slog.Logger) bool {
	v := os.Getenv(readyFDEnv)
	if v == "" {
		return false
	}
	os.Unsetenv(readyFDEnv)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		log.Warn("bad "+readyFDEnv, "value", v)
		return false
	}
	f := os.NewFile(uintptr(fd), "ready pipe")
	if _, err := f.WriteString("ready\n"); err != nil {
		log.Warn("cannot tell the previous process that this one is ready", "error", err.Error())
	}
	f.Close()
	log.Info("took over the listening sockets")
	return true
}
