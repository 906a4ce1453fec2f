package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// tlsFixture is wsgate with an HTTPS listener serving a.test and b.test
// from certificates made at run time, in front of an echo backend, plus a
// demo listener reached through the route /demo.
type tlsFixture struct {
	g        *gw
	ca       *testCA
	caFile   string
	certDir  string
	backend  *wsBackend
	httpsURL string // https://a.test:PORT, to be dialled through dial
}

func startTLSFixture(t *testing.T) *tlsFixture {
	t.Helper()
	needBinary(t)
	f := &tlsFixture{ca: newTestCA(t), certDir: t.TempDir()}
	f.caFile = filepath.Join(f.certDir, "ca.pem")
	writeFile(t, f.caFile, f.ca.pemOut)
	for _, name := range []string{"a.test", "b.test"} {
		cert, key := f.ca.issue(t, name, name, 100)
		writeFile(t, filepath.Join(f.certDir, name+".pem"), cert)
		writeFile(t, filepath.Join(f.certDir, name+".key"), key)
	}
	f.backend = newWSBackend()
	backendAddr := f.backend.start(t)
	demoAddr := freeAddr(t)
	f.g = startGateway(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
    tls:
      certificates:
        - {cert: %[1]s, key: %[2]s}
        - {cert: %[3]s, key: %[4]s}
  - addr: %[5]s
    builtin: demo
upstreams:
  app: {targets: ["http://%[6]s"]}
  demo: {targets: ["http://%[5]s"]}
routes:
  - match: {path_prefix: /demo}
    upstream: demo
    strip_prefix: true
  - match: {path_prefix: /}
    upstream: app
`,
		yamlQuote(filepath.Join(f.certDir, "a.test.pem")), yamlQuote(filepath.Join(f.certDir, "a.test.key")),
		yamlQuote(filepath.Join(f.certDir, "b.test.pem")), yamlQuote(filepath.Join(f.certDir, "b.test.key")),
		demoAddr, backendAddr))
	if !f.g.Listeners[0].TLS {
		t.Fatalf("listener %+v is not logged as TLS", f.g.Listeners[0])
	}
	_, port, _ := net.SplitHostPort(f.g.Addr)
	f.httpsURL = "https://a.test:" + port
	return f
}

// dial connects to the TLS listener whatever host name the URL has.
func (f *tlsFixture) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	return (&net.Dialer{Timeout: ioTimeout}).DialContext(ctx, "tcp", f.g.Addr)
}

// client returns an HTTPS client that trusts the test CA and connects to
// the listener; the URL's host is the SNI name.
func (f *tlsFixture) client() *http.Client {
	return &http.Client{
		Timeout: ioTimeout,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: f.ca.pool},
			DialContext:       f.dial,
			DisableKeepAlives: true, // a new handshake per request
		},
	}
}

// servedCert makes a new TLS handshake with SNI sni and returns the leaf
// certificate the listener chose, verified against the test CA.
func (f *tlsFixture) servedCert(t *testing.T, sni string) *x509.Certificate {
	t.Helper()
	return f.handshake(t, &tls.Config{ServerName: sni, RootCAs: f.ca.pool})
}

// defaultCert is servedCert for an SNI ("" for none) that no certificate
// names: it only looks at the certificate, which cannot verify.
func (f *tlsFixture) defaultCert(t *testing.T, sni string) *x509.Certificate {
	t.Helper()
	return f.handshake(t, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
}

func (f *tlsFixture) handshake(t *testing.T, cfg *tls.Config) *x509.Certificate {
	t.Helper()
	sni := cfg.ServerName
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: ioTimeout}, "tcp", f.g.Addr, cfg)
	if err != nil {
		t.Fatalf("TLS handshake with SNI %q: %v", sni, err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0]
}

// waitForCN polls new handshakes for sni until the certificate's common
// name is want.
func (f *tlsFixture) waitForCN(t *testing.T, sni, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	poll := time.NewTicker(50 * time.Millisecond) // one handshake per tick
	defer poll.Stop()
	for {
		got := f.servedCert(t, sni).Subject.CommonName
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("SNI %s: certificate CN %q after %v, want %q", sni, got, timeout, want)
		}
		<-poll.C
	}
}

// dialWSS opens a WebSocket over TLS to wss://a.test/path.
func (f *tlsFixture) dialWSS(t *testing.T, path string) *websocket.Conn {
	t.Helper()
	d := &websocket.Dialer{
		HandshakeTimeout: ioTimeout,
		TLSClientConfig:  &tls.Config{RootCAs: f.ca.pool},
		NetDialContext:   f.dial,
	}
	return dialWS(t, d, "wss://a.test"+path, nil)
}

func TestTLS(t *testing.T) {
	f := startTLSFixture(t)

	t.Run("SNI picks the certificate", func(t *testing.T) {
		c := f.client()
		for _, name := range []string{"a.test", "b.test"} {
			resp, body := get(t, c, "https://"+name+"/http/sni", nil)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("%s: status %d, body %q", name, resp.StatusCode, body)
			}
			leaf := resp.TLS.PeerCertificates[0]
			if leaf.Subject.CommonName != name || !slices.Contains(leaf.DNSNames, name) {
				t.Errorf("SNI %s: got certificate CN %q, names %v", name, leaf.Subject.CommonName, leaf.DNSNames)
			}
			r := decodeEcho(t, body)
			if got := r.Header.Get("X-Forwarded-Proto"); got != "https" {
				t.Errorf("backend X-Forwarded-Proto = %q, want https", got)
			}
			if got := r.Header.Get("X-Forwarded-Host"); got != name {
				t.Errorf("backend X-Forwarded-Host = %q, want %q", got, name)
			}
		}
		if cn := f.defaultCert(t, "").Subject.CommonName; cn != "a.test" {
			t.Errorf("no SNI: certificate CN %q, want the first pair, a.test", cn)
		}
		if cn := f.defaultCert(t, "other.test").Subject.CommonName; cn != "a.test" {
			t.Errorf("unknown SNI: certificate CN %q, want the first pair, a.test", cn)
		}
	})

	t.Run("wss echo", func(t *testing.T) {
		c := f.dialWSS(t, "/ws/tls")
		echoOnce(t, c, websocket.TextMessage, []byte("over TLS"))
		echoOnce(t, c, websocket.BinaryMessage, make([]byte, 100<<10))
	})

	t.Run("curl over HTTPS", func(t *testing.T) {
		curl := needCurl(t)
		_, port, _ := net.SplitHostPort(f.g.Addr)
		base := []string{"--silent", "--show-error", "--fail", "--max-time", "10", "--noproxy", "*",
			"--cacert", f.caFile, "--resolve", "a.test:" + port + ":127.0.0.1"}
		out := runCurl(t, curl, append(base, f.httpsURL+"/demo/")...)
		if !strings.Contains(out, "<title>wsgate demo</title>") {
			t.Errorf("curl %s/demo/: not the demo page:\n%.300s", f.httpsURL, out)
		}
		out = runCurl(t, curl, append(base, f.httpsURL+"/http/curl")...)
		if r := decodeEcho(t, out); r.Header.Get("X-Forwarded-Proto") != "https" {
			t.Errorf("backend X-Forwarded-Proto = %q via curl, want https", r.Header.Get("X-Forwarded-Proto"))
		}
	})

	t.Run("SIGHUP reload", func(t *testing.T) {
		old := f.dialWSS(t, "/ws/before-reload")
		echoOnce(t, old, websocket.TextMessage, []byte("before"))

		// Same sizes, same mtime, same inode: the directory watcher sees
		// nothing to reload, so only SIGHUP can bring v2 in.
		cert, key := f.ca.issue(t, "a.test", "v2", 200)
		overwriteUnseen(t, filepath.Join(f.certDir, "a.test.pem"), cert)
		overwriteUnseen(t, filepath.Join(f.certDir, "a.test.key"), key)
		reloads := f.g.countLogs("certificates reloaded")
		f.g.signal(syscall.SIGHUP)

		f.waitForCN(t, "a.test", "v2", 10*time.Second)
		if leaf := f.servedCert(t, "a.test"); leaf.SerialNumber.Int64() != 200 {
			t.Errorf("a.test serial %v after reload, want 200", leaf.SerialNumber)
		}
		if cn := f.servedCert(t, "b.test").Subject.CommonName; cn != "b.test" {
			t.Errorf("b.test: CN %q after reloading a.test, want b.test", cn)
		}
		// The store swaps the certificates before it logs: wait for the line.
		f.g.waitLog(ioTimeout, "certificates reloaded after SIGHUP", func(map[string]any) bool {
			return f.g.countLogs("certificates reloaded") > reloads
		})
		if n := f.g.countLogs("certificates reloaded"); n != reloads+1 {
			t.Errorf("%d \"certificates reloaded\" lines after SIGHUP, want %d", n, reloads+1)
		}
		// The session opened under v1 is untouched.
		echoOnce(t, old, websocket.TextMessage, []byte("after"))
		resp, body := get(t, f.client(), "https://a.test/http/after-reload", nil)
		if resp.StatusCode != http.StatusOK || resp.TLS.PeerCertificates[0].Subject.CommonName != "v2" {
			t.Errorf("HTTPS after reload: status %d, CN %q, body %q", resp.StatusCode, resp.TLS.PeerCertificates[0].Subject.CommonName, body)
		}
	})
}

// TestTLSWatch: replacing the certificate files (by rename, as certbot
// does) is picked up without a signal.
func TestTLSWatch(t *testing.T) {
	f := startTLSFixture(t)
	old := f.dialWSS(t, "/ws/before-watch")
	if cn := f.servedCert(t, "a.test").Subject.CommonName; cn != "a.test" {
		t.Fatalf("a.test: CN %q at start", cn)
	}
	cert, key := f.ca.issue(t, "a.test", "v2", 300)
	replaceByRename(t, filepath.Join(f.certDir, "a.test.pem"), cert)
	replaceByRename(t, filepath.Join(f.certDir, "a.test.key"), key)
	f.waitForCN(t, "a.test", "v2", 10*time.Second)
	if cn := f.servedCert(t, "b.test").Subject.CommonName; cn != "b.test" {
		t.Errorf("b.test: CN %q after a.test changed, want b.test", cn)
	}
	echoOnce(t, old, websocket.TextMessage, []byte("still here"))
}

// needCurl returns curl's path or skips the test.
func needCurl(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("curl")
	if err != nil {
		skipMissingPeer(t, "curl not installed")
	}
	return p
}

// runCurl runs curl with args (bounded by its --max-time and a context)
// and returns its stdout.
func runCurl(t *testing.T, curl string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, curl, args...)
	cmd.Env = append(cmd.Environ(), "http_proxy=", "https_proxy=", "HTTP_PROXY=", "HTTPS_PROXY=", "ALL_PROXY=", "all_proxy=")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("curl %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}
