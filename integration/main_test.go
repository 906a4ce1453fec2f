package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// wsgateBin is the binary TestMain built; empty under -short. Under -race
// it is race-instrumented, so a data race in wsgate fails the test that
// caused it. wsgatePlainBin is built without -race, for measurements of
// the process itself (the race runtime multiplies memory use).
var wsgateBin, wsgatePlainBin string

// moduleRoot is the repository root, the parent of this directory.
const moduleRoot = ".."

const (
	startTimeout = 10 * time.Second // until every listening line is logged
	stopTimeout  = 20 * time.Second // SIGTERM until exit; then SIGKILL
)

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run()) // every test skips itself
	}
	dir, err := os.MkdirTemp("", "wsgate-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	wsgateBin = filepath.Join(dir, "wsgate")
	args := []string{"build", "-o", wsgateBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/wsgate")
	build := exec.Command("go", args...)
	build.Dir = moduleRoot
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go %s: %v\n%s", strings.Join(args, " "), err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	wsgatePlainBin = wsgateBin
	if raceEnabled {
		wsgatePlainBin = filepath.Join(dir, "wsgate-plain")
		build := exec.Command("go", "build", "-o", wsgatePlainBin, "./cmd/wsgate")
		build.Dir = moduleRoot
		if out, err := build.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "go build (plain): %v\n%s", err, out)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// needBinary skips the test under -short and returns the built binary.
func needBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: skipped under -short")
	}
	return wsgateBin
}

// logBuffer collects the process's stderr line by line. Lines that are
// JSON objects are also kept decoded. It is safe for concurrent use.
type logBuffer struct {
	mu      sync.Mutex
	partial []byte           // guarded by mu: an unterminated last line
	lines   []string         // guarded by mu
	entries []map[string]any // guarded by mu: decoded JSON lines, in order
	changed chan struct{}    // guarded by mu: closed and replaced on every new line
}

func newLogBuffer() *logBuffer { return &logBuffer{changed: make(chan struct{})} }

// Write splits p into lines; exec copies the process's stderr here.
func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.partial = append(b.partial, p...)
	added := false
	for {
		i := bytes.IndexByte(b.partial, '\n')
		if i < 0 {
			break
		}
		b.addLocked(string(b.partial[:i]))
		b.partial = b.partial[i+1:]
		added = true
	}
	if added {
		close(b.changed)
		b.changed = make(chan struct{})
	}
	return len(p), nil
}

func (b *logBuffer) addLocked(line string) {
	b.lines = append(b.lines, line)
	var m map[string]any
	if json.Unmarshal([]byte(line), &m) == nil {
		b.entries = append(b.entries, m)
	}
}

// snapshot returns the decoded entries so far and a channel closed when
// another line arrives.
func (b *logBuffer) snapshot() ([]map[string]any, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]map[string]any(nil), b.entries...), b.changed
}

// String returns every line so far, including an unterminated last one.
func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := strings.Join(b.lines, "\n")
	if len(b.partial) > 0 {
		s += "\n" + string(b.partial)
	}
	return s
}

// listenAddr is one "listening" log line.
type listenAddr struct {
	Addr    string
	TLS     bool
	Builtin string
}

// gw is a running wsgate process.
type gw struct {
	t      *testing.T
	cmd    *exec.Cmd
	logs   *logBuffer
	stdout *logBuffer
	// Listeners are the listening lines in config order.
	Listeners []listenAddr
	// Addr is the first listener that serves routes (not builtin).
	Addr string
	// AdminAddr is the admin listener's address, from its "admin
	// listening" line; "" when the config has none.
	AdminAddr string

	exited   chan struct{} // closed when the process has exited
	exitCode int           // set before exited is closed
	stopped  bool          // the test collected the exit code itself
}

// startGateway writes yamlText into a temp dir and starts wsgate on it.
func startGateway(t *testing.T, yamlText string) *gw {
	t.Helper()
	path := filepath.Join(t.TempDir(), "wsgate.yaml")
	if err := os.WriteFile(path, []byte(yamlText), 0o600); err != nil {
		t.Fatal(err)
	}
	return startGatewayFile(t, path, nil)
}

// startGatewayFile starts wsgate -config path with extra environment
// variables (KEY=VALUE) and waits until every listener is logged. The
// process gets SIGTERM in t.Cleanup; unless the test collected the exit
// code with stop, a code other than 0 then fails the test. The process's
// logs are printed when the test fails.
func startGatewayFile(t *testing.T, path string, env []string) *gw {
	t.Helper()
	return startGatewayBin(t, needBinary(t), path, env)
}

// startGatewayBin is startGatewayFile with a chosen binary.
func startGatewayBin(t *testing.T, bin, path string, env []string) *gw {
	t.Helper()
	want, err := countListeners(path)
	if err != nil {
		t.Fatalf("count listeners in %s: %v", path, err)
	}
	g := &gw{
		t:      t,
		logs:   newLogBuffer(),
		stdout: newLogBuffer(),
		exited: make(chan struct{}),
	}
	g.cmd = exec.Command(bin, "-config", path)
	g.cmd.Env = append(processEnv(), env...)
	g.cmd.Stdout = g.stdout
	g.cmd.Stderr = g.logs
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		err := g.cmd.Wait() // returns after stderr is copied to logs
		g.exitCode = exitCode(err)
		close(g.exited)
	}()
	t.Cleanup(g.cleanup)
	g.awaitListeners(want)
	checkConfigSchema(t, path, env)
	return g
}

// awaitListeners waits until want listening lines are logged, and sets
// g.Listeners and g.Addr from them.
func (g *gw) awaitListeners(want int) {
	t := g.t
	t.Helper()
	deadline := time.After(startTimeout)
	for {
		entries, changed := g.logs.snapshot()
		g.Listeners = g.Listeners[:0]
		for _, e := range entries {
			if e["msg"] == "listening" {
				addr, _ := e["addr"].(string)
				isTLS, _ := e["tls"].(bool)
				builtin, _ := e["builtin"].(string)
				g.Listeners = append(g.Listeners, listenAddr{Addr: addr, TLS: isTLS, Builtin: builtin})
			}
			if e["msg"] == "admin listening" {
				g.AdminAddr, _ = e["addr"].(string)
			}
		}
		if len(g.Listeners) == want {
			break
		}
		select {
		case <-changed:
		case <-g.exited:
			// Lines may have arrived with the exit; look once more.
			if entries2, _ := g.logs.snapshot(); len(entries2) != len(entries) {
				continue
			}
			t.Fatalf("wsgate exited with code %d before listening on %d listeners", g.exitCode, want)
		case <-deadline:
			t.Fatalf("wsgate logged %d of %d listening lines within %v", len(g.Listeners), want, startTimeout)
		}
	}
	for _, l := range g.Listeners {
		if l.Builtin == "" {
			g.Addr = l.Addr
			break
		}
	}
}

// countListeners returns the length of the listeners list of a config
// file, to know how many listening lines to wait for.
func countListeners(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	var doc struct {
		Listeners []yaml.Node `yaml:"listeners"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return 0, err
	}
	return len(doc.Listeners), nil
}

// signal sends sig to the process.
func (g *gw) signal(sig os.Signal) {
	g.t.Helper()
	if err := g.cmd.Process.Signal(sig); err != nil {
		g.t.Fatalf("signal %v: %v", sig, err)
	}
}

// stop sends SIGTERM and returns the exit code; the caller checks it.
func (g *gw) stop() int {
	g.t.Helper()
	g.stopped = true
	g.signal(syscall.SIGTERM)
	return g.wait(stopTimeout)
}

// wait returns the exit code once the process has exited. After timeout
// it kills the process and fails the test.
func (g *gw) wait(timeout time.Duration) int {
	g.t.Helper()
	select {
	case <-g.exited:
		return g.exitCode
	case <-time.After(timeout):
		_ = g.cmd.Process.Kill()
		<-g.exited
		g.t.Errorf("wsgate did not exit within %v; killed", timeout)
		return g.exitCode
	}
}

func (g *gw) cleanup() {
	t := g.t
	select {
	case <-g.exited:
	default:
		_ = g.cmd.Process.Signal(syscall.SIGTERM)
		// A second SIGTERM once the first is seen: every session gets
		// its 1001 at once instead of spread over timeouts.drain.
		g.hurry()
		code := g.wait(stopTimeout)
		if !g.stopped && code != 0 {
			t.Errorf("wsgate exited with code %d after SIGTERM, want 0", code)
		}
	}
	if strings.Contains(g.logs.String(), "WARNING: DATA RACE") {
		t.Errorf("the race detector found a data race in wsgate")
	}
	if t.Failed() {
		t.Logf("wsgate stderr:\n%s", g.logs.String())
	}
}

// hurry sends a second SIGTERM once wsgate has logged that it shuts
// down (two signals sent back to back may arrive as one), so that the
// drain closes every session at once. It gives up when the process exits
// or after stopTimeout.
func (g *gw) hurry() {
	deadline := time.After(stopTimeout)
	for {
		entries, changed := g.logs.snapshot()
		for _, e := range entries {
			if e["msg"] == "shutting down" {
				_ = g.cmd.Process.Signal(syscall.SIGTERM)
				return
			}
		}
		select {
		case <-changed:
		case <-g.exited:
			return
		case <-deadline:
			return
		}
	}
}

// waitLog waits until some log entry satisfies match, and returns it.
func (g *gw) waitLog(timeout time.Duration, what string, match func(map[string]any) bool) map[string]any {
	g.t.Helper()
	deadline := time.After(timeout)
	for {
		entries, changed := g.logs.snapshot()
		for _, e := range entries {
			if match(e) {
				return e
			}
		}
		select {
		case <-changed:
		case <-deadline:
			g.t.Fatalf("no log line %s within %v", what, timeout)
			return nil
		}
	}
}

// countLogs returns how many log entries have msg.
func (g *gw) countLogs(msg string) int {
	entries, _ := g.logs.snapshot()
	n := 0
	for _, e := range entries {
		if e["msg"] == msg {
			n++
		}
	}
	return n
}

// processEnv is the environment for wsgate processes: the test's, and for
// a race-enabled binary no pause at exit (the race runtime waits 1s by
// default, which every stop would pay).
func processEnv() []string {
	env := os.Environ()
	if raceEnabled {
		gorace := strings.TrimSpace(os.Getenv("GORACE") + " atexit_sleep_ms=0")
		env = append(env, "GORACE="+gorace)
	}
	return env
}

// exitCode returns the exit status in err from exec's Wait or Run: 0 for
// nil, -1 when the process died of a signal or did not run.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// runWsgate runs the binary to completion (at most 30s) and returns its
// stdout, stderr and exit code.
func runWsgate(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	bin := needBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = processEnv()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("wsgate %s: did not finish within 30s", strings.Join(args, " "))
	}
	if err != nil && exitCode(err) < 0 {
		t.Fatalf("wsgate %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), errb.String(), exitCode(err)
}

// skipMissingPeer skips a test whose outside client (chromium, curl,
// Python websockets) is not installed, unless WSGATE_REQUIRE_PEERS is set
// (.ci/run sets it): in CI a missing peer is a failure, not a skip.
func skipMissingPeer(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("WSGATE_REQUIRE_PEERS") != "" {
		t.Fatalf("%s (WSGATE_REQUIRE_PEERS is set)", why)
	}
	t.Skip(why)
}
