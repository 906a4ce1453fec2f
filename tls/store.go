package tls

import (
	stdtls "crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Pair names one certificate chain file and its key file (PEM).
type Pair struct{ CertFile, KeyFile string }

// Options configures [Load].
type Options struct {
	// Pairs are the certificates to serve, at least one. The first is the
	// default, served when SNI is missing, is an IP address or matches no
	// other certificate; for names served by several pairs the earlier wins.
	Pairs []Pair
	// MinVersion is stdtls.VersionTLS12 or stdtls.VersionTLS13. Default
	// (zero) TLS 1.2.
	MinVersion uint16
	// Logger receives load and reload messages. Default (nil) slog.Default().
	Logger *slog.Logger
}

// Store holds the loaded certificates and swaps them atomically on reload.
// It is safe for concurrent use.
type Store struct {
	pairs      []Pair
	minVersion uint16
	log        *slog.Logger

	idx atomic.Pointer[index] // current certificates; never nil after Load

	mu sync.Mutex // serialises loads, so the newest read always lands last
}

// Load reads and parses every pair in o.Pairs. Errors name the files, one
// per broken pair: `load certificate "a.pem": open a.pem: no such file or
// directory`.
func Load(o Options) (*Store, error) {
	if len(o.Pairs) == 0 {
		return nil, errors.New("load certificates: no certificate pairs")
	}
	switch o.MinVersion {
	case 0:
		o.MinVersion = stdtls.VersionTLS12
	case stdtls.VersionTLS12, stdtls.VersionTLS13:
	default:
		return nil, fmt.Errorf("load certificates: unsupported minimum TLS version %#04x (want TLS 1.2 or 1.3)", o.MinVersion)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	s := &Store{
		pairs:      append([]Pair(nil), o.Pairs...),
		minVersion: o.MinVersion,
		log:        o.Logger,
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	idx, err := s.loadLocked()
	if err != nil {
		return nil, err
	}
	s.idx.Store(idx)
	s.logLoaded("certificates loaded", idx)
	return s, nil
}

// Config returns a server configuration that selects certificates by SNI
// through GetCertificate, with MinVersion from [Options] and NextProtos
// ["http/1.1"]. Each call returns a new *Config the caller may modify; any
// of them may be used for the whole life of the Store, because reloads
// take effect through GetCertificate.
func (s *Store) Config() *stdtls.Config {
	return &stdtls.Config{
		GetCertificate: s.getCertificate,
		MinVersion:     s.minVersion,
		NextProtos:     []string{"http/1.1"},
	}
}

// Reload re-reads every pair. On any error it keeps the certificates it
// had and returns the error; on success new handshakes get the new set
// and it logs "certificates reloaded" with the names served.
func (s *Store) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reloadLocked()
}

// Prepare re-reads every pair, like Reload, but does not use them yet:
// it returns a commit that swaps them in and logs "certificates
// reloaded". On error nothing changes. A config reload prepares every
// store before it applies anything.
func (s *Store) Prepare() (commit func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	idx, err := s.loadLocked()
	if err != nil {
		return nil, err
	}
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.idx.Store(idx)
		s.logLoaded("certificates reloaded", idx)
	}, nil
}

// reloadLocked is Reload with s.mu held.
func (s *Store) reloadLocked() error {
	idx, err := s.loadLocked()
	if err != nil {
		return err
	}
	s.idx.Store(idx)
	s.logLoaded("certificates reloaded", idx)
	return nil
}

// getCertificate is the GetCertificate callback of [Store.Config].
func (s *Store) getCertificate(hello *stdtls.ClientHelloInfo) (*stdtls.Certificate, error) {
	return s.idx.Load().lookup(hello.ServerName), nil
}

// loadLocked reads all pairs and builds an index. s.mu must be held.
func (s *Store) loadLocked() (*index, error) {
	certs := make([]*stdtls.Certificate, 0, len(s.pairs))
	var errs []error
	for _, p := range s.pairs {
		c, err := loadPair(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		certs = append(certs, c)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return newIndex(certs), nil
}

// loadPair reads and parses one pair and makes sure its Leaf is set.
func loadPair(p Pair) (*stdtls.Certificate, error) {
	certPEM, err := os.ReadFile(p.CertFile)
	if err != nil {
		return nil, fmt.Errorf("load certificate %q: %w", p.CertFile, err)
	}
	keyPEM, err := os.ReadFile(p.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("load certificate %q: %w", p.CertFile, err)
	}
	c, err := stdtls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load certificate %q with key %q: %w", p.CertFile, p.KeyFile, err)
	}
	// X509KeyPair sets Leaf since Go 1.23 unless GODEBUG x509keypairleaf=0.
	if c.Leaf == nil {
		c.Leaf, err = x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			return nil, fmt.Errorf("load certificate %q: parse leaf: %w", p.CertFile, err)
		}
	}
	return &c, nil
}

// logLoaded logs msg with the names served, and warns about certificates
// outside their validity period: they load, but clients will reject them.
func (s *Store) logLoaded(msg string, idx *index) {
	s.log.Info(msg, "names", idx.names)
	now := time.Now()
	for i, c := range idx.certs {
		if now.Before(c.Leaf.NotBefore) || now.After(c.Leaf.NotAfter) {
			s.log.Warn("certificate outside its validity period",
				"cert_file", s.pairs[i].CertFile,
				"not_before", c.Leaf.NotBefore, "not_after", c.Leaf.NotAfter)
		}
	}
}

// Certificate describes one loaded certificate, for metrics.
type Certificate struct {
	// CertFile is the file it was loaded from.
	CertFile string
	// Subject is the leaf's first DNS name, or its Subject CN.
	Subject  string
	NotAfter time.Time
}

// Certificates returns the certificates in use, in pair order.
func (s *Store) Certificates() []Certificate {
	idx := s.idx.Load()
	out := make([]Certificate, 0, len(idx.certs))
	for i, c := range idx.certs {
		subject := c.Leaf.Subject.CommonName
		if len(c.Leaf.DNSNames) > 0 {
			subject = c.Leaf.DNSNames[0]
		}
		out = append(out, Certificate{CertFile: s.pairs[i].CertFile, Subject: subject, NotAfter: c.Leaf.NotAfter})
	}
	return out
}
