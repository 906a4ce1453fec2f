package integration

import (
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// bigBody is the size of each upload and download in TestLargeBodiesFlatMemory.
const bigBody = 1 << 30

// maxProxyRSS is the peak resident memory the proxy may reach while 1 GiB
// bodies stream through it both ways.
const maxProxyRSS = 64 << 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// pattern is an endless deterministic byte stream with period 251: the
// bodies are made on the fly and checked by CRC, never held in memory.
type pattern struct{ off int64 }

// patternBlock holds 256 periods, so any offset's next 64 KiB - 251 bytes
// are one slice of it (copying beats a per-byte loop under -race).
var patternBlock = func() []byte {
	b := make([]byte, 251*256)
	for i := range b {
		b[i] = byte(i * 7 % 251)
	}
	return b
}()

func (p *pattern) Read(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		n += copy(b[n:], patternBlock[(p.off+int64(n))%251:])
	}
	p.off += int64(n)
	return n, nil
}

func patternCRC(n int64) uint32 {
	h := crc32.New(castagnoli)
	io.Copy(h, io.LimitReader(&pattern{}, n))
	return h.Sum32()
}

// TestLargeBodiesFlatMemory streams a 1 GiB upload and a 1 GiB download,
// each with Content-Length and chunked, and a 64 MiB WebSocket message
// through the real (non-race) binary and checks the proxy's peak RSS
// (VmHWM) stays under 64 MiB: no body or message is buffered whole.
func TestLargeBodiesFlatMemory(t *testing.T) {
	needBinary(t)
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/upload":
			h := crc32.New(castagnoli)
			n, err := io.Copy(h, r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			fmt.Fprintf(w, "%d %d", n, h.Sum32())
		case "/ws":
			// Hash one message as it streams in and answer with its CRC.
			up := websocket.Upgrader{}
			c, err := up.Upgrade(w, r, nil)
			if err != nil {
				return
			}
			defer c.Close()
			_, rd, err := c.NextReader()
			if err != nil {
				return
			}
			h := crc32.New(castagnoli)
			n, _ := io.Copy(h, rd)
			c.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, "%d %d", n, h.Sum32()))
			c.ReadMessage() // until the client closes
		case "/download":
			if r.URL.Query().Get("chunked") == "" {
				w.Header().Set("Content-Length", strconv.Itoa(bigBody))
			}
			io.Copy(w, io.LimitReader(&pattern{}, bigBody))
		}
	}))
	cfg := fmt.Sprintf(`
listeners:
  - addr: 127.0.0.1:0
upstreams:
  app:
    targets: [http://%s]
routes:
  - match: {path_prefix: /}
    upstream: app
    websocket: {max_message_size: 128MiB}
limits:
  request_body: 2GiB
`, backend)
	path := filepath.Join(t.TempDir(), "wsgate.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	g := startGatewayBin(t, wsgatePlainBin, path, nil)
	wantCRC := patternCRC(bigBody)
	client := &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{DisableCompression: true}}

	for _, chunked := range []bool{false, true} {
		name := map[bool]string{false: "content-length", true: "chunked"}[chunked]
		t.Run("upload/"+name, func(t *testing.T) {
			req, err := http.NewRequest("POST", "http://"+g.Addr+"/upload", io.LimitReader(&pattern{}, bigBody))
			if err != nil {
				t.Fatal(err)
			}
			if !chunked {
				req.ContentLength = bigBody
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if want := fmt.Sprintf("%d %d", bigBody, wantCRC); resp.StatusCode != 200 || string(body) != want {
				t.Fatalf("upload: %d %q, want 200 %q", resp.StatusCode, body, want)
			}
		})
		t.Run("download/"+name, func(t *testing.T) {
			url := "http://" + g.Addr + "/download"
			if chunked {
				url += "?chunked=1"
			}
			resp, err := client.Get(url)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if chunked != (resp.ContentLength < 0) {
				t.Errorf("ContentLength %d: framing not preserved", resp.ContentLength)
			}
			h := crc32.New(castagnoli)
			n, err := io.Copy(h, resp.Body)
			if err != nil || n != bigBody || h.Sum32() != wantCRC {
				t.Fatalf("download: %d bytes crc %x err %v, want %d crc %x", n, h.Sum32(), err, bigBody, wantCRC)
			}
		})
	}
	t.Run("websocket/64MiB-message", func(t *testing.T) {
		const size = 64 << 20
		c, _, err := (&websocket.Dialer{HandshakeTimeout: 5 * time.Second}).Dial("ws://"+g.Addr+"/ws", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		w, err := c.NextWriter(websocket.BinaryMessage)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(w, io.LimitReader(&pattern{}, size)); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		_, got, err := c.ReadMessage()
		if want := fmt.Sprintf("%d %d", size, patternCRC(size)); err != nil || string(got) != want {
			t.Fatalf("backend saw %q (err %v), want %q", got, err, want)
		}
		c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
	})
	hwm := peakRSS(t, g.cmd.Process.Pid)
	t.Logf("proxy peak RSS (VmHWM) after 4 GiB of HTTP bodies and a 64 MiB WebSocket message: %.1f MiB", float64(hwm)/(1<<20))
	if hwm > maxProxyRSS {
		t.Errorf("proxy peak RSS %d MiB, want under %d MiB", hwm>>20, maxProxyRSS>>20)
	}
}

// peakRSS reads VmHWM (peak resident set size) of a process, in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("parse %q: %v", line, err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc status")
	return 0
}
