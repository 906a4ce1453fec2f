package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// python is Debian's interpreter, the one python3-websockets installs for.
const python = "/usr/bin/python3"

// needPythonWebsockets skips the test unless Debian's python3 can import
// the websockets library.
func needPythonWebsockets(t *testing.T) {
	t.Helper()
	needBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, python, "-c", "import websockets; print(websockets.__version__)").CombinedOutput()
	if err != nil {
		skipMissingPeer(t, fmt.Sprintf("%s cannot import websockets (install python3-websockets): %v %s", python, err, out))
	}
	t.Logf("python websockets %s", strings.TrimSpace(string(out)))
}

// pyServerResult is one line py_echo_server.py prints per connection.
type pyServerResult struct {
	Path              string   `json:"path"`
	RequestExtensions string   `json:"request_extensions"`
	Extensions        []string `json:"extensions"`
	CloseCode         int      `json:"close_code"`
	CloseReason       string   `json:"close_reason"`
}

// pyClientResult is what py_client.py prints.
type pyClientResult struct {
	Error            string   `json:"error"`
	ExtensionsHeader string   `json:"extensions_header"`
	Extensions       []string `json:"extensions"`
	Echoed           int      `json:"echoed"`
	Mismatches       []string `json:"mismatches"`
	CloseCode        int      `json:"close_code"`
	CloseReason      string   `json:"close_reason"`
}

// startPyEchoServer starts testdata/py_echo_server.py and returns its
// address and a channel of the JSON lines it prints per connection.
func startPyEchoServer(t *testing.T) (string, <-chan string) {
	t.Helper()
	cmd := exec.Command(python, filepath.Join("testdata", "py_echo_server.py"))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	out := make(chan string, 10)
	portc := make(chan string, 1)
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			portc <- sc.Text()
		}
		for sc.Scan() {
			out <- sc.Text()
		}
		close(out)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-copied // the pipe ends when the process dies
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("py_echo_server.py stderr:\n%s", stderr.String())
		}
	})
	select {
	case p := <-portc:
		if _, err := strconv.Atoi(p); err != nil {
			t.Fatalf("py_echo_server.py printed %q, want a port", p)
		}
		return "127.0.0.1:" + p, out
	case <-copied:
		t.Fatalf("py_echo_server.py exited before printing its port; stderr:\n%s", stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("py_echo_server.py printed no port within 30s; stderr:\n%s", stderr.String())
	}
	return "", nil
}

// TestPythonWebsockets runs a client and a server from the websockets
// library, which nobody here wrote, through wsgate: permessage-deflate
// negotiated end to end, text and binary up to 100 KB intact, and the
// client's close code 4002 "bye" delivered to the server and echoed back.
func TestPythonWebsockets(t *testing.T) {
	needPythonWebsockets(t)
	backend, serverLines := startPyEchoServer(t)
	g := startGateway(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  py: {targets: ["http://%s"]}
routes:
  - match: {path_prefix: /py}
    upstream: py
`, backend))

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, filepath.Join("testdata", "py_client.py"), "ws://"+g.Addr+"/py/echo")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("py_client.py: %v\nstdout: %s\nstderr: %s", err, out, stderr.String())
	}
	var res pyClientResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("py_client.py printed %q: %v", out, err)
	}
	if res.Error != "" {
		t.Fatalf("py_client.py: %s\nstderr: %s", res.Error, stderr.String())
	}
	if !strings.HasPrefix(res.ExtensionsHeader, "permessage-deflate") || len(res.Extensions) != 1 || res.Extensions[0] != "permessage-deflate" {
		t.Errorf("client: Sec-WebSocket-Extensions %q, extensions %v; want permessage-deflate", res.ExtensionsHeader, res.Extensions)
	}
	if res.Echoed != 5 || len(res.Mismatches) > 0 {
		t.Errorf("client: %d of 5 messages echoed intact; mismatches %v", res.Echoed, res.Mismatches)
	}
	if res.CloseCode != 4002 || res.CloseReason != "bye" {
		t.Errorf("client: close reply %d %q, want 4002 \"bye\" echoed by the server", res.CloseCode, res.CloseReason)
	}

	var srv pyServerResult
	select {
	case line, ok := <-serverLines:
		if !ok {
			t.Fatal("py_echo_server.py exited")
		}
		if err := json.Unmarshal([]byte(line), &srv); err != nil {
			t.Fatalf("py_echo_server.py printed %q: %v", line, err)
		}
	case <-time.After(ioTimeout):
		t.Fatal("py_echo_server.py reported no finished connection")
	}
	if srv.Path != "/py/echo" {
		t.Errorf("server: path %q, want /py/echo", srv.Path)
	}
	if !strings.Contains(srv.RequestExtensions, "permessage-deflate") || len(srv.Extensions) != 1 || srv.Extensions[0] != "permessage-deflate" {
		t.Errorf("server: offered %q, negotiated %v; want permessage-deflate", srv.RequestExtensions, srv.Extensions)
	}
	if srv.CloseCode != 4002 || srv.CloseReason != "bye" {
		t.Errorf("server: close %d %q, want the client's 4002 \"bye\"", srv.CloseCode, srv.CloseReason)
	}
	// wsgate itself saw the extension on the session it relayed.
	g.waitLog(ioTimeout, "websocket opened with permessage-deflate", func(e map[string]any) bool {
		ext, _ := e["extensions"].(string)
		return e["msg"] == "websocket opened" && strings.HasPrefix(ext, "permessage-deflate")
	})
}
