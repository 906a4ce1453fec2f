//go:build unix

package integration

import (
	"bufio"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/wsgate/wsgate/internal/testnet"
)

// closeSessions is how many idle sessions TestClosesFlatMemory closes at
// once; closeBudget what each may add to the proxy's peak RSS meanwhile.
const (
	closeSessions = 5000
	closeBudget   = 2 << 10
)

// heldBackend is a raw WebSocket backend that holds every session it
// accepts: it answers a close frame with its own and hangs up, and can
// close (or cut) all of them at once.
type heldBackend struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn // guarded by mu
	wg    sync.WaitGroup
}

func startHeldBackend(t *testing.T) *heldBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &heldBackend{ln: ln}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				b.serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		b.cut()
		b.wg.Wait()
	})
	return b
}

func (b *heldBackend) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReaderSize(c, 1024)
	_ = c.SetReadDeadline(time.Now().Add(ioTimeout))
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	h := sha1.Sum([]byte(req.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	_, err = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Accept: "+base64.StdEncoding.EncodeToString(h[:])+"\r\n\r\n")
	if err != nil {
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	b.mu.Lock()
	b.conns = append(b.conns, c)
	b.mu.Unlock()
	// Frames from wsgate are masked; wait for its close and answer it.
	for {
		op, p, err := readAnyFrame(br)
		if err != nil {
			return
		}
		switch op {
		case 0x8:
			_, _ = c.Write([]byte{0x88, 0x02, 0x03, 0xe8}) // 1000
			return
		case 0x9: // wsgate's keepalive ping: the pong carries its payload
			_, _ = c.Write(append([]byte{0x8A, byte(len(p))}, p...))
		}
	}
}

// closeAll sends every session a close frame (1000) from the backend.
func (b *heldBackend) closeAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.conns {
		_, _ = c.Write([]byte{0x88, 0x02, 0x03, 0xe8})
	}
}

// cut closes every session's TCP connection with no close frame: a killed
// backend.
func (b *heldBackend) cut() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = c.Close()
	}
	b.conns = nil
}

// readAnyFrame reads one frame (masked or not, at most 64 KiB) and returns
// its opcode and unmasked payload.
func readAnyFrame(br *bufio.Reader) (byte, []byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return 0, nil, err
	}
	n := int(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(br, b[:]); err != nil {
			return 0, nil, err
		}
		n = int(binary.BigEndian.Uint16(b[:]))
	case 127:
		return 0, nil, fmt.Errorf("64-bit length")
	}
	var key [4]byte
	if h[1]&0x80 != 0 {
		if _, err := io.ReadFull(br, key[:]); err != nil {
			return 0, nil, err
		}
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(br, p); err != nil {
		return 0, nil, err
	}
	for i := range p {
		p[i] ^= key[i&3]
	}
	return h[0] & 0x0f, p, nil
}

// heldClient is one client session: it answers wsgate's close with its
// own and hangs up, and tells done.
func heldClient(addr string, done *sync.WaitGroup, closed *atomic.Int64) error {
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		return err
	}
	br := bufio.NewReaderSize(c, 1024)
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"); err != nil {
		c.Close()
		return err
	}
	resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		c.Close()
		return fmt.Errorf("handshake: %v %v", err, resp)
	}
	_ = c.SetDeadline(time.Time{})
	done.Add(1)
	go func() {
		defer done.Done()
		defer c.Close()
		for {
			op, p, err := readAnyFrame(br)
			if err != nil {
				return
			}
			switch op {
			case 0x8:
				closed.Add(1)
				// A masked close 1000 (key 0: the payload is as is).
				_, _ = c.Write([]byte{0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8})
				return
			case 0x9: // a ping: a masked pong (key 0) with its payload
				_, _ = c.Write(append([]byte{0x8A, 0x80 | byte(len(p)), 0, 0, 0, 0}, p...))
			}
		}
	}()
	return nil
}

// procStatus reads one kB field of /proc/pid/status, in bytes.
func procStatus(t *testing.T, pid int, field string) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("parse %q: %v", line, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// gaugeValue scrapes one unlabelled (or summed) metric from the admin
// listener.
func gaugeValue(t *testing.T, adminAddr, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	sum := 0.0
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, name+" ") || strings.HasPrefix(line, name+"{") {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err != nil {
				t.Fatalf("parse %q: %v", line, err)
			}
			sum += v
		}
	}
	return sum
}

// TestClosesFlatMemory: closing 5,000 idle sessions at once adds at most
// 2 KiB per session to the proxy's peak RSS over its steady state: when
// wsgate closes them (a reload that removes their route, on_change:
// close), when the backend closes them, and when the backend dies.
func TestClosesFlatMemory(t *testing.T) {
	needBinary(t)
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < 2*closeSessions+1000 {
		t.Skipf("needs %d file descriptors, have %d", 2*closeSessions+1000, lim.Cur)
	}
	for _, how := range []string{"wsgate", "backend", "backend-killed"} {
		t.Run(how, func(t *testing.T) {
			b := startHeldBackend(t)
			cfg := func(route bool) string {
				r := `
  - name: ws
    match: {path: /ws}
    upstream: app
    websocket: {on_change: close}`
				if !route {
					r = `
  - name: other
    match: {path: /other}
    respond: {status: 204}`
				}
				return fmt.Sprintf(`
listeners:
  - addr: 127.0.0.1:0
upstreams:
  app:
    targets: [http://%s]
routes:%s
timeouts: {drain: 5s}
admin: {addr: 127.0.0.1:0}
`, b.ln.Addr(), r)
			}
			path := filepath.Join(t.TempDir(), "wsgate.yaml")
			if err := os.WriteFile(path, []byte(cfg(true)), 0o600); err != nil {
				t.Fatal(err)
			}
			g := startGatewayBin(t, wsgatePlainBin, path, nil)
			pid := g.cmd.Process.Pid

			var done sync.WaitGroup
			var closed atomic.Int64
			openHeld(t, g.Addr, closeSessions, &done, &closed)
			// Steady state: every leg waits in the poller.
			testnet.WaitFor(t, "all legs to park", time.Minute, func() bool {
				return gaugeValue(t, g.AdminAddr, "wsgate_websocket_parked_legs") >= 2*closeSessions
			})
			if how == "wsgate" {
				// One reload that changes nothing first: what a reload
				// itself costs (a new snapshot, upstream sets, the
				// decisions) is then in the steady state, not counted
				// against the sessions the next one closes.
				g.signal(syscall.SIGHUP)
				g.waitLog(time.Minute, "a reload that changes nothing", func(e map[string]any) bool {
					return e["msg"] == "config reloaded"
				})
			}
			steady := procStatus(t, pid, "VmRSS")
			// Reset the peak (VmHWM) to the current RSS.
			if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
				t.Skipf("cannot reset the peak RSS: %v", err)
			}
			start := time.Now()
			switch how {
			case "wsgate":
				if err := os.WriteFile(path, []byte(cfg(false)), 0o600); err != nil {
					t.Fatal(err)
				}
				g.signal(syscall.SIGHUP)
			case "backend":
				b.closeAll()
			case "backend-killed":
				b.cut()
			}
			testnet.WaitFor(t, "every session to end", 2*time.Minute, func() bool {
				return gaugeValue(t, g.AdminAddr, "wsgate_websocket_sessions") == 0
			})
			took := time.Since(start)
			done.Wait()
			peak := procStatus(t, pid, "VmHWM")
			per := float64(peak-steady) / closeSessions
			t.Logf("%d sessions closed by %s in %v: RSS %.1f MiB steady, peak %.1f MiB: %+.0f B per session (budget %d); %d clients got a close frame",
				closeSessions, how, took.Round(time.Millisecond), float64(steady)/(1<<20), float64(peak)/(1<<20), per, closeBudget, closed.Load())
			if per > closeBudget {
				t.Errorf("closing added %.0f B per session to the peak RSS, want at most %d", per, closeBudget)
			}
			if closed.Load() != closeSessions {
				t.Errorf("%d of %d clients got a close frame", closed.Load(), closeSessions)
			}
		})
	}
}

// openHeld opens n held sessions to addr, 64 at a time.
func openHeld(t *testing.T, addr string, n int, done *sync.WaitGroup, closed *atomic.Int64) {
	t.Helper()
	var opened atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 64 {
				if err := heldClient(addr, done, closed); err != nil {
					errs <- err
					return
				}
				opened.Add(1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("opening sessions: %v (%d opened)", err, opened.Load())
	}
}

// TestIdlePingsFlatMemory: keepalive pings on 5,000 idle sessions (both
// legs, every second here) cost no memory per session: the poller's sweep
// writes them and the poller consumes the pongs, with no goroutine and no
// buffer per session. The peak RSS over several rounds of pings stays
// within 1 KiB per session of the steady state (a goroutine per pinged
// leg would be 8 KiB and more, a read buffer 32 KiB; what is left is the
// heap the test's own scrapes of /metrics churn), and every leg is back
// in the poller.
func TestIdlePingsFlatMemory(t *testing.T) {
	needBinary(t)
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < 2*closeSessions+1000 {
		t.Skipf("needs %d file descriptors, have %d", 2*closeSessions+1000, lim.Cur)
	}
	b := startHeldBackend(t)
	path := filepath.Join(t.TempDir(), "wsgate.yaml")
	cfg := fmt.Sprintf(`
listeners:
  - addr: 127.0.0.1:0
upstreams:
  app:
    targets: [http://%s]
routes:
  - name: ws
    match: {path: /ws}
    upstream: app
    websocket: {ping: {interval: 1s, timeout: 10s}}
timeouts: {drain: 5s}
admin: {addr: 127.0.0.1:0}
`, b.ln.Addr())
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	g := startGatewayBin(t, wsgatePlainBin, path, nil) // memory figures need the build without -race
	var done sync.WaitGroup
	var closed atomic.Int64
	openHeld(t, g.Addr, closeSessions, &done, &closed)
	testnet.WaitFor(t, "all legs to park", time.Minute, func() bool {
		return gaugeValue(t, g.AdminAddr, "wsgate_websocket_parked_legs") >= 2*closeSessions
	})
	pid := g.cmd.Process.Pid
	steady := procStatus(t, pid, "VmRSS")
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		t.Skipf("cannot reset the peak RSS: %v", err)
	}
	start := gaugeValue(t, g.AdminAddr, "wsgate_websocket_pings_total")
	const rounds = 4
	testnet.WaitFor(t, "four rounds of pings", 2*time.Minute, func() bool {
		return gaugeValue(t, g.AdminAddr, "wsgate_websocket_pings_total")-start >= rounds*2*closeSessions
	})
	peak := procStatus(t, pid, "VmHWM")
	testnet.WaitFor(t, "every leg back in the poller", time.Minute, func() bool {
		return gaugeValue(t, g.AdminAddr, "wsgate_websocket_parked_legs") >= 2*closeSessions
	})
	parked := gaugeValue(t, g.AdminAddr, "wsgate_websocket_parked_legs")
	timeouts := gaugeValue(t, g.AdminAddr, "wsgate_websocket_ping_timeouts_total")
	per := float64(peak-steady) / closeSessions
	t.Logf("%d idle sessions, %d rounds of pings on both legs: RSS %.1f MiB steady, peak %.1f MiB: %+.0f B per session; %v legs parked, %v ping timeouts",
		closeSessions, rounds, float64(steady)/(1<<20), float64(peak)/(1<<20), per, parked, timeouts)
	if per > 1024 {
		t.Errorf("pings added %.0f B per session to the peak RSS, want at most 1024", per)
	}
	if timeouts != 0 {
		t.Errorf("%v ping timeouts: every peer answers", timeouts)
	}
}
