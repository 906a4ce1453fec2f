package proxy

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/wsgate/wsgate/internal/netpoll"
)

// ppPair accepts one connection through a PROXY protocol listener that
// trusts trusted, after the client wrote what.
func ppPair(t *testing.T, trusted []netip.Prefix, what []byte) (*ppConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	pl := ProxyProtocolListener(netpoll.Listener(ln), func() []netip.Prefix { return trusted }, slog.New(slog.DiscardHandler))
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	if _, err := client.Write(what); err != nil {
		t.Fatal(err)
	}
	c, err := pl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*ppConn), client
}

func header(t *testing.T, version byte, src string) []byte {
	t.Helper()
	h := proxyproto.HeaderProxyFromAddrs(version, net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src)),
		net.TCPAddrFromAddrPort(netip.MustParseAddrPort("10.0.0.1:443")))
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestProxyProtocolListener: from a trusted peer, a v1 or v2 header's
// source is the client's address and the bytes after it arrive intact
// (and, once read, the relay may use the TCP connection under it); a
// connection without a header keeps its peer address; from an untrusted
// peer a header closes the connection; a LOCAL header keeps the peer.
func TestProxyProtocolListener(t *testing.T) {
	loopback := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	request := []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	for _, c := range []struct {
		name    string
		trusted []netip.Prefix
		send    []byte
		remote  string // "" the peer's
		refused bool
	}{
		{"v1 trusted", loopback, append(header(t, 1, "203.0.113.7:51000"), request...), "203.0.113.7:51000", false},
		{"v2 trusted", loopback, append(header(t, 2, "[2001:db8::7]:51000"), request...), "[2001:db8::7]:51000", false},
		{"none trusted", loopback, request, "", false},
		{"none untrusted", nil, request, "", false},
		{"v1 untrusted", nil, append(header(t, 1, "203.0.113.7:51000"), request...), "", true},
		{"v2 untrusted", nil, append(header(t, 2, "203.0.113.7:51000"), request...), "", true},
		{"v2 local", loopback, append(func() []byte {
			b, _ := (&proxyproto.Header{Version: 2, Command: proxyproto.LOCAL}).Format()
			return b
		}(), request...), "", false},
		{"v1 garbage", loopback, append([]byte("PROXY TCP4 not-an-address\r\n"), request...), "", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			pc, client := ppPair(t, c.trusted, c.send)
			want := c.remote
			if want == "" {
				want = client.LocalAddr().String()
			}
			got := make([]byte, len(request))
			_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err := io.ReadFull(pc, got)
			if c.refused {
				if err == nil {
					t.Fatalf("read %q, want the connection refused", got)
				}
				_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
				if n, err := client.Read(make([]byte, 1)); n != 0 || err == nil {
					t.Errorf("client: read %d, %v; want the connection closed", n, err)
				}
				return
			}
			if err != nil || !bytes.Equal(got, request) {
				t.Fatalf("read %q, %v; want the request intact", got, err)
			}
			if ra := pc.RemoteAddr().String(); ra != want {
				t.Errorf("RemoteAddr = %s, want %s", ra, want)
			}
			if tc, ok := netpoll.TCPConn(pc); !ok || tc == nil {
				t.Error("netpoll.TCPConn does not see the TCP connection under a drained PROXY connection")
			}
		})
	}
}

// TestProxyProtocolUnwrapWaits: bytes read past the header and not yet
// returned keep the relay reading through the wrapper.
func TestProxyProtocolUnwrapWaits(t *testing.T) {
	pc, _ := ppPair(t, []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
		append(header(t, 1, "198.51.100.2:1000"), "hello"...))
	if pc.RemoteAddr().String() != "198.51.100.2:1000" {
		t.Fatalf("RemoteAddr = %s", pc.RemoteAddr())
	}
	// The header and "hello" came in one segment: "hello" is held, and
	// Unwrap waits until it has been read.
	if pc.Unwrap() != nil {
		t.Skip("the header and the bytes after it arrived apart") // loopback normally delivers them together
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(pc, got); err != nil || string(got) != "hello" {
		t.Fatalf("read %q, %v", got, err)
	}
	if pc.Unwrap() == nil {
		t.Error("Unwrap is still nil after every held byte was read")
	}
}
