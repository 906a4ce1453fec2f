package main

import (
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// notifier tells a service manager how wsgate is doing, in systemd's
// sd_notify protocol: one datagram of KEY=VALUE lines on the unix socket
// named by $NOTIFY_SOCKET (a path, or "@name" for the abstract namespace).
// It needs no systemd library; without $NOTIFY_SOCKET it does nothing.
// wsgate sends READY=1 once every listener serves, RELOADING=1 and then
// READY=1 around a reload, and STOPPING=1 when the shutdown begins; a
// process that takes over (SIGUSR2) also sends MAINPID, so that systemd
// follows it (the unit needs NotifyAccess=all for that).
type notifier struct {
	addr *net.UnixAddr // nil: no service manager is listening
	log  *slog.Logger
	mu   sync.Mutex // one datagram at a time, in order
}

func newNotifier(log *slog.Logger) *notifier {
	n := &notifier{log: log}
	name := os.Getenv("NOTIFY_SOCKET")
	switch {
	case name == "":
	case strings.HasPrefix(name, "@"):
		n.addr = &net.UnixAddr{Name: "\x00" + name[1:], Net: "unixgram"}
	case strings.HasPrefix(name, "/"):
		n.addr = &net.UnixAddr{Name: name, Net: "unixgram"}
	default:
		log.Warn("NOTIFY_SOCKET is neither a path nor an abstract name; not notifying", "value", name)
	}
	return n
}

// send sends the state lines (such as "READY=1") as one datagram. A
// failure is logged, never fatal: the service manager may be gone.
func (n *notifier) send(lines ...string) {
	if n == nil || n.addr == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err == nil {
		_, err = c.Write([]byte(strings.Join(lines, "\n") + "\n"))
		c.Close()
	}
	if err != nil {
		n.log.Warn("cannot notify the service manager", "socket", os.Getenv("NOTIFY_SOCKET"), "error", err.Error())
	}
}

// ready says that wsgate serves; tookOver adds MAINPID, for a process
// that took over from another.
func (n *notifier) ready(tookOver bool, status string) {
	if tookOver {
		n.send("MAINPID="+strconv.Itoa(os.Getpid()), "READY=1", "STATUS="+status)
		return
	}
	n.send("READY=1", "STATUS="+status)
}
