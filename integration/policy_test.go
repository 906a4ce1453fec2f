package integration

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// The per-route WebSocket policy (websocket.ping, max_messages_per_second,
// burst, rate_limit_action, validate_utf8) and routes[].limits through the
// real binary, with peers nobody here wrote: Python websockets as the
// client (it answers pings itself), Node's ws as a backend (package.json
// in integration/node pins it; CI runs npm ci --prefix integration/node),
// gorilla's fasthttp/websocket as an echo backend; raw sockets where a
// peer must misbehave.

// polGuard bounds a wait for something that must happen; no test expects
// to get near it.
const polGuard = 60 * time.Second

// nodeDir holds the Node peers and their package.json.
const nodeDir = "node"

// needNodeWS skips the test unless node can load ws from
// integration/node/node_modules.
func needNodeWS(t *testing.T) string {
	t.Helper()
	needBinary(t)
	node, err := exec.LookPath("node")
	if err != nil {
		skipMissingPeer(t, "node is not installed (the tests run integration/node/ws_server.js)")
	}
	if _, err := os.Stat(filepath.Join(nodeDir, "node_modules", "ws", "package.json")); err != nil {
		skipMissingPeer(t, fmt.Sprintf("integration/node/node_modules has no ws (run npm ci --prefix integration/node): %v", err))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "-e", `process.stdout.write(process.version + " ws " + require("ws/package.json").version)`)
	cmd.Dir = nodeDir
	out, err := cmd.CombinedOutput()
	if err != nil {
		skipMissingPeer(t, fmt.Sprintf("node cannot load ws from integration/node (run npm ci --prefix integration/node): %v %s", err, out))
	}
	t.Logf("node %s", out)
	return node
}

// nodeEvent is one line ws_server.js prints (see its comment).
type nodeEvent struct {
	Conn   int       `json:"conn"`
	Event  string    `json:"event"`
	Path   string    `json:"path"`
	Data   string    `json:"data"` // ping and pong payloads, in hex
	Text   *string   `json:"text"`
	Code   int       `json:"code"`
	Reason string    `json:"reason"`
	Error  string    `json:"error"`
	at     time.Time // when the test read the line
	line   string    // the line as printed
}

// nodeServer is a running ws_server.js: a ws WebSocketServer that echoes
// and reports each ping, pong, message and close it sees.
type nodeServer struct {
	Addr string

	mu      sync.Mutex
	events  []nodeEvent   // guarded by mu
	changed chan struct{} // guarded by mu: closed on every new event
}

// startNodeWSServer starts integration/node/ws_server.js and returns it
// once it listens. The process is killed when the test ends.
func startNodeWSServer(t *testing.T) *nodeServer {
	t.Helper()
	node := needNodeWS(t)
	cmd := exec.Command(node, "ws_server.js")
	cmd.Dir = nodeDir
	stdin, err := cmd.StdinPipe() // ws_server.js exits when it closes
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &nodeServer{changed: make(chan struct{})}
	portc := make(chan string, 1)
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var port struct {
				Port int `json:"port"`
			}
			if json.Unmarshal(sc.Bytes(), &port) == nil && port.Port != 0 {
				portc <- strconv.Itoa(port.Port)
				continue
			}
			e := nodeEvent{at: time.Now(), line: sc.Text()}
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				e.Event = "unparsed"
			}
			s.mu.Lock()
			s.events = append(s.events, e)
			close(s.changed)
			s.changed = make(chan struct{})
			s.mu.Unlock()
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	t.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Process.Kill()
		<-copied
		_ = cmd.Wait()
		if t.Failed() {
			s.mu.Lock()
			var lines []string
			for _, e := range s.events {
				lines = append(lines, e.at.Format("15:04:05.000")+" "+e.line)
			}
			s.mu.Unlock()
			t.Logf("ws_server.js events:\n%s\nstderr:\n%s", strings.Join(lines, "\n"), stderr.String())
		}
	})
	select {
	case p := <-portc:
		s.Addr = "127.0.0.1:" + p
		return s
	case <-copied:
		t.Fatalf("ws_server.js exited before listening; stderr:\n%s", stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("ws_server.js did not listen within 30s; stderr:\n%s", stderr.String())
	}
	return nil
}

// wait returns the first event that satisfies match, waiting up to
// timeout for it.
func (s *nodeServer) wait(t *testing.T, timeout time.Duration, what string, match func(nodeEvent) bool) nodeEvent {
	t.Helper()
	deadline := time.After(timeout)
	for {
		s.mu.Lock()
		for _, e := range s.events {
			if match(e) {
				s.mu.Unlock()
				return e
			}
		}
		changed := s.changed
		s.mu.Unlock()
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("ws_server.js: no %s within %v", what, timeout)
			return nodeEvent{}
		}
	}
}

// conn returns the number of the connection opened on path.
func (s *nodeServer) conn(t *testing.T, path string) int {
	t.Helper()
	return s.wait(t, polGuard, "connection on "+path, func(e nodeEvent) bool {
		return e.Event == "open" && e.Path == path
	}).Conn
}

// list returns the events of connection conn of the given kind, in order.
func (s *nodeServer) list(conn int, event string) []nodeEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []nodeEvent
	for _, e := range s.events {
		if e.Conn == conn && e.Event == event {
			out = append(out, e)
		}
	}
	return out
}

// pyPrelude starts every Python script here: Counting is a client
// protocol that records the payload (hex) of each ping and pong frame it
// receives (the library answers pings itself), and closed describes a
// ConnectionClosed.
const pyPrelude = `
import asyncio, json, sys, time
import websockets
from websockets.frames import Opcode
from websockets.legacy.client import WebSocketClientProtocol

class Counting(WebSocketClientProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pings_rcvd = []
        self.pongs_rcvd = []

    async def read_frame(self, max_size):
        frame = await super().read_frame(max_size)
        if frame.opcode == Opcode.PING:
            self.pings_rcvd.append(frame.data.hex())
        elif frame.opcode == Opcode.PONG:
            self.pongs_rcvd.append(frame.data.hex())
        return frame

def closed(e):
    if e.rcvd is None:
        return {"code": 1006, "reason": ""}
    return {"code": e.rcvd.code, "reason": e.rcvd.reason}

async def connect(url):
    # ping_interval=None: no keepalive pings of the library's own, so
    # only wsgate's pings (which the library answers) keep a quiet
    # session alive.
    return await websockets.connect(url, create_protocol=Counting, ping_interval=None,
                                    open_timeout=20, close_timeout=20)
`

// polPythonStart starts pyPrelude+script with args and returns a function
// that waits for it and returns what it printed; a failed script fails
// the test.
func polPythonStart(t *testing.T, script string, args ...string) (wait func() []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*polGuard)
	cmd := exec.CommandContext(ctx, python, append([]string{"-c", pyPrelude + script}, args...)...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	var err error // set before exited is closed
	exited := make(chan struct{})
	go func() {
		err = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cancel()
		<-exited
	})
	return func() []byte {
		t.Helper()
		<-exited
		if err != nil {
			t.Fatalf("python client: %v\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
		}
		return []byte(stdout.String())
	}
}

// polPython runs pyPrelude+script with args and decodes what it printed
// into v.
func polPython(t *testing.T, v any, script string, args ...string) {
	t.Helper()
	out := polPythonStart(t, script, args...)()
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("python client printed %q: %v", out, err)
	}
}

// polFrame returns one WebSocket frame carrying payload, masked as a
// client sends it or not as a server does.
func polFrame(fin bool, opcode byte, payload string, masked bool) []byte {
	b0 := opcode
	if fin {
		b0 |= 0x80
	}
	var m byte
	if masked {
		m = 0x80
	}
	f := []byte{b0}
	switch n := len(payload); {
	case n < 126:
		f = append(f, m|byte(n))
	case n < 1<<16:
		f = append(f, m|126, byte(n>>8), byte(n))
	default:
		panic("polFrame: payload over 64 KiB")
	}
	if !masked {
		return append(f, payload...)
	}
	var key [4]byte
	_, _ = rand.Read(key[:])
	f = append(f, key[:]...)
	for i := range len(payload) {
		f = append(f, payload[i]^key[i&3])
	}
	return f
}

// polFrames concatenates frames into one write.
func polFrames(fs ...[]byte) string {
	var b []byte
	for _, f := range fs {
		b = append(b, f...)
	}
	return string(b)
}

// polWireFrame is a frame as a raw backend reads it: masked or not,
// unmasked here.
type polWireFrame struct {
	fin     bool
	opcode  byte
	masked  bool
	payload []byte
}

// polReadWireFrame reads one frame of up to 1 MiB from br.
func polReadWireFrame(br *bufio.Reader) (polWireFrame, error) {
	var h [2]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return polWireFrame{}, err
	}
	f := polWireFrame{fin: h[0]&0x80 != 0, opcode: h[0] & 0x0f, masked: h[1]&0x80 != 0}
	n := uint64(h[1] & 0x7f)
	if n >= 126 {
		b := make([]byte, 2) // 126: a 16-bit length follows
		if n == 127 {
			b = make([]byte, 8) // a 64-bit one
		}
		if _, err := io.ReadFull(br, b); err != nil {
			return polWireFrame{}, err
		}
		n = 0
		for _, c := range b {
			n = n<<8 | uint64(c)
		}
	}
	if n > 1<<20 {
		return polWireFrame{}, fmt.Errorf("frame of %d bytes", n)
	}
	var key [4]byte
	if f.masked {
		if _, err := io.ReadFull(br, key[:]); err != nil {
			return polWireFrame{}, err
		}
	}
	f.payload = make([]byte, n)
	if _, err := io.ReadFull(br, f.payload); err != nil {
		return polWireFrame{}, err
	}
	if f.masked {
		for i := range f.payload {
			f.payload[i] ^= key[i&3]
		}
	}
	return f, nil
}

// closeCode returns the code and reason of a close frame.
func (f polWireFrame) closeCode() (int, string) {
	return frame{opcode: f.opcode, payload: f.payload}.closeCode()
}

// polRawWSBackend accepts WebSocket handshakes on 127.0.0.1:0, answers
// each with a valid 101 and then hands the connection to serve.
func polRawWSBackend(t *testing.T, serve func(c net.Conn, br *bufio.Reader)) string {
	t.Helper()
	return startRawBackend(t, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(2 * polGuard))
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if _, err := io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Accept: "+wsAccept(req.Header.Get("Sec-WebSocket-Key"))+"\r\n\r\n"); err != nil {
			return
		}
		serve(c, br)
	})
}

// polReceived records the messages a gorilla echo backend received, by
// request path.
type polReceived struct {
	mu   sync.Mutex
	msgs map[string][]string // guarded by mu
}

// polEchoRecorder returns a started wsBackend that records every message
// before it echoes it.
func polEchoRecorder(t *testing.T) (*wsBackend, *polReceived, string) {
	t.Helper()
	rec := &polReceived{msgs: map[string][]string{}}
	b := newWSBackend()
	b.onMessage = func(path string, c *websocket.Conn, mt int, p []byte) bool {
		rec.mu.Lock()
		rec.msgs[path] = append(rec.msgs[path], string(p))
		rec.mu.Unlock()
		return c.WriteMessage(mt, p) == nil
	}
	return b, rec, b.start(t)
}

func (r *polReceived) get(path string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.msgs[path])
}

// polAdmin is the admin block of every config here (metrics are checked
// at the end of each test).
var polAdmin = fmt.Sprintf("admin: {addr: 127.0.0.1:0, token: \"${%s}\"}\n", admTokenEnv)

// pyQuiet connects to each URL of argv[1] (a JSON list) at once, receives
// nothing for argv[2] seconds without sending anything, then sends a
// message and reads its echo, sends a ping of its own and waits for the
// pong, asks the backend for a ping ("ping-me") and reads that echo, and
// closes. It prints a JSON list of results in URL order.
const pyQuiet = `
async def session(url, quiet):
    res = {"url": url}
    ws = await connect(url)
    start = time.monotonic()
    try:
        try:
            msg = await asyncio.wait_for(ws.recv(), quiet)
            res["error"] = "unexpected message %r" % msg
            return res
        except asyncio.TimeoutError:
            pass  # quiet for the whole time, and still open
        res["quiet_s"] = time.monotonic() - start
        res["pings_while_quiet"] = len(ws.pings_rcvd)
        await ws.send("after the quiet")
        res["echo"] = await asyncio.wait_for(ws.recv(), 20)
        pong = await ws.ping(b"client-own")
        await asyncio.wait_for(pong, 20)
        res["own_ping_answered"] = True
        await ws.send("ping-me")
        res["echo2"] = await asyncio.wait_for(ws.recv(), 20)
        await ws.close()
    except websockets.ConnectionClosed as e:
        res["closed_early"] = closed(e)
        res["closed_after_s"] = time.monotonic() - start
    finally:
        await ws.close()
        res["close_code"] = ws.close_code
        res["close_reason"] = ws.close_reason
        res["pings"] = ws.pings_rcvd
        res["pongs"] = ws.pongs_rcvd
    return res

async def main(urls, quiet):
    print(json.dumps(await asyncio.gather(*(session(u, quiet) for u in urls))), flush=True)

asyncio.run(main(json.loads(sys.argv[1]), float(sys.argv[2])))
`

type pyClose struct {
	Code   int    `json:"code"`
	Reason string `json:"reason"`
}

type pyQuietResult struct {
	URL             string   `json:"url"`
	Error           string   `json:"error"`
	ClosedEarly     *pyClose `json:"closed_early"`
	ClosedAfter     float64  `json:"closed_after_s"`
	Quiet           float64  `json:"quiet_s"`
	PingsWhileQuiet int      `json:"pings_while_quiet"`
	Echo            string   `json:"echo"`
	OwnPingAnswered bool     `json:"own_ping_answered"`
	Echo2           string   `json:"echo2"`
	CloseCode       int      `json:"close_code"`
	CloseReason     string   `json:"close_reason"`
	Pings           []string `json:"pings"`
	Pongs           []string `json:"pongs"`
}

var (
	hexClientOwn  = hex.EncodeToString([]byte("client-own"))
	hexBackendOwn = hex.EncodeToString([]byte("backend-own"))
)

// polWsgatePings counts the pings (hex payloads) that are not own, checks
// that they all carry one 8-byte token (wsgate's, random per process),
// and returns it.
func polWsgatePings(t *testing.T, who string, pings []string, own string) (token string, n int) {
	t.Helper()
	for _, p := range pings {
		if p == own {
			continue
		}
		if len(p) != 16 || token != "" && p != token {
			t.Errorf("%s: ping payloads %q: want wsgate's one 8-byte token besides %q", who, pings, own)
			return token, n
		}
		token = p
		n++
	}
	return token, n
}

// TestPolicyPingKeepsQuietSessionOpen: a Python websockets client that
// never sends data, only answers wsgate's pings, stays open three times
// the route's idle_timeout (2s; and 1.5 times a 4s one whose legs wait
// in the poller and are pinged by its sweep), while the same client on a
// route without pings is closed 1001 "idle timeout". The Node ws backend
// sees wsgate's pings too and answers them; neither peer ever sees a
// pong to wsgate's ping (wsgate consumes them); the peers' own pings and
// pongs pass both ways; then an echo still works. The ping counters on
// /metrics equal the pings each peer saw.
func TestPolicyPingKeepsQuietSessionOpen(t *testing.T) {
	needPythonWebsockets(t)
	node := startNodeWSServer(t)
	g, _, a := admStart(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  node: {targets: ["http://%s"]}
routes:
  - name: keep
    match: {path_prefix: /keep}
    upstream: node
    websocket:
      idle_timeout: 2s
      ping: {interval: 500ms, timeout: 2s}
  - name: parked
    match: {path_prefix: /parked}
    upstream: node
    websocket:
      idle_timeout: 4s
      ping: {interval: 500ms, timeout: 2s}
  - name: noping
    match: {path_prefix: /noping}
    upstream: node
    websocket:
      idle_timeout: 2s
`, node.Addr)+polAdmin)
	const quiet = 6 * time.Second
	routes := []struct{ name, path string }{{"keep", "/keep/q"}, {"parked", "/parked/q"}, {"noping", "/noping/q"}}
	var urls []string
	for _, r := range routes {
		urls = append(urls, "ws://"+g.Addr+r.path)
	}
	arg, _ := json.Marshal(urls)
	wait := polPythonStart(t, pyQuiet, string(arg), strconv.FormatFloat(quiet.Seconds(), 'f', -1, 64))

	conns := map[string]int{}
	for _, r := range routes {
		conns[r.name] = node.conn(t, r.path)
	}
	// While the client is quiet, the legs of the 4s route wait in the
	// poller without a goroutine (a 2s idle_timeout is too short to park).
	admPoll(t, "the quiet session's legs parked", func() string {
		if v, _ := metScrape(t, a).value("wsgate_websocket_parked_legs", nil); v < 1 {
			return fmt.Sprintf("wsgate_websocket_parked_legs = %v, want at least 1", v)
		}
		return ""
	})

	var res []pyQuietResult
	out := wait()
	if err := json.Unmarshal(out, &res); err != nil || len(res) != len(routes) {
		t.Fatalf("python client printed %q: %v", out, err)
	}
	var token string
	clientPings := map[string]int{}
	for i, r := range routes[:2] {
		c := res[i]
		t.Logf("%s: quiet %.1fs with %d pings from wsgate, %d pings in all", r.name, c.Quiet, c.PingsWhileQuiet, len(c.Pings))
		if c.Error != "" || c.ClosedEarly != nil {
			t.Errorf("%s: %q, closed %+v after %.1fs; want open after %v of quiet", r.name, c.Error, c.ClosedEarly, c.ClosedAfter, quiet)
			continue
		}
		if c.PingsWhileQuiet < 1 {
			t.Errorf("%s: no ping while quiet for %v", r.name, quiet)
		}
		if c.Echo != "after the quiet" || !c.OwnPingAnswered || c.Echo2 != "ping-me" {
			t.Errorf("%s: echo %q, own ping answered %v, echo %q; want the echoes and the pong", r.name, c.Echo, c.OwnPingAnswered, c.Echo2)
		}
		if c.CloseCode != 1000 {
			t.Errorf("%s: close %d %q, want 1000 echoed by the backend", r.name, c.CloseCode, c.CloseReason)
		}
		tok, n := polWsgatePings(t, r.name+" client", c.Pings, hexBackendOwn)
		if token == "" {
			token = tok
		} else if tok != token {
			t.Errorf("%s: wsgate's ping payload %s, another session got %s; want one per process", r.name, tok, token)
		}
		clientPings[r.name] = n
		if !slices.Contains(c.Pings, hexBackendOwn) {
			t.Errorf("%s: the backend's own ping never reached the client: pings %q", r.name, c.Pings)
		}
		if !slices.Equal(c.Pongs, []string{hexClientOwn}) {
			t.Errorf("%s: client received pongs %q, want only the answer to its own ping (%s)", r.name, c.Pongs, hexClientOwn)
		}
	}
	if np := res[2]; np.ClosedEarly == nil || *np.ClosedEarly != (pyClose{1001, "idle timeout"}) || len(np.Pings) != 0 {
		t.Errorf("noping: closed %+v after %.1fs, %d pings; want 1001 \"idle timeout\" and no ping", np.ClosedEarly, np.ClosedAfter, len(np.Pings))
	}

	backendPings := map[string]int{}
	for _, r := range routes {
		conn := conns[r.name]
		cl := node.wait(t, polGuard, r.name+" close", func(e nodeEvent) bool { return e.Conn == conn && e.Event == "close" })
		var pings, pongs, msgs []string
		for _, e := range node.list(conn, "ping") {
			pings = append(pings, e.Data)
		}
		for _, e := range node.list(conn, "pong") {
			pongs = append(pongs, e.Data)
		}
		for _, e := range node.list(conn, "message") {
			if e.Text == nil {
				t.Errorf("%s backend: a binary message: %s", r.name, e.line)
				continue
			}
			msgs = append(msgs, *e.Text)
		}
		if r.name == "noping" {
			if cl.Code != 1001 || cl.Reason != "idle timeout" || len(pings) != 0 {
				t.Errorf("noping backend: close %d %q, pings %q; want 1001 \"idle timeout\" and no ping", cl.Code, cl.Reason, pings)
			}
			continue
		}
		if cl.Code != 1000 {
			t.Errorf("%s backend: close %d %q, want the client's 1000", r.name, cl.Code, cl.Reason)
		}
		tok, n := polWsgatePings(t, r.name+" backend", pings, hexClientOwn)
		if n == 0 || tok != token {
			t.Errorf("%s backend: %d pings from wsgate with payload %s; want some, with the client's %s", r.name, n, tok, token)
		}
		backendPings[r.name] = n
		if !slices.Contains(pings, hexClientOwn) {
			t.Errorf("%s backend: the client's own ping never arrived: pings %q", r.name, pings)
		}
		if !slices.Equal(pongs, []string{hexBackendOwn}) {
			t.Errorf("%s backend: pongs %q, want only the answer to its own ping (%s)", r.name, pongs, hexBackendOwn)
		}
		if !slices.Equal(msgs, []string{"after the quiet", "ping-me"}) {
			t.Errorf("%s backend: messages %q", r.name, msgs)
		}
		t.Logf("%s: the backend answered %d pings from wsgate", r.name, n)
	}

	var wants []metWant
	for _, r := range routes[:2] {
		wants = append(wants,
			metWant{"wsgate_websocket_pings_total", metLabels("route", r.name, "upstream", "node", "side", "client"), float64(clientPings[r.name])},
			metWant{"wsgate_websocket_pings_total", metLabels("route", r.name, "upstream", "node", "side", "backend"), float64(backendPings[r.name])},
			metWant{"wsgate_websocket_ping_timeouts_total", metLabels("route", r.name), 0},
			metWant{"wsgate_websocket_sessions_ended_total", metLabels("route", r.name, "code", "1000", "closed_by", "client"), 1},
		)
	}
	metWait(t, a, "the ping counters",
		append(wants,
			metWant{"wsgate_websocket_pings_total", metLabels("route", "noping"), 0},
			metWant{"wsgate_websocket_sessions_ended_total", metLabels("route", "noping", "code", "1001", "closed_by", "wsgate"), 1},
		)...)
}

// TestPolicyPingTimeoutSilentClient: a raw client that completes the
// handshake and then never answers (and sends no FIN) is cut after
// ping.timeout, measured from the ping it got: the Node ws backend gets
// 1001 "client ping timeout" and the client its connection closed with
// no close frame (there is no one to send one to). The test reads the
// client's socket to time the ping; wsgate cannot tell a reader that does
// not answer from a peer that is gone, the kernel acknowledging for both.
func TestPolicyPingTimeoutSilentClient(t *testing.T) {
	node := startNodeWSServer(t)
	const timeout = 2 * time.Second
	g, _, a := admStart(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  node: {targets: ["http://%s"]}
routes:
  - name: silent-client
    match: {path_prefix: /}
    upstream: node
    websocket:
      ping: {interval: 500ms, timeout: %s}
`, node.Addr, timeout)+polAdmin)
	rc := dialRaw(t, g.Addr)
	rc.wsHandshake(g.Addr, "/silent")
	// Read at once: the ping may come at the poller's first sweep.
	f := rc.readFrame()
	pinged := time.Now()
	if f.opcode != 0x9 || len(f.payload) != 8 || !f.fin {
		t.Fatalf("first frame to the client: opcode %#x, %d bytes; want wsgate's ping of 8 bytes", f.opcode, len(f.payload))
	}
	conn := node.conn(t, "/silent")
	cl := node.wait(t, polGuard, "close", func(e nodeEvent) bool { return e.Conn == conn && e.Event == "close" })
	took := cl.at.Sub(pinged)
	t.Logf("backend got %d %q %v after the client's ping (ping.timeout %v)", cl.Code, cl.Reason, took.Round(time.Millisecond), timeout)
	if cl.Code != 1001 || cl.Reason != "client ping timeout" {
		t.Errorf("backend: close %d %q, want 1001 \"client ping timeout\"", cl.Code, cl.Reason)
	}
	// wsgate counts the timeout from its write of the ping; this test
	// can only time its own read of it, which comes a scheduling delay
	// later (2 ms short was seen under -race): a lower bound with slack.
	if took < timeout-100*time.Millisecond {
		t.Errorf("the session ended %v after the ping, before ping.timeout %v", took, timeout)
	}
	rc.expectEOF() // no second ping, no close frame: the connection is cut

	g.waitLog(ioTimeout, "websocket ping timeout on the client side", func(e map[string]any) bool {
		return e["msg"] == "websocket ping timeout" && e["side"] == "client" && e["route"] == "silent-client"
	})
	tok, backendPings := polWsgatePings(t, "backend", polDataOf(node.list(conn, "ping")), "")
	if tok != hex.EncodeToString(f.payload) && backendPings > 0 {
		t.Errorf("backend pinged with %s, the client with %x: want wsgate's one token", tok, f.payload)
	}
	route := metRoute("silent-client", "node")
	metWait(t, a, "the ping timeout counted",
		metWant{"wsgate_websocket_pings_total", route("side", "client"), 1},
		metWant{"wsgate_websocket_pings_total", route("side", "backend"), float64(backendPings)},
		metWant{"wsgate_websocket_ping_timeouts_total", route("side", "client"), 1},
		metWant{"wsgate_websocket_ping_timeouts_total", route("side", "backend"), 0},
		metWant{"wsgate_websocket_sessions_ended_total", route("code", "1001", "closed_by", "wsgate"), 1},
	)
}

// polDataOf returns the payloads of events.
func polDataOf(events []nodeEvent) []string {
	var out []string
	for _, e := range events {
		out = append(out, e.Data)
	}
	return out
}

// pyWaitClose connects to argv[1], sends nothing and reads until the
// session ends (at most argv[2] seconds), and prints the close it got and
// the pings it answered.
const pyWaitClose = `
async def main(url, guard):
    ws = await connect(url)
    res = {}
    start = time.monotonic()
    try:
        msg = await asyncio.wait_for(ws.recv(), guard)
        res["error"] = "unexpected message %r" % msg
    except asyncio.TimeoutError:
        res["error"] = "still open after %ss" % guard
    except websockets.ConnectionClosed as e:
        res["close"] = closed(e)
        res["after_s"] = time.monotonic() - start
    await ws.close()
    res["pings"] = ws.pings_rcvd
    print(json.dumps(res), flush=True)

asyncio.run(main(sys.argv[1], float(sys.argv[2])))
`

type pyWaitCloseResult struct {
	Error string   `json:"error"`
	Close *pyClose `json:"close"`
	After float64  `json:"after_s"`
	Pings []string `json:"pings"`
}

// TestPolicyPingTimeoutSilentBackend: a raw backend that completes the
// handshake and then goes silent gets wsgate's ping (masked, 8 bytes),
// never answers, and is cut without a close frame; the Python websockets
// client, which answers wsgate's pings, gets 1011 "upstream unresponsive".
// The ping counters on /metrics equal the pings each peer saw.
func TestPolicyPingTimeoutSilentBackend(t *testing.T) {
	needPythonWebsockets(t)
	type seen struct {
		frames []polWireFrame
		end    error
	}
	got := make(chan seen, 1)
	backend := polRawWSBackend(t, func(c net.Conn, br *bufio.Reader) {
		var s seen
		for {
			f, err := polReadWireFrame(br)
			if err != nil {
				s.end = err
				got <- s
				return
			}
			s.frames = append(s.frames, f)
		}
	})
	g, _, a := admStart(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  silent: {targets: ["http://%s"]}
routes:
  - name: silent-backend
    match: {path_prefix: /}
    upstream: silent
    websocket:
      ping: {interval: 500ms, timeout: 2s}
`, backend)+polAdmin)
	var res pyWaitCloseResult
	polPython(t, &res, pyWaitClose, "ws://"+g.Addr+"/silent", strconv.Itoa(int(polGuard.Seconds())))
	if res.Error != "" || res.Close == nil || *res.Close != (pyClose{1011, "upstream unresponsive"}) {
		t.Fatalf("client: %q, close %+v; want 1011 \"upstream unresponsive\"", res.Error, res.Close)
	}
	t.Logf("client got 1011 after %.1fs, having answered %d pings", res.After, len(res.Pings))

	var s seen
	select {
	case s = <-got:
	case <-time.After(polGuard):
		t.Fatal("the silent backend's connection was not cut")
	}
	if len(s.frames) != 1 || s.frames[0].opcode != 0x9 || !s.frames[0].masked || len(s.frames[0].payload) != 8 {
		t.Errorf("silent backend received %+v, want wsgate's masked 8-byte ping alone (no close frame)", s.frames)
	}
	if !errors.Is(s.end, io.EOF) && !errors.Is(s.end, net.ErrClosed) && !polIsReset(s.end) {
		t.Errorf("silent backend: read ended with %v, want the connection closed by wsgate", s.end)
	}
	token, clientPings := polWsgatePings(t, "client", res.Pings, "")
	if len(s.frames) > 0 && clientPings > 0 && token != hex.EncodeToString(s.frames[0].payload) {
		t.Errorf("client pinged with %s, backend with %x: want wsgate's one token", token, s.frames[0].payload)
	}
	route := metRoute("silent-backend", "silent")
	metWait(t, a, "the ping timeout counted",
		metWant{"wsgate_websocket_pings_total", route("side", "backend"), 1},
		metWant{"wsgate_websocket_pings_total", route("side", "client"), float64(clientPings)},
		metWant{"wsgate_websocket_ping_timeouts_total", route("side", "backend"), 1},
		metWant{"wsgate_websocket_ping_timeouts_total", route("side", "client"), 0},
		metWant{"wsgate_websocket_sessions_ended_total", route("code", "1011", "closed_by", "wsgate"), 1},
	)
}

// polIsReset reports whether err is a connection reset.
func polIsReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

// pyBurst sends argv[2] messages to argv[1], each after the echo of the
// one before, then one more, and reads until the session ends.
const pyBurst = `
async def main(url, n):
    ws = await connect(url)
    res = {"echoes": []}
    try:
        for i in range(1, n + 1):
            await ws.send("m%d" % i)
            res["echoes"].append(await asyncio.wait_for(ws.recv(), 20))
        await ws.send("m%d" % (n + 1))
        msg = await asyncio.wait_for(ws.recv(), 20)
        res["error"] = "the message over the burst was echoed: %r" % msg
    except asyncio.TimeoutError:
        res["error"] = "no close within 20s"
    except websockets.ConnectionClosed as e:
        res["close"] = closed(e)
    await ws.close()
    print(json.dumps(res), flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
`

// TestPolicyMessageRateClose: with max_messages_per_second 0.2 and burst
// 3 (rate_limit_action left at its default, close), the Python client's
// first three messages are echoed and the fourth ends the session: 1008
// "message rate exceeded" to the client, 1001 to the gorilla backend,
// which never sees the fourth message.
func TestPolicyMessageRateClose(t *testing.T) {
	needPythonWebsockets(t)
	b, rec, backend := polEchoRecorder(t)
	g, _, a := admStart(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  echo: {targets: ["http://%s"]}
routes:
  - name: rate-close
    match: {path_prefix: /}
    upstream: echo
    websocket:
      max_messages_per_second: 0.2
      burst: 3
`, backend)+polAdmin)
	var res struct {
		Echoes []string `json:"echoes"`
		Error  string   `json:"error"`
		Close  *pyClose `json:"close"`
	}
	polPython(t, &res, pyBurst, "ws://"+g.Addr+"/rate", "3")
	if !slices.Equal(res.Echoes, []string{"m1", "m2", "m3"}) {
		t.Errorf("client: echoes %q, want the burst of 3", res.Echoes)
	}
	if res.Error != "" || res.Close == nil || *res.Close != (pyClose{1008, "message rate exceeded"}) {
		t.Errorf("client: %q, close %+v; want 1008 \"message rate exceeded\"", res.Error, res.Close)
	}
	if ce := b.nextClose(t, "/rate"); ce.Code != 1001 || ce.Text != "client message rate exceeded" {
		t.Errorf("backend: close %d %q, want 1001 \"client message rate exceeded\"", ce.Code, ce.Text)
	}
	if got := rec.get("/rate"); !slices.Equal(got, []string{"m1", "m2", "m3"}) {
		t.Errorf("backend received %q, want m1 m2 m3", got)
	}
	route := metRoute("rate-close", "echo")
	metWait(t, a, "the rate limit close counted",
		metWant{"wsgate_websocket_rate_limit_closes_total", route("side", "client"), 1},
		metWant{"wsgate_websocket_rate_limit_closes_total", route("side", "backend"), 0},
		metWant{"wsgate_websocket_dropped_messages_total", route(), 0},
		metWant{"wsgate_websocket_sessions_ended_total", route("code", "1008", "closed_by", "wsgate"), 1},
	)
}

// TestPolicyMessageRateDrop: with rate_limit_action drop (1 message per
// second, burst 2), a raw client sends in one write a message, a
// fragmented one, then a fragmented one with a ping between its frames,
// and a binary one. The first two arrive intact at the gorilla backend and
// are echoed; the last two are dropped whole, every frame (the ping in
// between still passes, and its pong comes back); nothing else arrives in
// the next 1.5s. Once the bucket has refilled, a fragmented message
// passes intact again. /metrics counts the 2 dropped messages.
func TestPolicyMessageRateDrop(t *testing.T) {
	needBinary(t)
	_, rec, backend := polEchoRecorder(t)
	g, _, a := admStart(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  echo: {targets: ["http://%s"]}
routes:
  - name: rate-drop
    match: {path_prefix: /}
    upstream: echo
    websocket:
      max_messages_per_second: 1
      burst: 2
      rate_limit_action: drop
`, backend)+polAdmin)
	rc := dialRaw(t, g.Addr)
	rc.wsHandshake(g.Addr, "/drop")
	const text, binary, cont, ping = 0x1, 0x2, 0x0, 0x9
	rc.write(polFrames(
		polFrame(true, text, "one", true),
		polFrame(false, text, "tw", true), polFrame(true, cont, "o", true),
		// Over the rate from here.
		polFrame(false, text, "thr", true), polFrame(true, ping, "mid-drop", true),
		polFrame(false, cont, "e", true), polFrame(true, cont, "e!", true),
		polFrame(true, binary, "four", true),
	))
	var got []string
	for range 3 {
		f := rc.readFrame()
		got = append(got, fmt.Sprintf("%#x %s", f.opcode, f.payload))
	}
	slices.Sort(got) // the pong may pass the echoes
	if want := []string{"0x1 one", "0x1 two", "0xa mid-drop"}; !slices.Equal(got, want) {
		t.Errorf("client received %q, want %q", got, want)
	}

	// A dropped message would be echoed within milliseconds; 1.5s is
	// also more than the second the rate needs to allow one more.
	_ = rc.c.SetReadDeadline(time.Now().Add(1500 * time.Millisecond))
	if b, err := rc.br.Peek(1); err == nil || !isTimeoutErr(err) {
		t.Fatalf("after the drops the client read %q (%v), want nothing", b, err)
	}
	rc.write(polFrames(polFrame(false, text, "fi", true), polFrame(true, cont, "ve", true)))
	if f := rc.readFrame(); f.opcode != text || string(f.payload) != "five" {
		t.Errorf("after the bucket refilled: %#x %q, want the echo of \"five\"", f.opcode, f.payload)
	}
	if got := rec.get("/drop"); !slices.Equal(got, []string{"one", "two", "five"}) {
		t.Errorf("backend received %q, want one two five", got)
	}
	route := metRoute("rate-drop", "echo")
	metWait(t, a, "the dropped messages counted",
		metWant{"wsgate_websocket_dropped_messages_total", route("side", "client"), 2},
		metWant{"wsgate_websocket_dropped_messages_total", route("side", "backend"), 0},
		metWant{"wsgate_websocket_rate_limit_closes_total", route(), 0},
		metWant{"wsgate_websocket_messages_total", route("direction", "from_client"), 3},
		metWant{"wsgate_websocket_sessions", route(), 1},
	)
}

// TestPolicyInvalidUTF8: validate_utf8 (on by default) with raw clients
// and the gorilla echo backend. Characters split across fragments (two
// and four bytes) pass intact; text that is invalid only once its second
// fragment arrives gets 1007 "invalid UTF-8 in a text message" to the
// client and 1001 to the backend, which never gets the message; so does a
// message that ends inside a character. Text a raw backend sends invalid
// across fragments gets it 1007 and the client 1001. With validate_utf8:
// false the same invalid text passes unchanged.
func TestPolicyInvalidUTF8(t *testing.T) {
	needBinary(t)
	b, rec, echo := polEchoRecorder(t)
	backendClose := make(chan polWireFrame, 1)
	bad := polRawWSBackend(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := c.Write([]byte(polFrames(polFrame(false, 0x1, "ok\xe2\x82", false), polFrame(true, 0x0, "(", false)))); err != nil {
			return
		}
		for {
			f, err := polReadWireFrame(br)
			if err != nil || f.opcode == 0x8 {
				backendClose <- f
				return
			}
		}
	})
	g, _, a := admStart(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  echo: {targets: ["http://%s"]}
  bad: {targets: ["http://%s"]}
routes:
  - name: utf8-off
    match: {path_prefix: /off}
    upstream: echo
    websocket: {validate_utf8: false}
  - name: utf8-from-backend
    match: {path_prefix: /from-backend}
    upstream: bad
  - name: utf8
    match: {path_prefix: /}
    upstream: echo
`, echo, bad)+polAdmin)
	const text, cont = 0x1, 0x0
	t.Run("split characters pass, invalid split text is refused", func(t *testing.T) {
		rc := dialRaw(t, g.Addr)
		rc.wsHandshake(g.Addr, "/split")
		rc.write(polFrames(polFrame(false, text, "caf\xc3", true), polFrame(true, cont, "\xa9 ok", true)))
		if f := rc.readFrame(); f.opcode != text || string(f.payload) != "café ok" {
			t.Fatalf("echo %#x %q, want \"café ok\"", f.opcode, f.payload)
		}
		rc.write(polFrames(polFrame(false, text, "\xf0\x9f", true), polFrame(false, cont, "\x98", true), polFrame(true, cont, "\x80", true)))
		if f := rc.readFrame(); f.opcode != text || string(f.payload) != "😀" {
			t.Fatalf("echo %#x %q, want \"😀\"", f.opcode, f.payload)
		}
		// "ab\xe2\x82" is a valid start; "(" cannot continue the
		// character.
		rc.write(polFrames(polFrame(false, text, "ab\xe2\x82", true), polFrame(true, cont, "(", true)))
		f := rc.readFrame()
		if code, reason := f.closeCode(); code != 1007 || reason != "invalid UTF-8 in a text message" {
			t.Errorf("client: frame %#x %q, want close 1007 \"invalid UTF-8 in a text message\"", f.opcode, f.payload)
		}
		rc.expectEOF()
		if ce := b.nextClose(t, "/split"); ce.Code != 1001 || ce.Text != "client sent invalid UTF-8" {
			t.Errorf("backend: close %d %q, want 1001 \"client sent invalid UTF-8\"", ce.Code, ce.Text)
		}
		if got := rec.get("/split"); !slices.Equal(got, []string{"café ok", "😀"}) {
			t.Errorf("backend received %q, want the two valid messages only", got)
		}
	})

	t.Run("message ends inside a character", func(t *testing.T) {
		rc := dialRaw(t, g.Addr)
		rc.wsHandshake(g.Addr, "/truncated")
		rc.write(polFrames(polFrame(false, text, "x\xe2", true), polFrame(true, cont, "\x82", true)))
		f := rc.readFrame()
		if code, reason := f.closeCode(); code != 1007 || reason != "invalid UTF-8 in a text message" {
			t.Errorf("client: frame %#x %q, want close 1007", f.opcode, f.payload)
		}
		if ce := b.nextClose(t, "/truncated"); ce.Code != 1001 {
			t.Errorf("backend: close %d %q, want 1001", ce.Code, ce.Text)
		}
		if got := rec.get("/truncated"); len(got) != 0 {
			t.Errorf("backend received %q, want nothing", got)
		}
	})

	t.Run("from the backend", func(t *testing.T) {
		rc := dialRaw(t, g.Addr)
		rc.wsHandshake(g.Addr, "/from-backend")
		var f frame
		for range 3 { // the valid first fragment may be relayed first
			if f = rc.readFrame(); f.opcode == 0x8 {
				break
			}
			if f.opcode != text || string(f.payload) != "ok\xe2\x82" {
				t.Errorf("client received %#x %q before the close, want at most the first fragment", f.opcode, f.payload)
			}
		}
		if code, reason := f.closeCode(); code != 1001 || reason != "backend sent invalid UTF-8" {
			t.Errorf("client: frame %#x %q, want close 1001 \"backend sent invalid UTF-8\"", f.opcode, f.payload)
		}
		select {
		case bf := <-backendClose:
			if code, reason := bf.closeCode(); code != 1007 || reason != "invalid UTF-8 in a text message" {
				t.Errorf("backend: frame %#x %q, want close 1007", bf.opcode, bf.payload)
			}
		case <-time.After(polGuard):
			t.Fatal("the backend got no close frame")
		}
	})

	t.Run("validate_utf8 false", func(t *testing.T) {
		rc := dialRaw(t, g.Addr)
		rc.wsHandshake(g.Addr, "/off")
		rc.write(polFrames(polFrame(false, text, "ab\xe2\x82", true), polFrame(true, cont, "(", true)))
		if f := rc.readFrame(); f.opcode != text || string(f.payload) != "ab\xe2\x82(" {
			t.Errorf("echo %#x %q, want the invalid text back unchanged", f.opcode, f.payload)
		}
	})

	metWait(t, a, "the invalid UTF-8 counted",
		metWant{"wsgate_websocket_invalid_utf8_total", metLabels("route", "utf8", "upstream", "echo", "side", "client"), 2},
		metWant{"wsgate_websocket_invalid_utf8_total", metLabels("route", "utf8", "upstream", "echo", "side", "backend"), 0},
		metWant{"wsgate_websocket_invalid_utf8_total", metLabels("route", "utf8-from-backend", "upstream", "bad", "side", "backend"), 1},
		metWant{"wsgate_websocket_invalid_utf8_total", metLabels("route", "utf8-from-backend", "side", "client"), 0},
		metWant{"wsgate_websocket_invalid_utf8_total", metLabels("route", "utf8-off"), 0},
		metWant{"wsgate_websocket_sessions_ended_total", metLabels("route", "utf8", "code", "1007", "closed_by", "wsgate"), 2},
	)
}

// TestPolicyRequestRateLimit: limits.requests_per_second_per_ip 1 with
// burst 2 on one route: two requests pass, the third gets 429 with
// Retry-After of at least 1 second and a WebSocket handshake right after
// it 429 too, neither reaching the backend; a route without limits on the
// same backend is not affected; once the bucket refills a request passes
// again. /metrics counts every 429, on the limited route only, and the
// refused handshake as a refusal with status 429.
func TestPolicyRequestRateLimit(t *testing.T) {
	needBinary(t)
	ws := newWSBackend()
	var mu sync.Mutex
	hits := map[string]int{} // guarded by mu: requests by first path segment
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits[strings.SplitN(strings.TrimPrefix(r.URL.Path, "/"), "/", 2)[0]]++
		mu.Unlock()
		ws.ServeHTTP(w, r)
	}))
	hitsOf := func(seg string) int {
		mu.Lock()
		defer mu.Unlock()
		return hits[seg]
	}
	g, _, a := admStart(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  app: {targets: ["http://%s"]}
routes:
  - name: limited
    match: {path_prefix: /limited}
    upstream: app
    limits: {requests_per_second_per_ip: 1, burst: 2}
  - name: free
    match: {path_prefix: /free}
    upstream: app
`, backend)+polAdmin)
	hc := httpClient()
	base := "http://" + g.Addr
	retryAfter := func(what string, h http.Header) {
		t.Helper()
		if n, err := strconv.Atoi(h.Get("Retry-After")); err != nil || n < 1 {
			t.Errorf("%s: Retry-After %q, want whole seconds, at least 1", what, h.Get("Retry-After"))
		}
	}

	start := time.Now()
	for i := range 2 {
		if resp, body := get(t, hc, base+"/limited/"+strconv.Itoa(i), nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: %d %.200q, want 200 within the burst", i+1, resp.StatusCode, body)
		}
	}
	resp, body := get(t, hc, base+"/limited/2", nil)
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("request 3, %v after the first: %d %.200q, want 429", time.Since(start), resp.StatusCode, body)
	}
	retryAfter("request 3", resp.Header)
	d := &websocket.Dialer{HandshakeTimeout: ioTimeout}
	c, hresp, err := d.Dial("ws://"+g.Addr+"/limited/ws", nil)
	if err == nil {
		c.Close()
		t.Fatal("handshake over the limit upgraded, want 429")
	}
	if hresp == nil || hresp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("handshake over the limit: %v (response %v), want 429", err, hresp)
	}
	retryAfter("handshake", hresp.Header)
	t.Logf("two requests, a 429 and a refused handshake within %v", time.Since(start).Round(time.Millisecond))
	if resp, body := get(t, hc, base+"/free/x", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("route without limits: %d %.200q, want 200", resp.StatusCode, body)
	}
	if got := hitsOf("limited"); got != 2 {
		t.Errorf("backend received %d requests on /limited, want 2 (the ones within the burst)", got)
	}
	metWait(t, a, "the 429s counted",
		metWant{"wsgate_http_rate_limited_total", metLabels("route", "limited"), 2},
		metWant{"wsgate_http_rate_limited_total", metLabels("route", "free"), 0},
		metWant{"wsgate_websocket_handshake_refusals_total", metLabels("route", "limited", "status", "429"), 1},
		metWant{"wsgate_websocket_handshakes_total", metLabels("route", "limited"), 0},
	)

	// The bucket refills at one request per second: poll until one
	// passes, counting the 429s on the way.
	limited := 2
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(polGuard)
	for {
		resp, body := get(t, hc, base+"/limited/again", nil)
		if resp.StatusCode == http.StatusOK {
			break
		}
		if resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("waiting for the refill: %d %.200q", resp.StatusCode, body)
		}
		limited++
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("still 429 after %v", polGuard)
		}
	}
	if got := hitsOf("limited"); got != 3 {
		t.Errorf("backend received %d requests on /limited, want 3", got)
	}
	metWait(t, a, "every 429 counted",
		metWant{"wsgate_http_rate_limited_total", metLabels("route", "limited"), float64(limited)},
		metWant{"wsgate_http_rate_limited_total", metLabels("route", "free"), 0},
	)
}
