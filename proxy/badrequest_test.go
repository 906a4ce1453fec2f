package proxy

import (
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/wsgate/wsgate/routes"
)

// logLines returns the lines of logs whose msg is one of msgs.
func logLines(logs string, msgs ...string) []string {
	var out []string
	for line := range strings.SplitSeq(logs, "\n") {
		for _, m := range msgs {
			if strings.Contains(line, " msg="+m+" ") || strings.Contains(line, ` msg="`+m+`" `) {
				out = append(out, line)
			}
		}
	}
	return out
}

// TestBadRequestLoggedOnce: a request fasthttp cannot read is one log
// line in wsgate's words, not that line and fasthttp's own.
func TestBadRequestLoggedOnce(t *testing.T) {
	backend, reached := countingBackend(t)
	for _, tc := range []struct {
		name, req string
		status    int
		want      string
	}{
		{"malformed request line", "GARBAGE\r\n\r\n", 400,
			`status=400 client=127.0.0.1:`, // then the port
		},
		{"head over header_bytes", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 8<<10) + "\r\n\r\n", 431,
			`error="request head larger than limits.header_bytes (4096 bytes)"`},
		{"duplicate Content-Length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400,
			`error="malformed request head: `},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startProxyWith(t, proxySetup{Server: ServerOptions{HeaderBytes: 4096}}, wsRoute(testUpstream(backend)))
			resps, _, c := rawExchange(t, p.addr, tc.req, 1)
			if got := resps[0].StatusCode; got != tc.status {
				t.Errorf("status %d, want %d", got, tc.status)
			}
			// fasthttp logs what ended a connection before closing it:
			// once it is closed, every line is in.
			if !closedOrReset(t, c) {
				t.Fatal("connection left open")
			}
			lines := logLines(p.logs.String(), "bad request", "fasthttp")
			if len(lines) != 1 {
				t.Fatalf("%d log lines, want 1:\n%s", len(lines), strings.Join(lines, "\n"))
			}
			t.Log(lines[0])
			if !strings.Contains(lines[0], `level=INFO msg="bad request" `) || !strings.Contains(lines[0], tc.want) {
				t.Errorf("log line %q, want a bad request line with %q", lines[0], tc.want)
			}
			if strings.Contains(lines[0], "fasthttp") || strings.Contains(lines[0], "buffer size") {
				t.Errorf("log line %q speaks fasthttp's words", lines[0])
			}
		})
	}
	if n := reached.Load(); n != 0 {
		t.Errorf("%d bad requests reached the backend", n)
	}
}

// TestBadRequestWording pins the wording of the requests fasthttp
// rejects while parsing.
func TestBadRequestWording(t *testing.T) {
	backend, _ := countingBackend(t)
	p := startProxyWith(t, proxySetup{Server: ServerOptions{HeaderBytes: 4096}}, wsRoute(testUpstream(backend)))
	_, _, c := rawExchange(t, p.addr, "GARBAGE\r\n\r\n", 1)
	closedOrReset(t, c)
	if got := logLines(p.logs.String(), "bad request"); len(got) != 1 || !strings.Contains(got[0], `error="malformed request head: cannot find http request method"`) {
		t.Errorf("log lines %q, want one with error=\"malformed request head: cannot find http request method\"", got)
	}
}

// TestFasthttpMessagesKept: fasthttp's other messages still reach the
// log, and so does a connection error wsgate did not log itself.
func TestFasthttpMessagesKept(t *testing.T) {
	table, err := routes.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	sl := &serverLog{h: New(Options{Routes: table, Logger: slog.New(slog.NewTextHandler(logs, nil))})}
	local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
	remote := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2}
	sl.Printf("The number of connections from %s exceeds MaxConnsPerIP=%d", "127.0.0.1", 10)
	sl.Printf(serveConnError, local, remote, "something else")
	lines := logLines(logs.String(), "fasthttp")
	if len(lines) != 2 || !strings.Contains(lines[0], "MaxConnsPerIP=10") || !strings.Contains(lines[1], "something else") {
		t.Errorf("fasthttp lines %q, want both messages", lines)
	}
}
