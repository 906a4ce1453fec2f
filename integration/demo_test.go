package integration

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"gopkg.in/yaml.v3"
)

// startExample runs wsgate on the repository's config.example.yaml, with
// the addresses rewritten for a test: every route listener on
// 127.0.0.1:0, and the demo listener on a port that was free a moment ago
// (the demo upstream needs its real port before wsgate starts), with the
// upstream targets that pointed at the demo listener moved along.
func startExample(t *testing.T) *gw {
	t.Helper()
	needBinary(t)
	data, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatalf("config.example.yaml: %v (the repository must ship it)", err)
	}
	out, err := rewriteExample(data, freeAddr(t))
	if err != nil {
		t.Fatalf("rewrite %s: %v", examplePath, err)
	}
	path := filepath.Join(t.TempDir(), "example.yaml")
	writeFile(t, path, out)
	g := startGatewayFile(t, path, nil)
	if g.Addr == "" {
		t.Fatalf("config.example.yaml has no route listener: %+v", g.Listeners)
	}
	return g
}

// trailingPort finds the port at the end of an address or URL, also
// inside ${VAR:-host:port}.
var trailingPort = regexp.MustCompile(`:(\d+)\}?/?$`)

// rewriteExample moves the example's listeners to test addresses as
// startExample describes, and makes relative file paths absolute (the
// rewritten file lives in a temp dir).
func rewriteExample(data []byte, demoAddr string) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil, errors.New("empty document")
	}
	root := doc.Content[0]
	listeners := mapValue(root, "listeners")
	if listeners == nil || listeners.Kind != yaml.SequenceNode {
		return nil, errors.New("no listeners list")
	}
	demoPort := ""
	for _, l := range listeners.Content {
		addr := mapValue(l, "addr")
		if addr == nil {
			return nil, fmt.Errorf("line %d: listener without addr", l.Line)
		}
		if b := mapValue(l, "builtin"); b != nil && b.Value == "demo" {
			if demoPort != "" {
				return nil, errors.New("more than one demo listener")
			}
			m := trailingPort.FindStringSubmatch(addr.Value)
			if m == nil {
				return nil, fmt.Errorf("line %d: demo listener address %q has no port", addr.Line, addr.Value)
			}
			demoPort = m[1]
			addr.Value, addr.Style = demoAddr, 0
			continue
		}
		addr.Value, addr.Style = "127.0.0.1:0", 0
	}
	if demoPort == "" {
		return nil, errors.New("no listener with builtin: demo")
	}
	if adm := mapValue(root, "admin"); adm != nil {
		if addr := mapValue(adm, "addr"); addr != nil {
			addr.Value, addr.Style = "127.0.0.1:0", 0 // never the fixed 9901 in tests
		}
	}
	moved := 0
	if ups := mapValue(root, "upstreams"); ups != nil && ups.Kind == yaml.MappingNode {
		for i := 1; i < len(ups.Content); i += 2 {
			targets := mapValue(ups.Content[i], "targets")
			if targets == nil {
				continue
			}
			for _, tg := range targets.Content {
				if m := trailingPort.FindStringSubmatch(tg.Value); m != nil && m[1] == demoPort {
					tg.Value, tg.Style = "http://"+demoAddr, 0
					moved++
				}
			}
		}
	}
	if moved == 0 {
		return nil, fmt.Errorf("no upstream target points at the demo listener's port %s", demoPort)
	}
	dir, err := filepath.Abs(filepath.Dir(examplePath))
	if err != nil {
		return nil, err
	}
	absPaths(root, dir)
	return yaml.Marshal(&doc)
}

// mapValue returns the value of key in mapping n, or nil.
func mapValue(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// absPaths makes the relative file paths under the keys cert, key, ca and
// root absolute against dir.
func absPaths(n *yaml.Node, dir string) {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			switch k.Value {
			case "cert", "key", "ca", "root":
				if v.Kind == yaml.ScalarNode && v.Value != "" && !filepath.IsAbs(v.Value) && !strings.Contains(v.Value, "${") {
					v.Value = filepath.Join(dir, v.Value)
				}
			}
			absPaths(v, dir)
		}
	case yaml.SequenceNode:
		for _, c := range n.Content {
			absPaths(c, dir)
		}
	}
}

func TestExampleDemo(t *testing.T) {
	g := startExample(t)
	base := "http://" + g.Addr

	t.Run("page", func(t *testing.T) {
		resp, body := get(t, httpClient(), base+"/", nil)
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, "<title>wsgate demo</title>") {
			t.Fatalf("GET /: status %d, body %.200q", resp.StatusCode, body)
		}
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
			t.Errorf("GET /: Content-Type %q, want text/html", ct)
		}
	})

	t.Run("healthz", func(t *testing.T) {
		resp, body := get(t, httpClient(), base+"/healthz", nil)
		if resp.StatusCode != http.StatusOK || body != "ok" {
			t.Errorf("GET /healthz: %d %q, want 200 \"ok\"", resp.StatusCode, body)
		}
	})

	t.Run("websocket echo", func(t *testing.T) {
		d := &websocket.Dialer{HandshakeTimeout: ioTimeout, Subprotocols: []string{"echo"}}
		c := dialWS(t, d, "ws://"+g.Addr+"/echo", nil)
		if c.Subprotocol() != "echo" {
			t.Errorf("subprotocol %q, want echo", c.Subprotocol())
		}
		echoOnce(t, c, websocket.TextMessage, []byte("hello wsgate"))
		echoOnce(t, c, websocket.BinaryMessage, make([]byte, 70<<10))
		_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(ioTimeout))
		if ce := readClose(t, c); ce.Code != websocket.CloseNormalClosure {
			t.Errorf("close reply %d %q, want 1000", ce.Code, ce.Text)
		}
	})

	t.Run("server-sent events", func(t *testing.T) {
		// Read the first event only: the stream lasts five seconds.
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/events", nil)
		resp, err := httpClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
			t.Errorf("Content-Type %q, want text/event-stream", ct)
		}
		line, err := bufio.NewReader(resp.Body).ReadString('\n')
		if err != nil || line != "data: tick 1\n" {
			t.Errorf("first event line %q (%v), want \"data: tick 1\"", line, err)
		}
	})

	t.Run("curl", func(t *testing.T) {
		curl := needCurl(t)
		out := runCurl(t, curl, "--silent", "--show-error", "--fail", "--max-time", "10", "--noproxy", "*", base+"/")
		if !strings.Contains(out, "<title>wsgate demo</title>") {
			t.Errorf("curl %s/: not the demo page:\n%.300s", base, out)
		}
	})

	t.Run("chromium", func(t *testing.T) {
		dom := chromiumDOM(t, base+"/")
		if !strings.Contains(dom, "echo ok: hello wsgate") {
			t.Errorf("the page's WebSocket echo did not work in Chromium; DOM:\n%s", dom)
		}
	})
}

// chromiumDOM loads url in headless Debian Chromium, lets the page run
// for up to five seconds of virtual time, and returns the DOM. It skips
// the test when Chromium is not installed.
func chromiumDOM(t *testing.T, url string) string {
	t.Helper()
	const bin = "/usr/bin/chromium"
	if _, err := os.Stat(bin); err != nil {
		skipMissingPeer(t, "chromium not installed")
	}
	profile := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--no-proxy-server",
		"--user-data-dir="+profile, "--virtual-time-budget=5000", "--dump-dom", url)
	// Chromium writes caches and crash dumps under HOME.
	cmd.Env = append(cmd.Environ(), "HOME="+profile)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if ctx.Err() != nil {
		t.Fatalf("chromium did not finish within 90s; stderr:\n%s", stderr.String())
	}
	if err != nil {
		t.Fatalf("chromium: %v; stderr:\n%s", err, stderr.String())
	}
	return string(out)
}
