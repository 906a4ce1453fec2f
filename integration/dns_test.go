//go:build unix

package integration

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// dnsServer is a DNS server on UDP 127.0.0.1:0 for discovery tests. It
// answers A queries for one name with the addresses the test sets (none
// at first), AAAA queries for that name with an empty answer, and every
// other name with NXDOMAIN. Its answers are authoritative, with a TTL of
// 0, so that a resolver never caches them.
type dnsServer struct {
	name string // fully qualified, lower case: "backend.test."
	pc   net.PacketConn

	mu      sync.Mutex
	addrs   []netip.Addr   // guarded by mu
	queries map[string]int // guarded by mu: by "TYPE name"
}

// startDNS serves name until the test ends and returns the server.
func startDNS(t *testing.T, name string) *dnsServer {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &dnsServer{name: strings.ToLower(name), pc: pc, queries: map[string]int{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.serve()
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	return d
}

// Addr returns the server's host:port.
func (d *dnsServer) Addr() string { return d.pc.LocalAddr().String() }

// set replaces the A answer for the name; no address means an empty
// answer.
func (d *dnsServer) set(addrs ...netip.Addr) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.addrs = slices.Clone(addrs)
}

// count returns how many queries of type qtype ("TypeA", "TypeAAAA")
// for name arrived.
func (d *dnsServer) count(qtype, name string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.queries[qtype+" "+strings.ToLower(name)]
}

func (d *dnsServer) serve() {
	buf := make([]byte, 1500)
	for {
		n, from, err := d.pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if resp, ok := d.answer(buf[:n]); ok {
			_, _ = d.pc.WriteTo(resp, from)
		}
	}
}

// answer builds the response to one query; false for a message that is
// not a query with a question.
func (d *dnsServer) answer(req []byte) ([]byte, bool) {
	var p dnsmessage.Parser
	h, err := p.Start(req)
	if err != nil || h.Response {
		return nil, false
	}
	q, err := p.Question()
	if err != nil {
		return nil, false
	}
	name := strings.ToLower(q.Name.String())
	d.mu.Lock()
	d.queries[q.Type.String()+" "+name]++
	addrs := slices.Clone(d.addrs)
	d.mu.Unlock()

	// Authoritative with recursion available: Go's resolver takes an
	// empty answer without these bits for a lame referral and asks the
	// next server instead of reporting that the name has no address.
	rh := dnsmessage.Header{
		ID:                 h.ID,
		Response:           true,
		Authoritative:      true,
		RecursionDesired:   h.RecursionDesired,
		RecursionAvailable: true,
	}
	known := name == d.name
	if !known {
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	if b.StartQuestions() != nil || b.Question(q) != nil || b.StartAnswers() != nil {
		return nil, false
	}
	if known && q.Type == dnsmessage.TypeA && q.Class == dnsmessage.ClassINET {
		for _, a := range addrs {
			rr := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 0}
			if b.AResource(rr, dnsmessage.AResource{A: a.As4()}) != nil {
				return nil, false
			}
		}
	}
	resp, err := b.Finish()
	if err != nil {
		return nil, false
	}
	return resp, true
}

// TestDNSServer checks the test server with Go's own resolver: the
// answers discovery will get.
func TestDNSServer(t *testing.T) {
	d := startDNS(t, "backend.test.")
	r := &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, network, d.Addr())
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	_, err := r.LookupNetIP(ctx, "ip", "backend.test")
	var de *net.DNSError
	if !errors.As(err, &de) || !de.IsNotFound {
		t.Errorf("lookup with no address: err = %v, want a not-found DNSError", err)
	}
	want := netip.MustParseAddr("127.0.0.1")
	d.set(want)
	got, err := r.LookupNetIP(ctx, "ip", "backend.test")
	if err != nil || len(got) != 1 || got[0].Unmap() != want {
		t.Errorf("lookup = %v, %v; want [%v]", got, err, want)
	}
	if _, err := r.LookupNetIP(ctx, "ip", "other.test"); !errors.As(err, &de) || !de.IsNotFound {
		t.Errorf("lookup of another name: err = %v, want a not-found DNSError", err)
	}
	if d.count("TypeA", "backend.test.") == 0 || d.count("TypeAAAA", "backend.test.") == 0 {
		t.Errorf("queries seen: A %d, AAAA %d; want both", d.count("TypeA", "backend.test."), d.count("TypeAAAA", "backend.test."))
	}
}
