//go:build linux

package integration

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// maxImageBytes is the image size the README promises to stay under.
const maxImageBytes = 15 << 20

// docker runs the docker CLI and returns its trimmed stdout.
func docker(t *testing.T, timeout time.Duration, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("docker %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

// needDocker skips the test unless a Docker daemon answers (.ci/run
// starts one; under WSGATE_REQUIRE_PEERS its absence fails the test).
func needDocker(t *testing.T) {
	t.Helper()
	needBinary(t)
	if _, err := exec.LookPath("docker"); err != nil {
		skipMissingPeer(t, "docker is not installed")
	}
	if _, err := docker(t, 30*time.Second, "info", "--format", "{{.ServerVersion}}"); err != nil {
		skipMissingPeer(t, "no Docker daemon: "+err.Error())
	}
}

// buildTestImage builds the image with scripts/image.sh, stamped with
// version itest-ID, and removes it when the test ends. It returns the id,
// the image's tag and a container name for the test.
func buildTestImage(t *testing.T) (id, tag, name string) {
	t.Helper()
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	id = hex.EncodeToString(rnd[:])
	tag, name = "wsgate-itest:"+id, "wsgate-itest-"+id
	build := exec.Command("./scripts/image.sh", "-t", tag)
	build.Dir = moduleRoot
	build.Env = append(processEnv(), "VERSION=itest-"+id)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("scripts/image.sh: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if _, err := docker(t, time.Minute, "image", "rm", "-f", tag); err != nil {
			t.Logf("remove image: %v", err)
		}
	})
	return id, tag, name
}

// TestDockerImage builds the image with scripts/image.sh (no registry
// needed), runs it with --network host on a config that proxies to a
// backend of this test, checks HTTP, a WebSocket echo and the image's
// HEALTHCHECK (wsgate healthcheck), then `docker stop`s it: the open
// WebSocket gets 1001 and the container exits 0 (wsgate, PID 1, drains
// on SIGTERM).
func TestDockerImage(t *testing.T) {
	needDocker(t)
	id, tag, name := buildTestImage(t)

	// What the image is.
	inspect := func(format string) string {
		t.Helper()
		out, err := docker(t, 30*time.Second, "image", "inspect", "--format", format, tag)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	if got := inspect("{{.Config.User}}"); got != "65532:65532" {
		t.Errorf("image user %q, want 65532:65532", got)
	}
	if got := inspect("{{json .Config.Entrypoint}}"); got != `["/usr/local/bin/wsgate"]` {
		t.Errorf("entrypoint %s", got)
	}
	if got := inspect(`{{index .Config.Labels "org.opencontainers.image.version"}}`); got != "itest-"+id {
		t.Errorf("label org.opencontainers.image.version = %q, want itest-%s", got, id)
	}
	if got := inspect("{{json .Config.ExposedPorts}}"); !strings.Contains(got, `"8080/tcp"`) || !strings.Contains(got, `"9901/tcp"`) {
		t.Errorf("exposed ports %s, want 8080 and 9901", got)
	}
	size, err := strconv.ParseInt(inspect("{{.Size}}"), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("image size: %d bytes (%.1f MiB)", size, float64(size)/(1<<20))
	if size > maxImageBytes {
		t.Errorf("image is %d bytes, over the %d the README states", size, maxImageBytes)
	}
	// The version stamped with -ldflags.
	if out, err := docker(t, time.Minute, "run", "--rm", tag, "version"); err != nil || out != "wsgate itest-"+id {
		t.Errorf("docker run %s version: %q, %v", tag, out, err)
	}
	// The config the image runs by default is valid.
	if out, err := docker(t, time.Minute, "run", "--rm", tag, "validate", "/etc/wsgate/wsgate.yaml"); err != nil || !strings.HasSuffix(out, "/etc/wsgate/wsgate.yaml: ok") {
		t.Errorf("validate the image's config: %q, %v", out, err)
	}

	// The backend, and a config for it on ports of this test.
	be := newWSBackend()
	backend := be.start(t)
	dir := t.TempDir()
	// The container runs as 65532: the directory and file must be readable.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  app:
    targets: [http://%s]
routes:
  - name: app
    match: {path_prefix: /}
    upstream: app
timeouts:
  drain: 5s
admin:
  addr: 127.0.0.1:0
`, backend)
	if err := os.WriteFile(filepath.Join(dir, "wsgate.yaml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	g := &gw{t: t, logs: newLogBuffer(), stdout: newLogBuffer(), exited: make(chan struct{}), stopped: true}
	// Attached, so that its logs and exit code come through this
	// process; --sig-proxy=false: only docker stop signals it.
	g.cmd = exec.Command("docker", "run", "--name", name, "--network", "host", "--sig-proxy=false",
		"-v", dir+":/etc/wsgate:ro", "--no-healthcheck", tag)
	g.cmd.Stdout = g.stdout
	g.cmd.Stderr = g.logs
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		err := g.cmd.Wait()
		g.exitCode = exitCode(err)
		close(g.exited)
	}()
	t.Cleanup(func() {
		if _, err := docker(t, time.Minute, "rm", "-f", name); err != nil {
			t.Logf("remove container: %v", err)
		}
		select {
		case <-g.exited:
		case <-time.After(stopTimeout):
			_ = g.cmd.Process.Kill()
		}
		if t.Failed() {
			t.Logf("container output:\n%s", g.logs.String())
		}
	})
	g.awaitListeners(1)
	g.waitLog(startTimeout, "admin listening", func(e map[string]any) bool { return e["msg"] == "admin listening" })
	for _, e := range func() []map[string]any { es, _ := g.logs.snapshot(); return es }() {
		if e["msg"] == "admin listening" {
			g.AdminAddr, _ = e["addr"].(string)
		}
	}

	// HTTP through the container.
	resp, body := get(t, httpClient(), "http://"+g.Addr+"/hello?x=1", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("GET /hello: %d %s", resp.StatusCode, body)
	}
	if r := decodeEcho(t, body); r.Path != "/hello" || r.RawQuery != "x=1" {
		t.Errorf("backend saw %s?%s, want /hello?x=1", r.Path, r.RawQuery)
	}
	// A WebSocket echo through it.
	ws := dialWS(t, websocket.DefaultDialer, "ws://"+g.Addr+"/ws", nil)
	defer ws.Close()
	echoOnce(t, ws, websocket.TextMessage, []byte("through the container"))

	// wsgate healthcheck in the container (the image has no curl).
	if out, err := docker(t, time.Minute, "exec", name, "/usr/local/bin/wsgate", "healthcheck", "http://"+g.AdminAddr+"/healthz"); err != nil {
		t.Errorf("wsgate healthcheck inside the container: %q, %v", out, err)
	}
	if _, err := docker(t, time.Minute, "exec", name, "/usr/local/bin/wsgate", "healthcheck", "http://"+g.AdminAddr+"/nothing-here"); err == nil {
		t.Errorf("wsgate healthcheck of a 404 succeeded")
	}

	// docker stop: SIGTERM to PID 1, which drains; the session gets 1001.
	stopped := make(chan error, 1)
	go func() {
		_, err := docker(t, 2*time.Minute, "stop", "--time", "30", name)
		stopped <- err
	}()
	ce := readClose(t, ws)
	if ce.Code != websocket.CloseGoingAway {
		t.Errorf("close code %d %q after docker stop, want 1001", ce.Code, ce.Text)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	code, err := docker(t, 30*time.Second, "inspect", "--format", "{{.State.ExitCode}}", name)
	if err != nil {
		t.Fatal(err)
	}
	if code != "0" {
		t.Errorf("container exit code %s after docker stop, want 0", code)
	}
	if c := g.wait(stopTimeout); c != 0 {
		t.Errorf("docker run exited %d, want 0", c)
	}
	if !strings.Contains(g.logs.String(), `"msg":"shutting down","signal":"terminated"`) {
		t.Errorf("no \"shutting down\" line for SIGTERM in the container's log")
	}
	if be.nextClose(t, "/ws").Code != websocket.CloseGoingAway {
		t.Errorf("the backend did not get 1001")
	}
}

// TestDockerDemo runs the image as it is, on Docker's default bridge
// network: the demo config comes up, the image's HEALTHCHECK (wsgate
// healthcheck on the admin listener's /healthz, inside the container)
// reports healthy, and the demo page is served through the proxy.
func TestDockerDemo(t *testing.T) {
	needDocker(t)
	_, tag, name := buildTestImage(t)
	t.Cleanup(func() {
		if _, err := docker(t, time.Minute, "rm", "-f", name); err != nil {
			t.Logf("remove container: %v", err)
		}
	})
	if _, err := docker(t, time.Minute, "run", "-d", "--name", name,
		"--health-interval", "1s", "--health-start-period", "1s", tag); err != nil {
		t.Fatal(err)
	}
	// Generous: a loaded machine with vfs storage can be slow to start
	// a container; the check itself runs every second.
	deadline := time.Now().Add(2 * time.Minute)
	status := ""
	for {
		out, err := docker(t, 30*time.Second, "inspect", "--format", "{{.State.Status}} {{.State.Health.Status}}", name)
		if err != nil {
			t.Fatal(err)
		}
		status = out
		if status == "running healthy" || strings.HasPrefix(status, "exited") || time.Now().After(deadline) {
			break
		}
		// Docker runs the check every second; ask again in a while.
		<-time.After(200 * time.Millisecond)
	}
	if status != "running healthy" {
		logs, _ := docker(t, 30*time.Second, "logs", name)
		t.Fatalf("container state %q, want running healthy; logs:\n%s", status, logs)
	}
	// The demo page, through the proxy, from inside the container.
	if out, err := docker(t, time.Minute, "exec", name, "/usr/local/bin/wsgate", "healthcheck", "http://127.0.0.1:8080/"); err != nil {
		t.Errorf("the demo page through the proxy: %q, %v", out, err)
	}
	if _, err := docker(t, 2*time.Minute, "stop", name); err != nil {
		t.Fatal(err)
	}
	if code, err := docker(t, 30*time.Second, "inspect", "--format", "{{.State.ExitCode}}", name); err != nil || code != "0" {
		t.Errorf("exit code %q, %v after docker stop; want 0", code, err)
	}
}

// TestDockerfilesAgree: Dockerfile (the offline build) and
// Dockerfile.multistage end in the same final stage, but for where the
// root file system comes from.
func TestDockerfilesAgree(t *testing.T) {
	final := func(name string) []string {
		t.Helper()
		f, err := os.Open(filepath.Join(moduleRoot, name))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var lines []string
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "FROM ") {
				lines = lines[:0] // the last stage only
			}
			if strings.HasPrefix(line, "COPY ") {
				continue
			}
			lines = append(lines, line)
		}
		if err := sc.Err(); err != nil {
			t.Fatal(err)
		}
		return lines
	}
	a, b := final("Dockerfile"), final("Dockerfile.multistage")
	if strings.Join(a, "\n") != strings.Join(b, "\n") {
		t.Errorf("the final stages differ:\nDockerfile:\n%s\n\nDockerfile.multistage:\n%s", strings.Join(a, "\n"), strings.Join(b, "\n"))
	}
	if len(a) < 10 || a[0] != "FROM scratch" {
		t.Errorf("Dockerfile's final stage is not FROM scratch: %q", a)
	}
}
