package tls

import (
	stdtls "crypto/tls"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// sniPairs writes the default, exact and wildcard pairs used by SNI tests.
func sniPairs(t testing.TB) []Pair {
	dir := t.TempDir()
	return []Pair{
		writePair(t, dir, "default", "default", "default.example.com"),
		writePair(t, dir, "a", "a", "a.example.com"),
		writePair(t, dir, "wild", "wild", "*.wild.example.com"),
	}
}

func TestSNI(t *testing.T) {
	s, _ := mustLoad(t, Options{Pairs: sniPairs(t)})
	addr := startServer(t, s.Config())
	tests := []struct {
		name, sni, want string
	}{
		{"exact", "a.example.com", "a"},
		{"default by name", "default.example.com", "default"},
		{"wildcard one label", "x.wild.example.com", "wild"},
		{"wildcard two labels", "a.b.wild.example.com", "default"},
		{"wildcard base name", "wild.example.com", "default"},
		{"no match", "other.example.org", "default"},
		{"no SNI", "", "default"},
		{"upper-case exact", "A.Example.COM", "a"},
		{"upper-case wildcard", "X.WILD.example.com", "wild"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := servedCN(t, addr, tt.sni); got != tt.want {
				t.Errorf("SNI %q served CN %q, want %q", tt.sni, got, tt.want)
			}
		})
	}
}

// testIndex builds an index from certificates generated for specs, each
// "CN=name1,name2" (no names: CN only).
func testIndex(t testing.TB, specs ...string) *index {
	t.Helper()
	var certs []*stdtls.Certificate
	for _, spec := range specs {
		cn, names, _ := strings.Cut(spec, "=")
		var dns []string
		if names != "" {
			dns = strings.Split(names, ",")
		}
		certPEM, keyPEM := genCert(t, cn, dns...)
		c, err := stdtls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, &c)
	}
	return newIndex(certs)
}

func TestLookup(t *testing.T) {
	x := testIndex(t,
		"default=default.example.com",
		"wild1=*.example.com",
		"exact=a.example.com,B.Example.Com.",
		"exact2=a.example.com,c.example.com",
		"wild2=*.example.com,*.other.test",
		"cnonly",
		"partial=x*.example.net,*.*.example.net,*.",
	)
	tests := []struct{ sni, want string }{
		{"a.example.com", "exact"},  // exact beats an earlier wildcard
		{"b.example.com", "exact"},  // SAN upper-case and trailing dot normalised
		{"c.example.com", "exact2"}, // exact name only in the later pair
		{"z.example.com", "wild1"},  // earlier wildcard wins
		{"z.other.test", "wild2"},   // wildcard only in the later pair
		{"a.example.com.", "exact"}, // trailing dot in SNI
		{"Z.EXAMPLE.COM", "wild1"},  // upper-case SNI
		{"example.com", "default"},  // wildcard needs a label
		{".example.com", "default"}, // empty label
		{"a.b.example.com", "default"},
		{"cnonly", "cnonly"}, // CN used when there are no DNS SANs
		{"CNONLY", "cnonly"},
		{"xa.example.net", "default"}, // partial-label wildcards are ignored
		{"a.b.example.net", "default"},
		{"", "default"},
		{".", "default"},
		{"127.0.0.1", "default"},
		{"::1", "default"},
		{"fe80::1%eth0", "default"},
		{strings.Repeat("a.", 200) + "example.com", "default"}, // longer than a DNS name
	}
	for _, tt := range tests {
		if got := x.lookup(tt.sni).Leaf.Subject.CommonName; got != tt.want {
			t.Errorf("lookup(%q) = %q, want %q", tt.sni, got, tt.want)
		}
	}
}

func TestGetCertificateAllocs(t *testing.T) {
	s, _ := mustLoad(t, Options{Pairs: sniPairs(t)})
	for _, sni := range []string{"a.example.com", "x.wild.example.com", "A.EXAMPLE.COM", "none.test", "", "10.0.0.1"} {
		hello := &stdtls.ClientHelloInfo{ServerName: sni}
		allocs := testing.AllocsPerRun(100, func() {
			if _, err := s.getCertificate(hello); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("getCertificate(%q): %v allocs, want 0", sni, allocs)
		}
	}
}

func BenchmarkGetCertificate(b *testing.B) {
	dir := b.TempDir()
	var pairs []Pair
	for i := range 20 {
		pairs = append(pairs, writePair(b, dir, fmt.Sprint(i), fmt.Sprint(i),
			fmt.Sprintf("h%d.example.com", i), fmt.Sprintf("*.w%d.example.com", i)))
	}
	s, _ := mustLoad(b, Options{Pairs: pairs})
	for _, sni := range []string{"h7.example.com", "x.w7.example.com", "H7.EXAMPLE.COM", "none.test"} {
		b.Run("sni="+sni, func(b *testing.B) {
			hello := &stdtls.ClientHelloInfo{ServerName: sni}
			b.ReportAllocs()
			for b.Loop() {
				s.getCertificate(hello)
			}
		})
	}
}

func TestMinVersion(t *testing.T) {
	pairs := sniPairs(t)
	tls12, _ := mustLoad(t, Options{Pairs: pairs})
	tls13, _ := mustLoad(t, Options{Pairs: pairs, MinVersion: stdtls.VersionTLS13})
	if got := tls12.Config().MinVersion; got != stdtls.VersionTLS12 {
		t.Errorf("default Config().MinVersion = %#04x, want TLS 1.2 (%#04x)", got, stdtls.VersionTLS12)
	}
	addr12 := startServer(t, tls12.Config())
	addr13 := startServer(t, tls13.Config())
	tests := []struct {
		name        string
		addr        string
		min, max    uint16
		wantVersion uint16 // 0: handshake must fail
	}{
		{"default rejects TLS 1.1", addr12, stdtls.VersionTLS10, stdtls.VersionTLS11, 0},
		{"default accepts TLS 1.2", addr12, stdtls.VersionTLS12, stdtls.VersionTLS12, stdtls.VersionTLS12},
		{"default accepts TLS 1.3", addr12, 0, 0, stdtls.VersionTLS13},
		{"1.3 rejects TLS 1.2", addr13, stdtls.VersionTLS12, stdtls.VersionTLS12, 0},
		{"1.3 accepts TLS 1.3", addr13, 0, 0, stdtls.VersionTLS13},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := dial(tt.addr, &stdtls.Config{
				InsecureSkipVerify: true, ServerName: "a.example.com",
				MinVersion: tt.min, MaxVersion: tt.max,
			})
			if tt.wantVersion == 0 {
				if err == nil {
					c.Close()
					t.Fatal("handshake succeeded, want protocol version error")
				}
				if !strings.Contains(err.Error(), "protocol version not supported") {
					t.Fatalf("handshake error = %v, want protocol version not supported", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if got := c.ConnectionState().Version; got != tt.wantVersion {
				t.Errorf("negotiated version %#04x, want %#04x", got, tt.wantVersion)
			}
		})
	}
}

func TestALPN(t *testing.T) {
	s, _ := mustLoad(t, Options{Pairs: sniPairs(t)})
	addr := startServer(t, s.Config())
	c, err := dial(addr, &stdtls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.ConnectionState().NegotiatedProtocol; got != "http/1.1" {
		t.Errorf("negotiated protocol %q, want http/1.1", got)
	}
}

func TestReload(t *testing.T) {
	dir := t.TempDir()
	p := writePair(t, dir, "cert", "v1", "a.example.com")
	s, logs := mustLoad(t, Options{Pairs: []Pair{p}})
	addr := startServer(t, s.Config())

	old, err := dial(addr, &stdtls.Config{InsecureSkipVerify: true, ServerName: "a.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	echoByte(t, old, 'a')

	// Overwrite in place, as opposed to a rename.
	certPEM, keyPEM := genCert(t, "v2", "a.example.com", "b.example.com")
	writeFile(t, p.CertFile, certPEM)
	writeFile(t, p.KeyFile, keyPEM)
	if err := s.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if got := servedCN(t, addr, "a.example.com"); got != "v2" {
		t.Errorf("after Reload served CN %q, want v2", got)
	}
	echoByte(t, old, 'b') // the connection made before the reload still works
	if got := old.ConnectionState().PeerCertificates[0].Subject.CommonName; got != "v1" {
		t.Errorf("established conn CN %q, want v1", got)
	}
	if out := logs.String(); !strings.Contains(out, `msg="certificates reloaded" names="[a.example.com b.example.com]"`) {
		t.Errorf("log lacks reload line with names:\n%s", out)
	}
}

func TestReloadBrokenKeepsOld(t *testing.T) {
	dir := t.TempDir()
	p := writePair(t, dir, "cert", "v1", "a.example.com")
	s, _ := mustLoad(t, Options{Pairs: []Pair{p}})
	addr := startServer(t, s.Config())

	certPEM, _ := genCert(t, "v2", "a.example.com")
	writeFile(t, p.CertFile, certPEM)
	writeFile(t, p.KeyFile, []byte("not a key\n"))
	err := s.Reload()
	if err == nil {
		t.Fatal("Reload with a broken key succeeded")
	}
	if want := fmt.Sprintf("load certificate %q with key %q: ", p.CertFile, p.KeyFile); !strings.HasPrefix(err.Error(), want) {
		t.Errorf("Reload error = %q, want prefix %q", err, want)
	}
	if got := servedCN(t, addr, "a.example.com"); got != "v1" {
		t.Errorf("after failed Reload served CN %q, want v1", got)
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	good := writePair(t, dir, "good", "good", "good.example.com")
	other := writePair(t, dir, "other", "other", "other.example.com")
	garbage := filepath.Join(dir, "garbage.pem")
	writeFile(t, garbage, []byte("-----BEGIN NOTHING-----\n"))
	missing := filepath.Join(dir, "missing.pem")

	tests := []struct {
		name string
		o    Options
		want []string // substrings of the error
	}{
		{"no pairs", Options{}, []string{"no certificate pairs"}},
		{"missing cert", Options{Pairs: []Pair{{missing, good.KeyFile}}},
			[]string{fmt.Sprintf("load certificate %q: open %s: no such file or directory", missing, missing)}},
		{"missing key", Options{Pairs: []Pair{{good.CertFile, missing}}},
			[]string{fmt.Sprintf("load certificate %q: open %s: no such file or directory", good.CertFile, missing)}},
		{"mismatched key", Options{Pairs: []Pair{{good.CertFile, other.KeyFile}}},
			[]string{fmt.Sprintf("load certificate %q with key %q: tls: private key does not match public key", good.CertFile, other.KeyFile)}},
		{"garbage cert", Options{Pairs: []Pair{{garbage, good.KeyFile}}},
			[]string{fmt.Sprintf("load certificate %q with key %q: tls: failed to find any PEM data in certificate input", garbage, good.KeyFile)}},
		{"every broken pair", Options{Pairs: []Pair{good, {missing, good.KeyFile}, {good.CertFile, other.KeyFile}}},
			[]string{fmt.Sprintf("load certificate %q: open", missing), "private key does not match"}},
		{"TLS 1.1", Options{Pairs: []Pair{good}, MinVersion: stdtls.VersionTLS11},
			[]string{"unsupported minimum TLS version 0x0302 (want TLS 1.2 or 1.3)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Load(tt.o)
			if err == nil {
				t.Fatalf("Load succeeded, want error containing %q", tt.want)
			}
			if s != nil {
				t.Errorf("Load returned a Store with error %v", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Load error = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

// TestReloadConcurrent races handshakes and GetCertificate against reloads;
// run with -race.
func TestReloadConcurrent(t *testing.T) {
	dir := t.TempDir()
	p := writePair(t, dir, "cert", "v1", "a.example.com")
	s, _ := mustLoad(t, Options{Pairs: []Pair{p}})
	addr := startServer(t, s.Config())
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if cn, err := tryServedCN(addr, "a.example.com"); err != nil || (cn != "v1" && cn != "v2") {
					t.Errorf("handshake during reloads: CN %q, error %v", cn, err)
					return
				}
			}
		})
	}
	for i := range 10 {
		replacePair(t, p, fmt.Sprintf("v%d", 1+i%2), "a.example.com")
		if err := s.Reload(); err != nil {
			t.Error(err)
		}
	}
	close(stop)
	wg.Wait()
}
