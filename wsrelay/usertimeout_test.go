//go:build linux

package wsrelay

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/wsgate/wsgate/internal/netpoll"
)

// userTimeout reads TCP_USER_TIMEOUT back from the TCP connection under c.
func userTimeout(t *testing.T, c net.Conn) time.Duration {
	t.Helper()
	tc, ok := netpoll.TCPConn(c)
	if !ok {
		t.Fatalf("%T carries no *net.TCPConn", c)
	}
	d, err := netpoll.UserTimeout(tc)
	if err != nil {
		t.Fatalf("UserTimeout: %v", err)
	}
	return d
}

// TestSetUserTimeout: a Policy's UserTimeout reaches the socket whether
// the connection is plain, a raw TCP conn or under TLS; a Policy without
// one leaves the kernel's default (0).
func TestSetUserTimeout(t *testing.T) {
	ln, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accept := func() *net.TCPConn {
		t.Helper()
		d, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.TCPConn)
	}
	for _, tc := range []struct {
		name string
		wrap func(*net.TCPConn) net.Conn
	}{
		{"tcp", func(c *net.TCPConn) net.Conn { return c }},
		{"raw", func(c *net.TCPConn) net.Conn { return netpoll.NewTCPConn(c) }},
		{"tls", func(c *net.TCPConn) net.Conn { return tls.Server(netpoll.NewTCPConn(c), &tls.Config{}) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := accept()
			if d := userTimeout(t, c); d != 0 {
				t.Fatalf("accepted with TCP_USER_TIMEOUT %v, want 0", d)
			}
			noPolicy.setUserTimeout(tc.wrap(c))
			if d := userTimeout(t, c); d != 0 {
				t.Fatalf("TCP_USER_TIMEOUT = %v after a Policy without one, want 0", d)
			}
			(&Policy{UserTimeout: 2500 * time.Millisecond}).setUserTimeout(tc.wrap(c))
			if d := userTimeout(t, c); d != 2500*time.Millisecond {
				t.Errorf("TCP_USER_TIMEOUT = %v, want 2.5s", d)
			}
		})
	}
}

// TestSessionUserTimeout: a running session has its policy's
// TCP_USER_TIMEOUT on both legs, the client's and the backend's; a
// session without a policy leaves both at the kernel's default. (Poller
// path only: the pump path's test connections hide their TCP conn.)
func TestSessionUserTimeout(t *testing.T) {
	for _, tc := range []struct {
		name   string
		policy *Policy
		want   time.Duration
	}{
		{"set", &Policy{UserTimeout: 3 * time.Second}, 3 * time.Second},
		{"none", nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := opsRegistry()
			rt := reg.Route("ut", "up")
			o := startOps(t, reg, policyConfig(rt, tc.policy), false)
			o.exchange(10)
			s := reg.lookup(o.id)
			if s == nil {
				t.Fatalf("session %s not in the registry", o.id)
			}
			if d := userTimeout(t, s.clientLeg().conn); d != tc.want {
				t.Errorf("client leg: TCP_USER_TIMEOUT = %v, want %v", d, tc.want)
			}
			if d := userTimeout(t, s.backend.conn); d != tc.want {
				t.Errorf("backend leg: TCP_USER_TIMEOUT = %v, want %v", d, tc.want)
			}
			o.clientCloses(1000, "")
		})
	}
}
