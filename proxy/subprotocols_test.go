package proxy

import (
	"bufio"
	"net"
	"net/http"
	"strings"
	"testing"
)

// TestSubprotocolAllowList: the client's offer reaches the backend
// filtered to the route's allow-list, in the client's order; an offer
// with nothing allowed gets 400 before the backend is dialled, or, with
// require_subprotocol off, goes on without a subprotocol.
func TestSubprotocolAllowList(t *testing.T) {
	offers := make(chan string, 16)
	backend := startWSRawBackend(t, func(c net.Conn, br *bufio.Reader, req *http.Request) {
		offer := req.Header.Values("Sec-WebSocket-Protocol")
		got := ""
		if len(offer) > 0 {
			got = offer[0]
			if len(offer) > 1 {
				got = "several lines"
			}
		}
		offers <- got
		extra := ""
		if got != "" {
			// Choose the first protocol offered, as servers do.
			first, _, _ := strings.Cut(got, ",")
			extra = "Sec-WebSocket-Protocol: " + first + "\r\n"
		}
		_ = write101(c, req, extra, nil)
		_, _ = br.ReadByte() // hold the connection until the proxy closes it
	})
	for _, tt := range []struct {
		name      string
		require   bool
		offer     string // the client's lines, "\n"-separated
		status    int
		toBackend string // what the backend saw; "-": not dialled
	}{
		{"allowed", true, "chat.v2", 101, "chat.v2"},
		{"filtered in the client's order", true, "chat.v3, x, chat.v2", 101, "chat.v3, chat.v2"},
		{"several lines", true, "x\nchat.v2\nchat.v3", 101, "chat.v2, chat.v3"},
		{"nothing allowed", true, "x, y", 400, "-"},
		{"no offer", true, "", 400, "-"},
		{"nothing allowed, not required", false, "x", 101, ""},
		{"no offer, not required", false, "", 101, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := wsRoute(testUpstream(backend))
			r.WebSocket.Subprotocols = []string{"chat.v2", "chat.v3"}
			r.WebSocket.RequireSubprotocol = tt.require
			p := startProxy(t, r)
			req := "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
				"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
			if tt.offer != "" {
				for _, line := range strings.Split(tt.offer, "\n") {
					req += "Sec-WebSocket-Protocol: " + line + "\r\n"
				}
			}
			resp, _ := rawStatus(t, p.addr, req+"\r\n")
			if resp.StatusCode != tt.status {
				t.Fatalf("offer %q: status %d, want %d", tt.offer, resp.StatusCode, tt.status)
			}
			select {
			case got := <-offers:
				if tt.toBackend == "-" {
					t.Fatalf("offer %q: the backend was dialled (saw %q), want a refusal before", tt.offer, got)
				}
				if got != tt.toBackend {
					t.Errorf("offer %q: the backend saw %q, want %q", tt.offer, got, tt.toBackend)
				}
			default:
				if tt.toBackend != "-" {
					t.Errorf("offer %q: the backend saw no handshake", tt.offer)
				}
			}
		})
	}
}
