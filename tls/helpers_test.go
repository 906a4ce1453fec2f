package tls

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	stdtls "crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// genCert returns a self-signed ECDSA certificate and its key, in PEM, for
// the given Subject CN and DNS SANs.
func genCert(t testing.TB, cn string, dnsNames ...string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		DNSNames:     dnsNames,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

// writePair writes dir/base.pem and dir/base-key.pem for a new certificate.
func writePair(t testing.TB, dir, base, cn string, dnsNames ...string) Pair {
	t.Helper()
	p := Pair{CertFile: filepath.Join(dir, base+".pem"), KeyFile: filepath.Join(dir, base+"-key.pem")}
	certPEM, keyPEM := genCert(t, cn, dnsNames...)
	writeFile(t, p.CertFile, certPEM)
	writeFile(t, p.KeyFile, keyPEM)
	return p
}

// replacePair atomically replaces p's files with a new certificate, the way
// editors and certbot do: write a temporary file, then rename it over.
func replacePair(t testing.TB, p Pair, cn string, dnsNames ...string) {
	t.Helper()
	certPEM, keyPEM := genCert(t, cn, dnsNames...)
	replaceFile(t, p.CertFile, certPEM)
	replaceFile(t, p.KeyFile, keyPEM)
}

func writeFile(t testing.TB, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(name, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func replaceFile(t testing.TB, name string, data []byte) {
	t.Helper()
	tmp := name + ".tmp"
	writeFile(t, tmp, data)
	if err := os.Rename(tmp, name); err != nil {
		t.Fatal(err)
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent use, for log output.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer // guarded by mu
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testLogger returns a debug-level text logger writing to a buffer.
func testLogger() (*slog.Logger, *syncBuffer) {
	var buf syncBuffer
	return slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), &buf
}

// mustLoad loads pairs with a buffered logger.
func mustLoad(t testing.TB, o Options) (*Store, *syncBuffer) {
	t.Helper()
	log, buf := testLogger()
	o.Logger = log
	s, err := Load(o)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return s, buf
}

// startServer serves TLS on 127.0.0.1:0 with cfg, echoing bytes back on
// every connection, and returns its address. Cleanup closes the listener
// and all connections and waits for the goroutines.
func startServer(t testing.TB, cfg *stdtls.Config) string {
	t.Helper()
	ln, err := stdtls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		conns  = map[net.Conn]bool{} // guarded by mu
		closed bool                  // guarded by mu
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			if closed {
				mu.Unlock()
				c.Close()
				return
			}
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				io.Copy(c, c) // handshake on first read; failures end the copy
				c.Close()
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		closed = true
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// dial handshakes with addr using cfg; the timeout covers the handshake.
func dial(addr string, cfg *stdtls.Config) (*stdtls.Conn, error) {
	return stdtls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
}

// servedCN handshakes with addr sending sni (none if empty) and returns
// the Subject CN of the leaf the server presented.
func servedCN(t *testing.T, addr, sni string) string {
	t.Helper()
	cn, err := tryServedCN(addr, sni)
	if err != nil {
		t.Fatalf("handshake with SNI %q: %v", sni, err)
	}
	return cn
}

func tryServedCN(addr, sni string) (string, error) {
	c, err := dial(addr, &stdtls.Config{InsecureSkipVerify: true, ServerName: sni})
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].Subject.CommonName, nil
}

// echoByte writes one byte over c and reads it back from the echo server.
func echoByte(t *testing.T, c *stdtls.Conn, b byte) {
	t.Helper()
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte{b}); err != nil {
		t.Fatalf("write on established conn: %v", err)
	}
	got := make([]byte, 1)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read on established conn: %v", err)
	}
	if got[0] != b {
		t.Fatalf("echo = %q, want %q", got[0], b)
	}
}
