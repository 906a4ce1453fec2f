package proxy

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/wsgate/wsgate/internal/netpoll"
)

// selfSigned returns a certificate for 127.0.0.1 and localhost.
func selfSigned(t testing.TB) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// tlsListener wraps a listener as cmd/wsgate's listener generations do:
// raw socket I/O under TLS, the config read per handshake.
func tlsListener(cert tls.Certificate) func(net.Listener) net.Listener {
	conf := &tls.Config{Certificates: []tls.Certificate{cert}}
	return func(ln net.Listener) net.Listener {
		return tls.NewListener(netpoll.Listener(ln), &tls.Config{
			GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return conf, nil },
		})
	}
}

// TestPlainHTTPOnTLSListener: plain HTTP sent to a TLS listener gets a
// 400 saying the port speaks HTTPS, and one log line; TLS clients, and
// WebSockets over TLS, work as before.
func TestPlainHTTPOnTLSListener(t *testing.T) {
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "" {
			echoWS(t).ServeHTTP(w, r)
			return
		}
		io.WriteString(w, "hello over "+r.Header.Get("X-Forwarded-Proto"))
	}))
	var p *testProxy
	// After the proxy's cleanup, which waits for its connections to close
	// (fasthttp logs what ended one before closing it): nothing else was
	// logged about the plain HTTP requests.
	t.Cleanup(func() {
		if l := logLines(p.logs.String(), "fasthttp", "bad request", `"tls handshake failed"`); len(l) != 0 {
			t.Errorf("other lines logged: %q", l)
		}
	})
	p = startProxyWith(t, proxySetup{Listener: tlsListener(selfSigned(t))}, wsRoute(testUpstream(backend)))

	for _, tc := range []struct {
		name, req string
		body      string
	}{
		{"GET", "GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n", plainHTTPBody},
		// More than crypto/tls reads at once: the rest is read and
		// dropped, so that the close does not reset the answer away.
		{"GET with a large head", "GET /x HTTP/1.1\r\nHost: example.com\r\nCookie: " + strings.Repeat("c", 12<<10) + "\r\n\r\n", plainHTTPBody},
		{"HEAD", "HEAD / HTTP/1.1\r\nHost: example.com\r\n\r\n", ""},
		{"DELETE", "DELETE / HTTP/1.1\r\nHost: example.com\r\n\r\n", plainHTTPBody},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(logLines(p.logs.String(), "plain HTTP on TLS listener"))
			c, err := net.Dial("tcp", p.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := io.WriteString(c, tc.req); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			raw, err := io.ReadAll(c) // the answer, then the server's FIN
			if err != nil {
				t.Fatalf("read: %v (got %q)", err, raw)
			}
			method := strings.Fields(tc.req)[0]
			resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(string(raw))), &http.Request{Method: method})
			if err != nil {
				t.Fatalf("read response: %v (got %q)", err, raw)
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 400 || string(b) != tc.body || !resp.Close {
				t.Errorf("answer %d %q (close %v), want 400 %q and Connection: close", resp.StatusCode, b, resp.Close, tc.body)
			}
			if tc.body != "" && !strings.Contains(string(b), "This port speaks HTTPS") {
				t.Errorf("body %q does not say the port speaks HTTPS", b)
			}
			if n := len(logLines(p.logs.String(), "plain HTTP on TLS listener")); n != before+1 {
				t.Errorf("%d plain HTTP lines, want %d", n, before+1)
			}
		})
	}

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	defer client.CloseIdleConnections()
	resp, err := client.Get("https://" + p.addr + "/")
	if err != nil {
		t.Fatalf("HTTPS: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "hello over https" {
		t.Errorf("HTTPS: %d %q, want 200 \"hello over https\"", resp.StatusCode, b)
	}

	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second, TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	ws, _, err := d.Dial("wss://"+p.addr+"/ws", nil)
	if err != nil {
		t.Fatalf("wss: %v", err)
	}
	defer ws.Close()
	if err := ws.WriteMessage(websocket.TextMessage, []byte("ping over tls")); err != nil {
		t.Fatal(err)
	}
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	if mt, msg, err := ws.ReadMessage(); err != nil || mt != websocket.TextMessage || string(msg) != "ping over tls" {
		t.Errorf("wss echo: %d %q %v", mt, msg, err)
	}
}
