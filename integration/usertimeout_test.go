//go:build linux

package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// netnsEnv marks a run of this test binary that runNetns started inside
// a network namespace of its own: there the test may bring up loopback
// and add firewall rules without touching the machine's.
const netnsEnv = "WSGATE_NETNS_TEST"

// netnsGuard bounds the whole inner run: building the binaries again
// (TestMain; a cache hit) and the test itself.
const netnsGuard = 3 * time.Minute

// runNetns runs the test t in a copy of this test binary inside a new
// network namespace (unshare -n) and reports whether the caller is that
// copy, which then does the work. The outer run streams the inner run's
// output to its log and passes, fails or skips as the inner run did. It
// skips when not root or when unshare, ip or nft are missing (nft is an
// outside peer: under WSGATE_REQUIRE_PEERS its absence fails).
func runNetns(t *testing.T) (inner bool) {
	t.Helper()
	needBinary(t)
	if os.Getenv(netnsEnv) != "" {
		// A fresh namespace has its loopback down: anywhere else, this
		// run would change the machine's network.
		lo, err := net.InterfaceByName("lo")
		if err != nil {
			t.Fatalf("%s is set but there is no lo: %v", netnsEnv, err)
		}
		if lo.Flags&net.FlagUp != 0 {
			t.Fatalf("%s is set but lo is up: not a fresh network namespace", netnsEnv)
		}
		netnsCmd(t, "ip", "link", "set", "lo", "up")
		return true
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: it runs in a network namespace and drops packets with nft")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		skipMissingPeer(t, fmt.Sprintf("nft not found (install nftables): %v", err))
	}
	for _, tool := range []string{"unshare", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found: %v", tool, err)
		}
	}
	if out, err := exec.Command("unshare", "-n", "--", "true").CombinedOutput(); err != nil {
		t.Skipf("unshare -n fails: %v %s", err, out)
	}

	ctx, cancel := context.WithTimeout(context.Background(), netnsGuard)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "-n", "--", os.Args[0],
		"-test.run", "^"+t.Name()+"$", "-test.v", "-test.count=1", "-test.timeout="+netnsGuard.String())
	cmd.Env = append(os.Environ(), netnsEnv+"=1")
	// On a hang, the inner run's wsgate goes too: it is in the same
	// process group, which would otherwise keep the namespace alive.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = ioTimeout
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	var out strings.Builder
	var wg sync.WaitGroup
	wg.Go(func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			t.Log(sc.Text())
			out.WriteString(sc.Text() + "\n")
		}
		_, _ = io.Copy(io.Discard, pr) // a line over 1 MiB: drain, never block the child
	})
	start := time.Now()
	err := cmd.Run()
	pw.Close()
	wg.Wait()
	t.Logf("inner run: %v in %.1fs", cmd.ProcessState, time.Since(start).Seconds())
	switch o := out.String(); {
	case ctx.Err() != nil:
		t.Fatalf("the inner run did not finish within %v", netnsGuard)
	case err == nil && strings.Contains(o, "--- PASS: "+t.Name()+" "):
	case err == nil && strings.Contains(o, "--- SKIP: "+t.Name()+" "):
		t.Skip("skipped in the network namespace (see above)")
	default:
		t.Fatalf("the inner run failed: %v", err)
	}
	return false
}

// netnsCmd runs a command that must succeed.
func netnsCmd(t *testing.T, name string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v %s", name, strings.Join(args, " "), err, out)
	}
}

// dropTo makes the kernel drop every TCP packet to the given local ports
// (loopback traffic crosses the input hook) until the returned function
// is called. It must run in a namespace of the test's own (runNetns).
func dropTo(t *testing.T, ports ...int) (lift func()) {
	t.Helper()
	const table = "wsgate_test"
	out, err := exec.Command("nft", "add", "table", "inet", table).CombinedOutput()
	if err != nil {
		skipMissingPeer(t, fmt.Sprintf("nft cannot add a table (a kernel without nf_tables?): %v %s", err, out))
	}
	t.Cleanup(func() { _ = exec.Command("nft", "delete", "table", "inet", table).Run() })
	netnsCmd(t, "nft", "add", "chain", "inet", table, "in", "{ type filter hook input priority 0; }")
	set := make([]string, len(ports))
	for i, p := range ports {
		set[i] = strconv.Itoa(p)
	}
	netnsCmd(t, "nft", "add", "rule", "inet", table, "in", "tcp", "dport", "{ "+strings.Join(set, ", ")+" }", "drop")
	return func() { netnsCmd(t, "nft", "delete", "table", "inet", table) }
}

// TestTCPUserTimeout: a client that vanishes without a FIN while wsgate
// has data in flight toward it is cut once that data has gone
// unacknowledged for the route's tcp_user_timeout, and the backend gets
// 1001 "client went away"; no ping, idle or write timeout could end the
// session sooner. The packets are really dropped (nft, in a network
// namespace of the test's own). A control session on a route with a long
// tcp_user_timeout, cut off the same way, is still there when the first
// one is cut, and gets its messages once the packets flow again.
func TestTCPUserTimeout(t *testing.T) {
	if !runNetns(t) {
		return
	}
	backends := make(chan *websocket.Conn, 1)
	b := newWSBackend()
	b.onMessage = func(path string, c *websocket.Conn, mt int, p []byte) bool {
		if err := c.WriteMessage(mt, p); err != nil {
			return false
		}
		if string(p) == "hello" {
			backends <- c // from now on the test writes, this handler only reads
		}
		return true
	}
	backend := b.start(t)
	const userTimeout = 2 * time.Second
	g := startGateway(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
timeouts: {write: 10m}
upstreams:
  app: {targets: ["http://%s"]}
routes:
  - name: bounded
    match: {path_prefix: /bounded}
    upstream: app
    websocket: {tcp_user_timeout: %v, idle_timeout: 1h}
  - name: control
    match: {path_prefix: /control}
    upstream: app
    websocket: {tcp_user_timeout: 10m, idle_timeout: 1h}
`, backend, userTimeout))

	open := func(path string) (*rawConn, *websocket.Conn) {
		t.Helper()
		c := dialRaw(t, g.Addr)
		c.wsHandshake(g.Addr, path)
		c.write(string(maskedText("hello")))
		if f := c.readFrame(); f.opcode != 0x1 || string(f.payload) != "hello" {
			t.Fatalf("%s: echo = opcode %d %q, want text \"hello\"", path, f.opcode, f.payload)
		}
		select {
		case bc := <-backends:
			return c, bc
		case <-time.After(ioTimeout):
			t.Fatalf("%s: the backend did not hand over its connection", path)
			return nil, nil
		}
	}
	bounded, boundedBackend := open("/bounded")
	control, controlBackend := open("/control")

	lift := dropTo(t, bounded.c.LocalAddr().(*net.TCPAddr).Port, control.c.LocalAddr().(*net.TCPAddr).Port)
	// The backends push a few small messages: they fit wsgate's socket
	// buffers (no write blocks, so the write timeout plays no part) and
	// stay unacknowledged, retransmitted to clients that never get them.
	const pushes, size = 8, 1000
	push := func(c *websocket.Conn) {
		t.Helper()
		_ = c.SetWriteDeadline(time.Now().Add(ioTimeout))
		for i := range pushes {
			if err := c.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf("%04d%s", i, strings.Repeat("x", size-4)))); err != nil {
				t.Fatalf("backend push %d: %v", i, err)
			}
		}
	}
	pushed := time.Now()
	push(boundedBackend)
	push(controlBackend)

	// No timing upper bound (shared machines): the guard only stops a
	// hang; the measured time is logged against the setting.
	const guard = 60 * time.Second
	ce := b.waitClose(t, "/bounded", guard)
	cut := time.Since(pushed)
	t.Logf("bounded session cut %.2fs after its data went unacknowledged (tcp_user_timeout %v; without it Linux retransmits for ~15 min)",
		cut.Seconds(), userTimeout)
	if ce.Code != websocket.CloseGoingAway || ce.Text != "client went away" {
		t.Errorf("backend got close %d %q, want 1001 \"client went away\"", ce.Code, ce.Text)
	}
	e := g.waitLog(ioTimeout, "websocket closed on route bounded", func(e map[string]any) bool {
		return e["msg"] == "websocket closed" && e["route"] == "bounded"
	})
	t.Logf("wsgate: %v", e)
	if e["closed_by"] != "client" {
		t.Errorf("closed_by = %v, want client (the kernel cut its connection, not one of wsgate's timeouts)", e["closed_by"])
	}

	// The control session, cut off just as long, is still there.
	if n := g.countLogs("websocket closed"); n != 1 {
		t.Errorf("%d sessions closed, want only the bounded one", n)
	}
	lift()
	for i := range pushes {
		f := control.readFrame() // the retransmissions now get through
		if want := fmt.Sprintf("%04d", i); f.opcode != 0x1 || len(f.payload) != size || string(f.payload[:4]) != want {
			t.Fatalf("control message %d: opcode %d, %d bytes %.8q; want text, %d bytes %q...", i, f.opcode, len(f.payload), f.payload, size, want)
		}
	}
	control.write(string(maskedText("still here")))
	if f := control.readFrame(); string(f.payload) != "still here" {
		t.Fatalf("control echo = %q, want \"still here\"", f.payload)
	}
	t.Logf("control session (tcp_user_timeout 10m) alive and caught up %.2fs after the drop began", time.Since(pushed).Seconds())
}

// maskedText returns a masked client text frame carrying s (under 126
// bytes).
func maskedText(s string) []byte {
	key := [4]byte{0x37, 0xfa, 0x21, 0x3d}
	f := []byte{0x81, 0x80 | byte(len(s)), key[0], key[1], key[2], key[3]}
	for i := range len(s) {
		f = append(f, s[i]^key[i&3])
	}
	return f
}
