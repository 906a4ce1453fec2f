package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeCert generates a key and a certificate for host, signed by parent
// (self-signed when parent is nil), and writes them as PEM files
// name.pem and name-key.pem into dir. Keys are made at test time and
// never committed.
func writeCert(t *testing.T, dir, name, host string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: host},
		DNSNames:     []string{host},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	signer, signerKey := tmpl, key
	if parent == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
	} else {
		signer, signerKey = parent, parentKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, name+".pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	write(t, filepath.Join(dir, name+"-key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	return cert, key
}

func write(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestTLS(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := writeCert(t, dir, "ca", "wsgate test CA", nil, nil)
	leaf, _ := writeCert(t, filepath.Join(dir, "certs"), "backend", "backend.internal", ca, caKey)
	writeCert(t, filepath.Join(dir, "certs"), "a", "a.example.com", nil, nil)
	writeCert(t, filepath.Join(dir, "certs"), "b", "b.example.com", nil, nil)
	path := filepath.Join(dir, "config.yaml")
	write(t, path, []byte(`
listeners:
  - addr: 127.0.0.1:0
    tls:
      certificates:
        - {cert: certs/a.pem, key: certs/a-key.pem}
        - {cert: `+filepath.Join(dir, "certs", "b.pem")+`, key: certs/b-key.pem}
      min_version: "1.3"
  - addr: 127.0.0.1:0
    tls:
      certificates: [{cert: certs/a.pem, key: certs/a-key.pem}]
upstreams:
  secure:
    targets: [https://127.0.0.1:9443]
    tls: {ca: ca.pem, server_name: backend.internal}
routes:
  - {match: {path_prefix: /}, upstream: secure}
`))

	cfg, err := Load(path)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	lt := cfg.Listeners[0].TLS
	wantCerts := []CertPair{
		{Cert: filepath.Join(dir, "certs", "a.pem"), Key: filepath.Join(dir, "certs", "a-key.pem")},
		{Cert: filepath.Join(dir, "certs", "b.pem"), Key: filepath.Join(dir, "certs", "b-key.pem")},
	}
	if len(lt.Certificates) != 2 || lt.Certificates[0] != wantCerts[0] || lt.Certificates[1] != wantCerts[1] {
		t.Errorf("certificates = %+v, want %+v", lt.Certificates, wantCerts)
	}
	if lt.MinVersionTLS != tls.VersionTLS13 {
		t.Errorf("min version = %#x, want TLS 1.3", lt.MinVersionTLS)
	}
	if got := cfg.Listeners[1].TLS; got.MinVersion != "1.2" || got.MinVersionTLS != tls.VersionTLS12 {
		t.Errorf("default min version = %q %#x, want 1.2", got.MinVersion, got.MinVersionTLS)
	}

	up := cfg.UpstreamConfigs[cfg.Table.Routes()[0].Upstream.Name]
	if up.TLS == nil || up.TLS.RootCAs == nil || up.TLS.ServerName != "backend.internal" || up.TLS.MinVersion != tls.VersionTLS12 || up.TLS.InsecureSkipVerify {
		t.Fatalf("upstream TLS = %+v, want the CA pool, server name and TLS 1.2", up.TLS)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: up.TLS.RootCAs, DNSName: "backend.internal"}); err != nil {
		t.Errorf("backend certificate does not verify against the loaded CA pool: %v", err)
	}
}

func TestTLSErrors(t *testing.T) {
	dir := t.TempDir()
	writeCert(t, dir, "a", "a.example.com", nil, nil)
	writeCert(t, dir, "b", "b.example.com", nil, nil)
	write(t, filepath.Join(dir, "garbage.pem"), []byte("not a certificate\n"))
	path := filepath.Join(dir, "config.yaml")
	data := []byte(`listeners:
  - addr: 127.0.0.1:0
    tls:
      certificates:
        - {cert: missing.pem, key: a-key.pem}
        - {cert: a.pem, key: b-key.pem}
        - {cert: garbage.pem, key: a-key.pem}
        - {cert: a.pem}
      min_version: "1.1"
  - addr: 127.0.0.1:0
    tls: {certificates: []}
upstreams:
  secure:
    targets: [https://127.0.0.1:9443]
    tls: {ca: garbage.pem}
  missing:
    targets: [https://127.0.0.1:9443]
    tls: {ca: nope.pem}
routes:
  - {match: {path_prefix: /}, upstream: secure}
`)
	_, err := Parse(path, data)
	if err == nil {
		t.Fatal("Parse succeeded, want errors")
	}
	want := []string{
		`:5: listeners[0].tls.certificates[0].cert: certificate "missing.pem": no such file or directory`,
		`:6: listeners[0].tls.certificates[1]: certificate "a.pem" with key "b-key.pem": tls: private key does not match public key`,
		`:7: listeners[0].tls.certificates[2]: certificate "garbage.pem" with key "a-key.pem": tls: failed to find any PEM data in certificate input`,
		`:8: listeners[0].tls.certificates[3].key: required`,
		`:9: listeners[0].tls.min_version: unsupported TLS version "1.1" (want "1.2" or "1.3")`,
		`:11: listeners[1].tls.certificates: at least one certificate is required`,
		`:15: upstreams.secure.tls.ca: CA file "garbage.pem" holds no PEM certificate`,
		`:18: upstreams.missing.tls.ca: CA file "nope.pem": no such file or directory`,
	}
	got := strings.Split(err.Error(), "\n")
	if len(got) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(got), len(want), err)
	}
	for i := range want {
		if got[i] != path+want[i] {
			t.Errorf("error %d = %q, want %q", i, got[i], path+want[i])
		}
	}
}
