package proxy

import (
	"crypto/tls"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestReview14TLSAlertNotMalformedRequest: a TLS client that rejects
// wsgate's certificate (a self-signed one, the usual case) sends an
// alert; crypto/tls reports it as a *net.OpError "remote error: tls: bad
// certificate", which isTLSHandshakeError does not recognise (it is not a
// tls.AlertError, and its text starts with "remote error: "). requestError
// then writes a 400 on a connection with no TLS session and logs, at INFO,
// `bad request … error="malformed request: remote error: tls: bad
// certificate"`: a handshake failure reported as a malformed HTTP request,
// once per connection of every client that distrusts the certificate.
func TestReview14TLSAlertNotMalformedRequest(t *testing.T) {
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	var p *testProxy
	// Runs after the proxy's cleanup, which waits for its connections.
	t.Cleanup(func() {
		if l := logLines(p.logs.String(), "bad request"); len(l) != 0 {
			t.Errorf("a TLS handshake the client refused is logged as a bad request: %q", l)
		}
	})
	p = startProxyWith(t, proxySetup{Listener: tlsListener(selfSigned(t))}, wsRoute(testUpstream(backend)))
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", p.addr, &tls.Config{ServerName: "localhost"}) // verifies: unknown CA
	if err == nil {
		c.Close()
		t.Fatal("handshake succeeded against a self-signed certificate")
	}
	if !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("handshake error %v, want a certificate error", err)
	}
}
