//go:build linux

package integration

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// notifySocket is a fake systemd notify socket: it collects the
// datagrams wsgate sends.
type notifySocket struct {
	conn *net.UnixConn
	got  chan string
}

func newNotifySocket(t *testing.T, name string) *notifySocket {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n := &notifySocket{conn: c, got: make(chan string, 64)}
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			if err != nil {
				close(n.got)
				return
			}
			n.got <- string(buf[:k])
		}
	}()
	t.Cleanup(func() { c.Close() })
	return n
}

// next returns the next datagram, failing after ioTimeout.
func (n *notifySocket) next(t *testing.T, what string) string {
	t.Helper()
	select {
	case m, ok := <-n.got:
		if !ok {
			t.Fatalf("notify socket closed, want %s", what)
		}
		return m
	case <-time.After(ioTimeout):
		t.Fatalf("no notification within %v, want %s", ioTimeout, what)
	}
	return ""
}

// expect reads the next datagram and checks that it holds every line of
// want (KEY=VALUE; a value ending in "*" matches a prefix).
func (n *notifySocket) expect(t *testing.T, want ...string) string {
	t.Helper()
	m := n.next(t, strings.Join(want, " "))
	lines := strings.Split(strings.TrimSuffix(m, "\n"), "\n")
	for _, w := range want {
		found := false
		for _, l := range lines {
			if l == w || strings.HasSuffix(w, "*") && strings.HasPrefix(l, strings.TrimSuffix(w, "*")) {
				found = true
			}
		}
		if !found {
			t.Fatalf("notification %q lacks %q", m, w)
		}
	}
	return m
}

// TestSystemdNotify: with $NOTIFY_SOCKET set (systemd Type=notify), wsgate
// sends READY=1 once it serves, RELOADING=1 then READY=1 around each
// reload (a failed one included), and STOPPING=1 when SIGTERM starts the
// shutdown; the socket may also be in the abstract namespace ("@name").
func TestSystemdNotify(t *testing.T) {
	needBinary(t)
	for _, abstract := range []bool{false, true} {
		t.Run(map[bool]string{false: "path", true: "abstract"}[abstract], func(t *testing.T) {
			dir := t.TempDir()
			sockPath := filepath.Join(dir, "notify.sock")
			env := "NOTIFY_SOCKET=" + sockPath
			if abstract {
				name := fmt.Sprintf("wsgate-test-%d-%d", os.Getpid(), time.Now().UnixNano())
				sockPath = "\x00" + name
				env = "NOTIFY_SOCKET=@" + name
			}
			ns := newNotifySocket(t, sockPath)
			cfg := filepath.Join(dir, "wsgate.yaml")
			good := "listeners:\n  - addr: 127.0.0.1:0\nroutes:\n  - match: {path: /}\n    respond: {body: hi}\n"
			if err := os.WriteFile(cfg, []byte(good), 0o600); err != nil {
				t.Fatal(err)
			}
			g := startGatewayFile(t, cfg, []string{env})
			m := ns.expect(t, "READY=1", "STATUS=serving")
			if strings.Contains(m, "MAINPID=") {
				t.Errorf("a process that took over from no one sent MAINPID: %q", m)
			}
			if _, body := get(t, httpClient(), "http://"+g.Addr+"/", nil); body != "hi" {
				t.Fatalf("GET / = %q after READY=1", body)
			}

			g.signal(syscall.SIGHUP)
			ns.expect(t, "RELOADING=1", "STATUS=reloading (SIGHUP)")
			ns.expect(t, "READY=1", "STATUS=serving")

			if err := os.WriteFile(cfg, []byte("listeners: [\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			g.signal(syscall.SIGHUP)
			ns.expect(t, "RELOADING=1")
			ns.expect(t, "READY=1", "STATUS=serving the previous config*")

			g.stopped = true
			g.signal(syscall.SIGTERM)
			ns.expect(t, "STOPPING=1")
			if code := g.wait(ioTimeout); code != 0 {
				t.Errorf("exit code %d, want 0", code)
			}
			select {
			case m, ok := <-ns.got:
				if ok {
					t.Errorf("after STOPPING=1: %q, want nothing", m)
				}
			default:
			}
		})
	}
}

// TestSystemdNotifyHandOver: the process a SIGUSR2 starts sends MAINPID
// (its own pid) with READY=1, so that systemd follows it
// (NotifyAccess=all); the old process then drains without STOPPING=1,
// and the new one sends STOPPING=1 when it is stopped.
func TestSystemdNotifyHandOver(t *testing.T) {
	needBinary(t)
	dir := t.TempDir()
	ns := newNotifySocket(t, filepath.Join(dir, "notify.sock"))
	t.Setenv("NOTIFY_SOCKET", filepath.Join(dir, "notify.sock"))
	path := filepath.Join(dir, "wsgate.yaml")
	if err := os.WriteFile(path, []byte("listeners:\n  - addr: 127.0.0.1:0\nroutes:\n  - match: {path: /}\n    respond: {body: ok}\ntimeouts: {drain: 1s}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := startHandOverGateway(t, path)
	if m := ns.expect(t, "READY=1"); strings.Contains(m, "MAINPID") {
		t.Errorf("first process sent %q, want no MAINPID", m)
	}
	h.signal(syscall.SIGUSR2)
	started := h.waitLog(ioTimeout, "hand-over: new process started", func(e map[string]any) bool {
		return e["msg"] == "hand-over: new process started"
	})
	child := h.child(started)
	ns.expect(t, fmt.Sprintf("MAINPID=%d", child.Pid), "READY=1")
	h.stopped = true
	if code := h.wait(stopTimeout); code != 0 {
		t.Errorf("old process: exit code %d, want 0", code)
	}
	select {
	case m := <-ns.got:
		t.Errorf("the old process sent %q after handing over, want nothing", m)
	default:
	}
	if code, err := h.stopChild(child); err != nil || code != 0 {
		t.Errorf("new process: exit %d, %v", code, err)
	}
	ns.expect(t, "STOPPING=1")
}

// TestSystemdUnit: deploy/systemd/wsgate.service passes systemd-analyze
// verify (with its paths pointed at the binary and a config under test),
// is Type=notify with NotifyAccess=all and reloads with SIGHUP, and its
// TimeoutStopSec covers the default shutdown_delay + drain.
func TestSystemdUnit(t *testing.T) {
	bin := needBinary(t)
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	unit, err := os.ReadFile(filepath.Join(moduleRoot, "deploy", "systemd", "wsgate.service"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(unit)
	for _, want := range []string{"Type=notify\n", "NotifyAccess=all\n", "ExecReload=/bin/kill -HUP $MAINPID\n", "KillSignal=SIGTERM\n"} {
		if !strings.Contains(text, want) {
			t.Errorf("unit lacks %q", strings.TrimSpace(want))
		}
	}
	var stop time.Duration
	for _, l := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(l, "TimeoutStopSec="); ok {
			if stop, err = time.ParseDuration(v); err != nil {
				t.Fatalf("TimeoutStopSec=%s: %v", v, err)
			}
		}
	}
	// config.example.yaml documents the defaults: shutdown_delay 0s, drain 30s.
	if stop < 30*time.Second+5*time.Second {
		t.Errorf("TimeoutStopSec=%v does not cover the default drain (30s) with a margin", stop)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "wsgate.yaml")
	if err := os.WriteFile(cfg, []byte("listeners:\n  - addr: 127.0.0.1:0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	text = strings.ReplaceAll(text, "/usr/local/bin/wsgate", bin)
	text = strings.ReplaceAll(text, "/etc/wsgate/wsgate.yaml", cfg)
	path := filepath.Join(dir, "wsgate.service")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
