package wsrelay

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"reflect"
	"slices"
	"strconv"
	"testing"
	"time"
)

// opsRegistry returns a registry whose close handshakes may take a
// minute: a session that ends within hangGuard ended because its peers
// answered, not because the budget cut it.
func opsRegistry() *Registry {
	return NewRegistry(Options{Logger: slog.New(slog.DiscardHandler), CloseWait: time.Minute})
}

// opsConfig is a session's Config as the proxy would make it, on route rt
// for a client at client.
func opsConfig(rt *Route, client string) Config {
	return Config{Route: rt, Target: "http://127.0.0.1:1", Client: client, Idle: time.Hour, Write: time.Minute}
}

// opsPeer is the far end of one of a session's connections, as a test
// drives it with raw frames: the client (its frames are masked) or the
// backend (they are not).
type opsPeer struct {
	t      testing.TB
	side   string
	conn   net.Conn
	br     *bufio.Reader
	client bool
}

// opsSession is a running session and its two peers.
type opsSession struct {
	t       testing.TB
	reg     *Registry
	id      string
	client  *opsPeer
	backend *opsPeer
}

// opaqueConn hides the *net.TCPConn under a connection: its leg can park
// nowhere, so a pump goroutine relays it.
type opaqueConn struct{ net.Conn }

// opsPaths are the two ways frames are relayed: by the shared poller
// (plain TCP legs on Linux; elsewhere this is the pump path too) and by
// pump goroutines.
var opsPaths = []struct {
	name string
	pump bool
}{{"poller", false}, {"pump", true}}

// startOps registers a session made of c on two loopback connections,
// the way the proxy does, and runs it. With pump, neither leg can wait in
// the poller.
func startOps(t testing.TB, reg *Registry, c Config, pump bool) *opsSession {
	t.Helper()
	clientPeer, clientConn := tcpPair(t)
	backendConn, backendPeer := tcpPair(t)
	if pump {
		clientConn, backendConn = opaqueConn{clientConn}, opaqueConn{backendConn}
	}
	if !reg.BeginUpgrade() {
		t.Fatal("BeginUpgrade() = false, want true")
	}
	s := reg.NewSession(c, backendConn, nil)
	if !reg.EndUpgrade(s) {
		t.Fatal("EndUpgrade() = false, want true")
	}
	go s.Run(clientConn, nil)
	// Until Run has the client connection, Send finds no client (and
	// returns ErrClosing): wait for it, as the proxy's client waits for
	// the 101 and a first echo.
	waitFor(t, "session "+s.ID()+" to start", hangGuard, func() bool { return s.clientLeg() != nil })
	return &opsSession{
		t: t, reg: reg, id: s.ID(),
		client:  &opsPeer{t: t, side: "client", conn: clientPeer, br: bufio.NewReaderSize(clientPeer, 128<<10), client: true},
		backend: &opsPeer{t: t, side: "backend", conn: backendPeer, br: bufio.NewReaderSize(backendPeer, 128<<10)},
	}
}

// send writes one frame: b0 is FIN|opcode.
func (p *opsPeer) send(b0 byte, payload []byte) {
	p.t.Helper()
	var key *[4]byte
	if p.client {
		key = &[4]byte{0x5a, 0x13, 0xc7, 0x01}
	}
	if _, err := p.conn.Write(makeFrame(b0, key, payload)); err != nil {
		p.t.Fatalf("%s peer: write: %v", p.side, err)
	}
}

// sendClose writes a close frame with code and reason.
func (p *opsPeer) sendClose(code uint16, reason string) {
	p.t.Helper()
	p.send(0x88, append(binary.BigEndian.AppendUint16(nil, code), reason...))
}

// read reads the next frame, waiting at most hangGuard. Frames toward the
// backend must be masked, frames toward the client not.
func (p *opsPeer) read() rawFrame {
	p.t.Helper()
	_ = p.conn.SetReadDeadline(time.Now().Add(hangGuard))
	f, err := readRawFrame(p.br)
	if err != nil {
		p.t.Fatalf("%s peer: read frame: %v", p.side, err)
	}
	if f.masked == p.client {
		p.t.Fatalf("%s peer: frame opcode %d masked %v, want %v", p.side, f.opcode, f.masked, !p.client)
	}
	return f
}

// readData reads the next frame and checks that it is a whole data
// message: opcode and payload.
func (p *opsPeer) readData(opcode byte, payload []byte) {
	p.t.Helper()
	f := p.read()
	if !f.fin || f.rsv != 0 || f.opcode != opcode || !bytes.Equal(f.payload, payload) {
		p.t.Fatalf("%s peer got fin %v rsv %#x opcode %d, %d bytes %.20q; want one frame opcode %d, %d bytes %.20q",
			p.side, f.fin, f.rsv, f.opcode, len(f.payload), f.payload, opcode, len(payload), payload)
	}
}

// readClose reads the next frame and returns its close code and reason.
func (p *opsPeer) readClose() (uint16, string) {
	p.t.Helper()
	f := p.read()
	if f.opcode != opClose || len(f.payload) < 2 {
		p.t.Fatalf("%s peer got opcode %d %.20q, want a close frame with a code", p.side, f.opcode, f.payload)
	}
	return binary.BigEndian.Uint16(f.payload), string(f.payload[2:])
}

// expectClose reads a close frame and checks its code and reason.
func (p *opsPeer) expectClose(code uint16, reason string) {
	p.t.Helper()
	if gotCode, gotReason := p.readClose(); gotCode != code || gotReason != reason {
		p.t.Fatalf("%s peer got close %d %q, want %d %q", p.side, gotCode, gotReason, code, reason)
	}
}

// expectNothing checks that nothing arrives within d. It waits d, and
// only proves that nothing came that early: a lower bound.
func (p *opsPeer) expectNothing(d time.Duration) {
	p.t.Helper()
	_ = p.conn.SetReadDeadline(time.Now().Add(d))
	f, err := readRawFrame(p.br)
	if err == nil {
		p.t.Fatalf("%s peer got opcode %d fin %v %.20q, want nothing yet", p.side, f.opcode, f.fin, f.payload)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		p.t.Fatalf("%s peer: read: %v, want a timeout", p.side, err)
	}
}

// expectEOF checks that wsgate closed the connection after what was read.
func (p *opsPeer) expectEOF() {
	p.t.Helper()
	_ = p.conn.SetReadDeadline(time.Now().Add(hangGuard))
	if n, err := io.Copy(io.Discard, p.br); n != 0 || err != nil {
		p.t.Fatalf("%s peer: %d more bytes, then %v; want EOF", p.side, n, err)
	}
}

// exchange sends one binary message of each size both ways, client
// first, and checks that each arrives whole.
func (o *opsSession) exchange(sizes ...int) {
	o.t.Helper()
	for _, n := range sizes {
		msg := bytes.Repeat([]byte{byte(n)}, n)
		o.client.send(0x82, msg)
		o.backend.readData(opBinary, msg)
		o.backend.send(0x82, msg)
		o.client.readData(opBinary, msg)
	}
}

// waitGone waits until the session has left the registry.
func (o *opsSession) waitGone() {
	o.t.Helper()
	waitFor(o.t, "session "+o.id+" to end", hangGuard, func() bool {
		_, ok := o.reg.Get(o.id)
		return !ok
	})
}

// clientCloses ends the session by a close from the client, which the
// backend answers with the same code.
func (o *opsSession) clientCloses(code uint16, reason string) {
	o.t.Helper()
	o.client.sendClose(code, reason)
	o.backend.expectClose(code, reason)
	o.backend.sendClose(code, reason)
	o.client.expectClose(code, reason)
	o.waitGone()
}

// backendCloses ends the session by a close from the backend, which the
// client answers with the same code.
func (o *opsSession) backendCloses(code uint16, reason string) {
	o.t.Helper()
	o.backend.sendClose(code, reason)
	o.client.expectClose(code, reason)
	o.client.sendClose(code, reason)
	o.backend.expectClose(code, reason)
	o.waitGone()
}

// clientDrops ends the session by closing the client's connection without
// a close frame; the backend, told 1001, answers 1001.
func (o *opsSession) clientDrops() {
	o.t.Helper()
	if err := o.client.conn.Close(); err != nil {
		o.t.Fatal(err)
	}
	o.backend.expectClose(closeGoingAway, "client went away")
	o.backend.sendClose(closeGoingAway, "")
	o.waitGone()
}

// backendDrops ends the session by closing the backend's connection
// without a close frame; the client, told 1011, answers 1011.
func (o *opsSession) backendDrops() {
	o.t.Helper()
	if err := o.backend.conn.Close(); err != nil {
		o.t.Fatal(err)
	}
	o.client.expectClose(closeInternalError, "backend went away")
	o.client.sendClose(closeInternalError, "")
	o.waitGone()
}

// clientBreaksProtocol ends the session by an unmasked frame from the
// client: it gets 1002 and closes its connection, the backend gets 1001
// and answers 1001.
func (o *opsSession) clientBreaksProtocol() {
	o.t.Helper()
	if _, err := o.client.conn.Write(makeFrame(0x81, nil, []byte("unmasked"))); err != nil {
		o.t.Fatal(err)
	}
	o.client.expectClose(closeProtocolError, "unmasked client frame")
	o.backend.expectClose(closeGoingAway, "client protocol error")
	if err := o.client.conn.Close(); err != nil {
		o.t.Fatal(err)
	}
	o.backend.sendClose(closeGoingAway, "")
	o.waitGone()
}

// wsgateCloses ends the session with Registry.Close: the client gets code
// and reason and echoes them, the backend gets 1001 and answers 1001.
func (o *opsSession) wsgateCloses(code uint16, reason string) {
	o.t.Helper()
	if err := o.reg.Close(o.id, code, reason); err != nil {
		o.t.Fatalf("Close(%q, %d, %q) = %v, want nil", o.id, code, reason, err)
	}
	o.client.expectClose(code, reason)
	o.backend.expectClose(closeGoingAway, "going away")
	o.client.sendClose(code, reason)
	o.backend.sendClose(closeGoingAway, "")
	o.waitGone()
}

// TestSessionIDs: every session gets an id of its own, in canonical base
// 36, that Get finds while the session lives; ids no session has (or that
// are not base 36) find nothing.
func TestSessionIDs(t *testing.T) {
	reg := opsRegistry()
	rt := reg.Route("chat", "app")
	seen := map[string]bool{}
	var sessions []*opsSession
	for range 20 {
		o := startOps(t, reg, opsConfig(rt, "127.0.0.1:5555"), false)
		sessions = append(sessions, o)
		n, err := strconv.ParseUint(o.id, 36, 64)
		if err != nil || strconv.FormatUint(n, 36) != o.id {
			t.Errorf("ID() = %q: ParseUint gives %d, %v; want canonical base 36", o.id, n, err)
		}
		if seen[o.id] {
			t.Errorf("ID() = %q twice", o.id)
		}
		seen[o.id] = true
	}
	for _, o := range sessions {
		if in, ok := reg.Get(o.id); !ok || in.ID != o.id {
			t.Errorf("Get(%q) = %q, %v; want the session", o.id, in.ID, ok)
		}
	}
	for _, id := range []string{"", "zzzzzzzzzzzz", "not an id", "-1", "1_0", sessions[0].id + " "} {
		if in, ok := reg.Get(id); ok {
			t.Errorf("Get(%q) = %q, true; want no session", id, in.ID)
		}
	}
	// An ended session is gone.
	sessions[0].clientCloses(closeNormal, "")
	if _, ok := reg.Get(sessions[0].id); ok {
		t.Errorf("Get(%q) found the session after it ended", sessions[0].id)
	}
}

// TestSessionsFilter: Sessions selects by every field of Filter, the
// client by full address or by host alone, and lists in start order.
func TestSessionsFilter(t *testing.T) {
	reg := opsRegistry()
	chat, news, chatOther := reg.Route("chat", "app"), reg.Route("news", "app"), reg.Route("chat", "other")
	setups := []struct {
		rt             *Route
		target, client string
	}{
		{chat, "http://127.0.0.1:1", "127.0.0.1:5555"},
		{chat, "http://127.0.0.1:2", "10.0.0.1:5555"},
		{news, "http://127.0.0.1:1", "127.0.0.1:6666"},
		{chatOther, "http://127.0.0.1:3", "[::1]:5555"},
		{news, "http://127.0.0.1:2", "10.0.0.1:7777"},
		{chat, "http://127.0.0.1:1", "127.0.0.10:5555"},
	}
	ids := make([]string, len(setups))
	for i, su := range setups {
		c := opsConfig(su.rt, su.client)
		c.Target = su.target
		c.Subprotocol = fmt.Sprintf("v%d", i)
		ids[i] = startOps(t, reg, c, false).id
	}
	for _, tc := range []struct {
		name string
		f    Filter
		want []int // indexes of setups, in start order
	}{
		{"all", Filter{}, []int{0, 1, 2, 3, 4, 5}},
		{"route", Filter{Route: "chat"}, []int{0, 1, 3, 5}},
		{"upstream", Filter{Upstream: "other"}, []int{3}},
		{"route and upstream", Filter{Route: "chat", Upstream: "app"}, []int{0, 1, 5}},
		{"target", Filter{Target: "http://127.0.0.1:1"}, []int{0, 2, 5}},
		{"client address", Filter{Client: "127.0.0.1:5555"}, []int{0}},
		{"client host", Filter{Client: "127.0.0.1"}, []int{0, 2}},
		{"client IPv6 host", Filter{Client: "::1"}, []int{3}},
		{"client IPv6 address", Filter{Client: "[::1]:5555"}, []int{3}},
		{"client host prefix", Filter{Client: "127.0.0"}, nil},
		{"client port only", Filter{Client: "5555"}, nil},
		{"route and client host", Filter{Route: "news", Client: "10.0.0.1"}, []int{4}},
		{"unknown route", Filter{Route: "nope"}, nil},
		{"route of another upstream's name", Filter{Route: "app"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var want []string
			for _, i := range tc.want {
				want = append(want, ids[i])
			}
			var got []string
			for _, in := range reg.Sessions(tc.f) {
				got = append(got, in.ID)
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("Sessions(%+v) = %v, want %v", tc.f, got, want)
			}
		})
	}
	// What each Info says of its session.
	for i, in := range reg.Sessions(Filter{}) {
		su := setups[i]
		if in.ID != ids[i] || in.Route != su.rt.Name || in.Upstream != su.rt.Upstream || in.Target != su.target ||
			in.Client != su.client || in.Subprotocol != fmt.Sprintf("v%d", i) || in.Started.IsZero() || in.Closing {
			t.Errorf("Sessions(all)[%d] = %+v, want id %s route %s/%s target %s client %s subprotocol v%d, not closing",
				i, in, ids[i], su.rt.Name, su.rt.Upstream, su.target, su.client, i)
		}
		if got, ok := reg.Get(in.ID); !ok || got.Target != in.Target || got.Client != in.Client {
			t.Errorf("Get(%q) = %+v, %v; want %+v", in.ID, got, ok, in)
		}
	}
}

// TestSessionInfoLive: a running session's counters grow as frames pass
// either way, on both relay paths: messages count once however many
// frames they have, bytes are payload bytes.
func TestSessionInfoLive(t *testing.T) {
	for _, path := range opsPaths {
		t.Run(path.name, func(t *testing.T) {
			reg := opsRegistry()
			o := startOps(t, reg, opsConfig(reg.Route("chat", "app"), "127.0.0.1:5555"), path.pump)
			info := func() Info {
				in, ok := reg.Get(o.id)
				if !ok {
					t.Fatalf("Get(%q) found no session", o.id)
				}
				return in
			}
			var want Info
			check := func(what string) {
				t.Helper()
				waitFor(t, what, hangGuard, func() bool {
					in := info()
					return in.FromClient == want.FromClient && in.FromBackend == want.FromBackend
				})
			}
			for i := 1; i <= 5; i++ {
				msg := bytes.Repeat([]byte{'c'}, 10*i)
				o.client.send(0x81, msg)
				o.backend.readData(opText, msg)
				want.FromClient = Flow{Messages: int64(i), Bytes: want.FromClient.Bytes + int64(len(msg))}
				check(fmt.Sprintf("client message %d counted", i))
			}
			for i := 1; i <= 5; i++ {
				msg := bytes.Repeat([]byte{'b'}, 1000*i) // 16-bit lengths
				o.backend.send(0x82, msg)
				o.client.readData(opBinary, msg)
				want.FromBackend = Flow{Messages: int64(i), Bytes: want.FromBackend.Bytes + int64(len(msg))}
				check(fmt.Sprintf("backend message %d counted", i))
			}
			// A message of three frames is one message.
			o.backend.send(0x01, []byte("ab"))
			o.backend.send(0x00, []byte("cd"))
			o.backend.send(0x80, []byte("ef"))
			for range 3 {
				o.client.read()
			}
			want.FromBackend = Flow{Messages: 6, Bytes: want.FromBackend.Bytes + 6}
			check("the fragmented message counted once")
			// Control frames are not data.
			o.client.send(0x89, []byte("ping"))
			if f := o.backend.read(); f.opcode != opPing {
				t.Fatalf("backend peer got opcode %d, want the ping", f.opcode)
			}
			if in := info(); in.FromClient != want.FromClient || in.FromBackend != want.FromBackend {
				t.Errorf("after a ping: FromClient %+v FromBackend %+v, want %+v %+v", in.FromClient, in.FromBackend, want.FromClient, want.FromBackend)
			}
			if in := info(); in.LastActive.Before(in.Started) || in.Injected != 0 || in.Closing {
				t.Errorf("Info() = %+v, want LastActive after Started, nothing injected, not closing", in)
			}
		})
	}
}

// TestRegistrySend: Send delivers text and binary messages, of any length
// encoding, to the client as one unfragmented frame; it refuses text that
// is not UTF-8, messages over MaxSend, unknown ids and closing sessions.
func TestRegistrySend(t *testing.T) {
	reg := opsRegistry()
	o := startOps(t, reg, opsConfig(reg.Route("chat", "app"), "127.0.0.1:5555"), false)
	sent := 0
	for _, tc := range []struct {
		name   string
		binary bool
		msg    []byte
	}{
		{"text", false, []byte("hello, client ✓")},
		{"binary", true, []byte{0, 1, 2, 0xff}},
		{"binary, not UTF-8", true, []byte{0xff, 0xfe}},
		{"empty text", false, nil},
		{"16-bit length", false, bytes.Repeat([]byte("x"), 300)},
		{"64-bit length", true, bytes.Repeat([]byte{7}, 70000)},
		{"MaxSend", true, bytes.Repeat([]byte{9}, MaxSend)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errc := make(chan error, 1)
			go func() { errc <- reg.Send(o.id, tc.binary, tc.msg) }() // a big one waits for the reader
			opcode := byte(opText)
			if tc.binary {
				opcode = opBinary
			}
			o.client.readData(opcode, tc.msg)
			if err := <-errc; err != nil {
				t.Fatalf("Send(%q, %v, %d bytes) = %v, want nil", o.id, tc.binary, len(tc.msg), err)
			}
			sent++
		})
	}
	if in, _ := reg.Get(o.id); in.Injected != int64(sent) || in.FromBackend != (Flow{}) {
		t.Errorf("Info().Injected = %d, FromBackend %+v; want %d and nothing from the backend", in.Injected, in.FromBackend, sent)
	}
	// The session relays on as before.
	o.exchange(10)

	for _, tc := range []struct {
		name   string
		id     string
		binary bool
		msg    []byte
		want   error
	}{
		{"text not UTF-8", o.id, false, []byte{'a', 0xff, 'b'}, ErrTooBig},
		{"text cut mid-rune", o.id, false, []byte("✓")[:2], ErrTooBig},
		{"over MaxSend", o.id, true, make([]byte, MaxSend+1), ErrTooBig},
		{"unknown id", "zzzzzzzzzzzz", false, []byte("x"), ErrNotFound},
		{"not an id", "session 1", false, []byte("x"), ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := reg.Send(tc.id, tc.binary, tc.msg); err != tc.want {
				t.Errorf("Send(%q, %v, %d bytes) = %v, want %v", tc.id, tc.binary, len(tc.msg), err, tc.want)
			}
		})
	}
	// Nothing of the refused messages reached the client.
	o.backend.send(0x81, []byte("next"))
	o.client.readData(opText, []byte("next"))

	// Closing: refused; ended: not found.
	if err := reg.Close(o.id, 4000, "bye"); err != nil {
		t.Fatalf("Close(%q) = %v, want nil", o.id, err)
	}
	o.client.expectClose(4000, "bye")
	if err := reg.Send(o.id, false, []byte("late")); err != ErrClosing {
		t.Errorf("Send(%q) while closing = %v, want %v", o.id, err, ErrClosing)
	}
	o.backend.expectClose(closeGoingAway, "going away")
	o.client.sendClose(4000, "bye")
	o.backend.sendClose(closeGoingAway, "")
	o.waitGone()
	if err := reg.Send(o.id, false, []byte("late")); err != ErrNotFound {
		t.Errorf("Send(%q) after the end = %v, want %v", o.id, err, ErrNotFound)
	}
	o.client.expectEOF()
}

// TestSendBetweenMessages: a message Send injects never lands between the
// frames of a fragmented message the backend is sending (RFC 6455 §5.4:
// the client would take it for a protocol error); it waits for the final
// frame, whichever path relays the frames, with a ping in the middle or a
// first frame larger than one read. The client's own fragmented message,
// going the other way, does not hold it up.
func TestSendBetweenMessages(t *testing.T) {
	small := []byte("first part, ")
	big := bytes.Repeat([]byte("streamed "), 12000) // 108000 bytes: over one read buffer
	for _, path := range opsPaths {
		for _, tc := range []struct {
			name  string
			first []byte
			ping  bool
		}{
			{"small fragment", small, false},
			{"ping mid-message", small, true},
			{"streamed fragment", big, false},
		} {
			t.Run(path.name+"/"+tc.name, func(t *testing.T) {
				reg := opsRegistry()
				o := startOps(t, reg, opsConfig(reg.Route("chat", "app"), "127.0.0.1:5555"), path.pump)
				o.exchange(10) // both legs have relayed once (and parked again on the poller path)

				o.backend.send(0x01, tc.first) // text, more to come
				f := o.client.read()
				if f.fin || f.opcode != opText || !bytes.Equal(f.payload, tc.first) {
					t.Fatalf("client got fin %v opcode %d, %d bytes; want the first fragment", f.fin, f.opcode, len(f.payload))
				}
				if tc.ping {
					o.backend.send(0x89, []byte("mid"))
					if f := o.client.read(); f.opcode != opPing || string(f.payload) != "mid" {
						t.Fatalf("client got opcode %d %q, want the ping", f.opcode, f.payload)
					}
				}
				errc := make(chan error, 1)
				go func() { errc <- reg.Send(o.id, true, []byte("injected")) }()
				o.client.expectNothing(300 * time.Millisecond)
				select {
				case err := <-errc:
					t.Fatalf("Send returned %v while the backend's message was unfinished, want it to wait", err)
				default:
				}
				o.backend.send(0x80, []byte("last part"))
				f = o.client.read()
				if !f.fin || f.opcode != opContinuation || string(f.payload) != "last part" {
					t.Fatalf("client got fin %v opcode %d %.20q; want the final continuation frame before anything else", f.fin, f.opcode, f.payload)
				}
				o.client.readData(opBinary, []byte("injected"))
				select {
				case err := <-errc:
					if err != nil {
						t.Fatalf("Send = %v, want nil", err)
					}
				case <-time.After(hangGuard):
					t.Fatal("Send did not return after the message ended")
				}
				// And the relay goes on.
				o.exchange(100)
			})
		}
		t.Run(path.name+"/client's fragmented message", func(t *testing.T) {
			reg := opsRegistry()
			o := startOps(t, reg, opsConfig(reg.Route("chat", "app"), "127.0.0.1:5555"), path.pump)
			o.client.send(0x02, []byte("client part")) // binary, more to come
			if f := o.backend.read(); f.fin || string(f.payload) != "client part" {
				t.Fatalf("backend got fin %v %q, want the first fragment", f.fin, f.payload)
			}
			errc := make(chan error, 1)
			go func() { errc <- reg.Send(o.id, false, []byte("injected")) }()
			o.client.readData(opText, []byte("injected"))
			if err := <-errc; err != nil {
				t.Fatalf("Send = %v, want nil", err)
			}
			o.client.send(0x80, []byte(" end"))
			if f := o.backend.read(); !f.fin || f.opcode != opContinuation || string(f.payload) != " end" {
				t.Fatalf("backend got fin %v opcode %d %q, want the final fragment", f.fin, f.opcode, f.payload)
			}
		})
	}
}

// TestSendBusy: a Send that waits for the end of the backend's message
// for the whole write timeout gives up with ErrBusy and injects nothing.
func TestSendBusy(t *testing.T) {
	reg := opsRegistry()
	c := opsConfig(reg.Route("chat", "app"), "127.0.0.1:5555")
	c.Write = 500 * time.Millisecond // how long Send waits
	o := startOps(t, reg, c, false)
	o.backend.send(0x01, []byte("never ending"))
	if f := o.client.read(); f.fin {
		t.Fatal("client got a final frame, want the first fragment")
	}
	if err := reg.Send(o.id, false, []byte("injected")); err != ErrBusy {
		t.Fatalf("Send(%q) mid-message = %v, want %v", o.id, err, ErrBusy)
	}
	o.backend.send(0x80, []byte(" after all"))
	if f := o.client.read(); !f.fin || f.opcode != opContinuation {
		t.Fatalf("client got fin %v opcode %d, want the final fragment", f.fin, f.opcode)
	}
	o.backend.send(0x81, []byte("next"))
	o.client.readData(opText, []byte("next")) // not "injected"
	if in, _ := reg.Get(o.id); in.Injected != 0 {
		t.Errorf("Info().Injected = %d, want 0", in.Injected)
	}
}

// TestRegistryClose: Close sends its code and reason to the client and
// 1001 to the backend; a second Close while the handshake runs is
// ErrClosing, one after the end ErrNotFound. The recent closes record
// who closed, why, and what each peer answered. Before Run, Close is
// remembered and Run sends it; the first one wins, later ones return nil.
func TestRegistryClose(t *testing.T) {
	for _, path := range opsPaths {
		t.Run(path.name, func(t *testing.T) {
			reg := opsRegistry()
			o := startOps(t, reg, opsConfig(reg.Route("chat", "app"), "127.0.0.1:5555"), path.pump)
			o.client.send(0x81, []byte("hi"))
			o.backend.readData(opText, []byte("hi"))
			o.backend.send(0x81, []byte("hello"))
			o.client.readData(opText, []byte("hello"))

			if err := reg.Close(o.id, 4000, "bye"); err != nil {
				t.Fatalf("Close(%q, 4000, %q) = %v, want nil", o.id, "bye", err)
			}
			o.client.expectClose(4000, "bye")
			o.backend.expectClose(closeGoingAway, "going away")
			if in, ok := reg.Get(o.id); !ok || !in.Closing {
				t.Errorf("Get(%q) = Closing %v, %v; want a closing session", o.id, in.Closing, ok)
			}
			if err := reg.Close(o.id, 4001, "again"); err != ErrClosing {
				t.Errorf("second Close(%q) = %v, want %v", o.id, err, ErrClosing)
			}
			o.client.sendClose(4000, "bye")
			o.backend.sendClose(closeGoingAway, "")
			o.waitGone()
			o.client.expectEOF()
			o.backend.expectEOF()
			if err := reg.Close(o.id, 4000, "bye"); err != ErrNotFound {
				t.Errorf("Close(%q) after the end = %v, want %v", o.id, err, ErrNotFound)
			}
			closes := reg.Closes()
			if len(closes) != 1 {
				t.Fatalf("Closes() has %d entries, want 1", len(closes))
			}
			got := closes[0]
			want := Closed{
				ID: o.id, Route: "chat", Upstream: "app", Target: "http://127.0.0.1:1", Client: "127.0.0.1:5555",
				ClientCode: 4000, BackendCode: closeGoingAway, ClosedBy: "wsgate", Reason: "bye",
				FromClient: Flow{1, 2}, FromBackend: Flow{1, 5},
			}
			if got.Started.IsZero() || got.Ended.Before(got.Started) {
				t.Errorf("Closes()[0] Started %v Ended %v, want an end after the start", got.Started, got.Ended)
			}
			got.Started, got.Ended = time.Time{}, time.Time{}
			if got != want {
				t.Errorf("Closes()[0] = %+v\nwant %+v", got, want)
			}
		})
	}

	t.Run("before Run", func(t *testing.T) {
		reg := opsRegistry()
		clientPeer, clientConn := tcpPair(t)
		backendConn, backendPeer := tcpPair(t)
		reg.BeginUpgrade()
		s := reg.NewSession(opsConfig(reg.Route("chat", "app"), "127.0.0.1:5555"), backendConn, nil)
		reg.EndUpgrade(s)
		id := s.ID()
		if err := reg.Close(id, 4002, "early"); err != nil {
			t.Fatalf("Close(%q) before Run = %v, want nil", id, err)
		}
		if err := reg.Close(id, 4003, "later"); err != nil {
			t.Errorf("second Close(%q) before Run = %v, want nil (the first one wins)", id, err)
		}
		go s.Run(clientConn, nil)
		o := &opsSession{
			t: t, reg: reg, id: id,
			client:  &opsPeer{t: t, side: "client", conn: clientPeer, br: bufio.NewReaderSize(clientPeer, 128<<10), client: true},
			backend: &opsPeer{t: t, side: "backend", conn: backendPeer, br: bufio.NewReaderSize(backendPeer, 128<<10)},
		}
		o.client.expectClose(4002, "early")
		o.backend.expectClose(closeGoingAway, "going away")
		o.client.sendClose(4002, "early")
		o.backend.sendClose(closeGoingAway, "")
		o.waitGone()
		if c := reg.Closes(); len(c) != 1 || c[0].ClosedBy != "wsgate" || c[0].Reason != "early" || c[0].ClientCode != 4002 {
			t.Errorf("Closes() = %+v, want one session closed by wsgate, reason %q, client code 4002", c, "early")
		}
	})
}

// TestSendBeforeRun: a Send to a session whose 101 is on its way (listed,
// not yet running) waits for it to start, then arrives first.
func TestSendBeforeRun(t *testing.T) {
	reg := opsRegistry()
	clientPeer, clientConn := tcpPair(t)
	backendConn, backendPeer := tcpPair(t)
	reg.BeginUpgrade()
	s := reg.NewSession(opsConfig(reg.Route("chat", "app"), "127.0.0.1:5555"), backendConn, nil)
	reg.EndUpgrade(s)
	sent := make(chan error, 1)
	go func() { sent <- reg.Send(s.ID(), false, []byte("early")) }()
	select {
	case err := <-sent:
		t.Fatalf("Send before Run returned %v before the session started", err)
	case <-time.After(100 * time.Millisecond): // a lower bound: it must still wait
	}
	go s.Run(clientConn, nil)
	o := &opsSession{
		t: t, reg: reg, id: s.ID(),
		client:  &opsPeer{t: t, side: "client", conn: clientPeer, br: bufio.NewReaderSize(clientPeer, 128<<10), client: true},
		backend: &opsPeer{t: t, side: "backend", conn: backendPeer, br: bufio.NewReaderSize(backendPeer, 128<<10)},
	}
	select {
	case err := <-sent:
		if err != nil {
			t.Fatalf("Send before Run = %v once it ran, want nil", err)
		}
	case <-time.After(hangGuard):
		t.Fatal("Send before Run did not return after the session started")
	}
	o.client.readData(opText, []byte("early"))
	o.clientCloses(closeNormal, "")
	o.waitGone()
}

// TestRegistryBroadcast: Broadcast reaches every session of the route,
// and only those; a closing session neither gets it nor counts.
func TestRegistryBroadcast(t *testing.T) {
	reg := opsRegistry()
	chat, news := reg.Route("chat", "app"), reg.Route("news", "app")
	var chats []*opsSession
	for i := range 3 {
		chats = append(chats, startOps(t, reg, opsConfig(chat, "127.0.0.1:5555"), i == 1))
	}
	other := startOps(t, reg, opsConfig(news, "127.0.0.1:5555"), false)
	// Same route name on another upstream (the route moved in a reload):
	// still the route "chat".
	moved := startOps(t, reg, opsConfig(reg.Route("chat", "app2"), "127.0.0.1:5555"), false)
	closing := startOps(t, reg, opsConfig(chat, "127.0.0.1:5555"), false)
	if err := reg.Close(closing.id, 4000, "bye"); err != nil {
		t.Fatal(err)
	}
	closing.client.expectClose(4000, "bye")

	if n := reg.Broadcast("chat", false, []byte("to chat")); n != 4 {
		t.Errorf("Broadcast(%q) = %d, want 4", "chat", n)
	}
	for _, o := range append(chats, moved) {
		o.client.readData(opText, []byte("to chat"))
	}
	if n := reg.Broadcast("news", true, []byte("to news")); n != 1 {
		t.Errorf("Broadcast(%q) = %d, want 1", "news", n)
	}
	other.client.readData(opBinary, []byte("to news")) // the first it got: not the chat one
	if n := reg.Broadcast("nope", false, []byte("to nobody")); n != 0 {
		t.Errorf("Broadcast(%q) = %d, want 0", "nope", n)
	}
	// The closing session got nothing after its close.
	closing.client.sendClose(4000, "bye")
	closing.backend.expectClose(closeGoingAway, "going away")
	closing.backend.sendClose(closeGoingAway, "")
	closing.waitGone()
	closing.client.expectEOF()
	for _, o := range chats {
		if in, _ := reg.Get(o.id); in.Injected != 1 {
			t.Errorf("session %s: Injected = %d, want 1", o.id, in.Injected)
		}
	}
}

// routeStats returns the stats of route name on upstream, or fails.
func routeStats(t testing.TB, reg *Registry, name, upstream string) RouteStats {
	t.Helper()
	for _, st := range reg.Stats() {
		if st.Route == name && st.Upstream == upstream {
			return st
		}
	}
	t.Fatalf("Stats() has no route %s/%s", name, upstream)
	return RouteStats{}
}

// sizeCountsOf returns the size histogram counts of messages of the given
// sizes, computed from SizeBounds.
func sizeCountsOf(sizes ...int) []uint64 {
	counts := make([]uint64, len(SizeBounds)+1)
	for _, n := range sizes {
		i := 0
		for i < len(SizeBounds) && float64(n) > SizeBounds[i] {
			i++
		}
		counts[i]++
	}
	return counts
}

// TestRegistryStats: a route's stats add up its live and ended sessions:
// nothing counted twice or lost when a session ends; each way a session
// ends has its key; sizes fall into their buckets; the totals outlive the
// sessions and go on growing when the route is asked for again.
func TestRegistryStats(t *testing.T) {
	reg := opsRegistry()
	rt := reg.Route("chat", "app")
	reg.Route("news", "app") // no session uses it
	sizes := []int{10, 100, 5000}
	ends := []struct {
		name                    string
		end                     func(o *opsSession)
		key                     EndKey
		clientCode, backendCode uint16
		reason                  string
	}{
		{"client closes", func(o *opsSession) { o.clientCloses(closeNormal, "done") }, EndKey{1000, "client"}, 1000, 1000, "done"},
		{"backend closes", func(o *opsSession) { o.backendCloses(4001, "backend bye") }, EndKey{4001, "backend"}, 4001, 4001, "backend bye"},
		{"client drops", func(o *opsSession) { o.clientDrops() }, EndKey{1006, "client"}, 0, closeGoingAway, ""},
		{"backend drops", func(o *opsSession) { o.backendDrops() }, EndKey{1006, "backend"}, closeInternalError, 0, ""},
		{"client protocol error", func(o *opsSession) { o.clientBreaksProtocol() }, EndKey{1002, "wsgate"}, 0, closeGoingAway, "unmasked client frame"},
		{"wsgate closes", func(o *opsSession) { o.wsgateCloses(4000, "bye") }, EndKey{4000, "wsgate"}, 4000, closeGoingAway, "bye"},
	}
	sessions := make([]*opsSession, len(ends))
	for i := range ends {
		sessions[i] = startOps(t, reg, opsConfig(rt, "127.0.0.1:5555"), i%2 == 1)
		sessions[i].exchange(sizes...)
	}
	n := int64(len(ends))
	perSession := int64(10 + 100 + 5000)
	wantFlow := FlowStats{
		Messages: 3 * n, Bytes: perSession * n,
		Sizes: Histogram{Counts: sizeCountsOf(slices.Repeat(sizes, len(ends))...), Sum: float64(perSession * n)},
	}
	if got := sizeCountsOf(10, 100, 5000); fmt.Sprint(got) != "[1 1 0 0 1 0 0 0 0]" {
		t.Fatalf("sizeCountsOf(10, 100, 5000) = %v: the test's buckets disagree with SizeBounds %v", got, SizeBounds)
	}
	checkFlows := func(when string, st RouteStats, want FlowStats) {
		t.Helper()
		for _, dir := range []struct {
			name string
			got  FlowStats
		}{{"FromClient", st.FromClient}, {"FromBackend", st.FromBackend}} {
			if !reflect.DeepEqual(dir.got, want) {
				t.Errorf("%s: %s = %+v, want %+v", when, dir.name, dir.got, want)
			}
		}
	}

	live := routeStats(t, reg, "chat", "app")
	if live.Open != len(ends) || live.Opened != n || len(live.Ended) != 0 || sum(live.Durations.Counts) != 0 {
		t.Errorf("live: Open %d Opened %d Ended %v Durations %v; want %d open, %d opened, none ended",
			live.Open, live.Opened, live.Ended, live.Durations.Counts, len(ends), n)
	}
	checkFlows("live", live, wantFlow)

	wantEnded := map[EndKey]int64{}
	for i, e := range ends {
		t.Run(e.name, func(t *testing.T) {
			e.end(sessions[i])
			wantEnded[e.key]++
			st := routeStats(t, reg, "chat", "app")
			if !maps.Equal(st.Ended, wantEnded) {
				t.Errorf("Ended = %v, want %v", st.Ended, wantEnded)
			}
			if st.Open != len(ends)-i-1 || st.Opened != n {
				t.Errorf("Open %d Opened %d, want %d and %d", st.Open, st.Opened, len(ends)-i-1, n)
			}
			checkFlows("after "+e.name, st, wantFlow) // moved from live to ended: the same
			if d := sum(st.Durations.Counts); d != uint64(i+1) {
				t.Errorf("Durations counts %v add up to %d, want %d", st.Durations.Counts, d, i+1)
			}
			c := reg.Closes()[0]
			if c.ID != sessions[i].id || c.ClosedBy != e.key.By || c.ClientCode != e.clientCode || c.BackendCode != e.backendCode ||
				c.Reason != e.reason || c.FromClient != (Flow{3, perSession}) || c.FromBackend != (Flow{3, perSession}) {
				t.Errorf("Closes()[0] = %+v, want session %s closed by %s, client code %d, backend code %d, reason %q, 3 messages of %d bytes each way",
					c, sessions[i].id, e.key.By, e.clientCode, e.backendCode, e.reason, perSession)
			}
		})
	}
	st := routeStats(t, reg, "chat", "app")
	if st.Open != 0 || st.Durations.Sum <= 0 {
		t.Errorf("after all ended: Open %d, Durations.Sum %v; want 0 open and a positive sum", st.Open, st.Durations.Sum)
	}
	if c := reg.Closes(); len(c) != len(ends) {
		t.Errorf("Closes() has %d entries, want %d", len(c), len(ends))
	}
	if news := routeStats(t, reg, "news", "app"); news.Open != 0 || news.Opened != 0 || len(news.Ended) != 0 || news.FromClient.Messages != 0 {
		t.Errorf("route news: %+v, want nothing counted", news)
	}

	// The route, asked for again (a reload), is the same one: its totals
	// go on.
	rt2 := reg.Route("chat", "app")
	if rt2 != rt {
		t.Fatalf("Route(%q, %q) = %p, then %p; want the same route", "chat", "app", rt, rt2)
	}
	o := startOps(t, reg, opsConfig(rt2, "127.0.0.1:5555"), false)
	o.exchange(70000) // a bucket of its own
	o.clientCloses(closeNormal, "")
	st = routeStats(t, reg, "chat", "app")
	wantEnded[EndKey{1000, "client"}]++
	wantFlow.Messages++
	wantFlow.Bytes += 70000
	wantFlow.Sizes.Sum += 70000
	wantFlow.Sizes.Counts[sizeCountsOfIndex(70000)]++
	if st.Opened != n+1 || st.Open != 0 || !maps.Equal(st.Ended, wantEnded) || sum(st.Durations.Counts) != uint64(n+1) {
		t.Errorf("after one more session: Opened %d Open %d Ended %v Durations %v; want %d opened, 0 open, %v ended",
			st.Opened, st.Open, st.Ended, st.Durations.Counts, n+1, wantEnded)
	}
	checkFlows("after one more session", st, wantFlow)
}

// sizeCountsOfIndex returns the bucket of a message of n bytes.
func sizeCountsOfIndex(n int) int {
	for i, c := range sizeCountsOf(n) {
		if c > 0 {
			return i
		}
	}
	return -1
}

func sum(counts []uint64) uint64 {
	var n uint64
	for _, c := range counts {
		n += c
	}
	return n
}

// TestSizeBuckets: each message size falls into the bucket SizeBounds
// says, the bounds themselves included.
func TestSizeBuckets(t *testing.T) {
	var sizes []int64
	for _, b := range SizeBounds {
		sizes = append(sizes, int64(b)-1, int64(b), int64(b)+1)
	}
	sizes = append(sizes, 0, 1, 1<<40, 1<<62)
	for _, n := range sizes {
		var c sizeCounts
		c.observe(n)
		want := sizeCountsOf(int(n))
		for i := range c {
			if got := uint64(c[i].Load()); got != want[i] {
				t.Errorf("observe(%d): bucket %d = %d, want %d (bounds %v)", n, i, got, want[i], SizeBounds)
			}
		}
	}
}

// TestClosesKeepsFifty: Closes remembers the last 50 ended sessions, the
// most recent first.
func TestClosesKeepsFifty(t *testing.T) {
	reg := opsRegistry()
	rt := reg.Route("chat", "app")
	var ids []string
	const keep = 50 // Closes' documented length
	for i := range keep + 7 {
		o := startOps(t, reg, opsConfig(rt, "127.0.0.1:5555"), false)
		ids = append(ids, o.id)
		o.clientCloses(closeNormal, strconv.Itoa(i))
		closes := reg.Closes()
		if want := min(i+1, keep); len(closes) != want {
			t.Fatalf("after %d ended: Closes() has %d entries, want %d", i+1, len(closes), want)
		}
		if closes[0].ID != o.id || closes[0].Reason != strconv.Itoa(i) {
			t.Fatalf("after %d ended: Closes()[0] = %s %q, want %s %q", i+1, closes[0].ID, closes[0].Reason, o.id, strconv.Itoa(i))
		}
	}
	closes := reg.Closes()
	for i, c := range closes {
		j := len(ids) - 1 - i
		if c.ID != ids[j] || c.Reason != strconv.Itoa(j) {
			t.Errorf("Closes()[%d] = %s %q, want %s %q", i, c.ID, c.Reason, ids[j], strconv.Itoa(j))
		}
	}
	if len(closes) != keep {
		t.Errorf("len(Closes()) = %d, want %d", len(closes), keep)
	}
}

// TestSendBusyMidFrame: a Send while the backend has sent only part of a
// large frame (the relay streams it to the client as it comes) gives up
// with ErrBusy after the write timeout, as Send's doc says, rather than
// waiting for the rest of the frame, which a stalled backend may send
// only when the idle timeout ends the session.
func TestSendBusyMidFrame(t *testing.T) {
	for _, path := range opsPaths {
		t.Run(path.name, func(t *testing.T) {
			reg := opsRegistry()
			c := opsConfig(reg.Route("chat", "app"), "127.0.0.1:5555")
			c.Write = 500 * time.Millisecond // how long Send waits
			o := startOps(t, reg, c, path.pump)
			payload := bytes.Repeat([]byte{'x'}, 100000) // over one read buffer: streamed
			frame := makeFrame(0x82, nil, payload)
			half := len(frame) / 2
			if _, err := o.backend.conn.Write(frame[:half]); err != nil {
				t.Fatal(err)
			}
			// The client gets the first half: the relay is inside the frame.
			_ = o.client.conn.SetReadDeadline(time.Now().Add(hangGuard))
			if _, err := io.ReadFull(o.client.br, make([]byte, half)); err != nil {
				t.Fatalf("client peer: read the first half: %v", err)
			}
			errc := make(chan error, 1)
			go func() { errc <- reg.Send(o.id, false, []byte("injected")) }()
			select {
			case err := <-errc:
				if err != ErrBusy {
					t.Errorf("Send(%q) mid-frame = %v, want %v", o.id, err, ErrBusy)
				}
			case <-time.After(hangGuard):
				t.Fatalf("Send(%q) mid-frame did not return within %v; its write timeout is %v", o.id, hangGuard, c.Write)
			}
			if _, err := o.backend.conn.Write(frame[half:]); err != nil {
				t.Fatal(err)
			}
			_ = o.client.conn.SetReadDeadline(time.Now().Add(hangGuard))
			if _, err := io.ReadFull(o.client.br, make([]byte, len(frame)-half)); err != nil {
				t.Fatalf("client peer: read the second half: %v", err)
			}
			o.backend.send(0x81, []byte("next"))
			o.client.readData(opText, []byte("next")) // not "injected"
		})
	}
}

// TestStreamedFramePause: a peer that pauses in the middle of a large
// frame for longer than the write timeout does not cost the other peer
// its connection: the write timeout bounds silence while writing (the
// other peer not reading), not the wait for the rest of the frame.
func TestStreamedFramePause(t *testing.T) {
	for _, path := range opsPaths {
		for _, dir := range []string{"from backend", "from client"} {
			t.Run(path.name+"/"+dir, func(t *testing.T) {
				reg := opsRegistry()
				c := opsConfig(reg.Route("chat", "app"), "127.0.0.1:5555")
				c.Write = 300 * time.Millisecond
				o := startOps(t, reg, c, path.pump)
				from, to := o.backend, o.client
				if dir == "from client" {
					from, to = o.client, o.backend
				}
				payload := bytes.Repeat([]byte("0123456789"), 10000) // over one read buffer: streamed
				var key *[4]byte
				if from.client {
					key = &[4]byte{1, 2, 3, 4}
				}
				frame := makeFrame(0x82, key, payload)
				half := len(frame) / 2
				if _, err := from.conn.Write(frame[:half]); err != nil {
					t.Fatal(err)
				}
				// The first half is relayed (a masked one grows by no byte).
				_ = to.conn.SetReadDeadline(time.Now().Add(hangGuard))
				if _, err := to.br.Peek(half); err != nil {
					t.Fatalf("%s peer: the first half did not arrive: %v", to.side, err)
				}
				// The pause, longer than the write timeout; nothing more
				// comes meanwhile (a lower bound: this waits it out).
				_ = to.conn.SetReadDeadline(time.Now().Add(3 * c.Write))
				if _, err := to.br.Peek(half + 1); !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("%s peer: Peek past the first half = %v, want a timeout", to.side, err)
				}
				if _, err := from.conn.Write(frame[half:]); err != nil {
					t.Fatal(err)
				}
				to.readData(opBinary, payload)
				o.exchange(10)
			})
		}
	}
}

// TestSlowClientCutByWsgate: a client that stops reading is cut by
// wsgate's write timeout; the session's end says wsgate closed first
// (code 1006: no close frame could go out), not the client.
func TestSlowClientCutByWsgate(t *testing.T) {
	reg := opsRegistry()
	c := opsConfig(reg.Route("chat", "app"), "127.0.0.1:5555")
	c.Write = 200 * time.Millisecond
	o := startOps(t, reg, c, true)
	if tc, ok := o.client.conn.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(4 << 10) // the client reads nothing: fill its buffers soon
	}
	// The backend sends until the relay's write to the client times
	// out and wsgate cuts it; a bounded number of 64 KiB messages is
	// many times what the socket buffers hold.
	done := make(chan struct{})
	go func() {
		defer close(done)
		payload := make([]byte, 64<<10)
		for range 2000 {
			if _, err := o.backend.conn.Write(makeFrame(0x82, nil, payload)); err != nil {
				return
			}
			if _, ok := reg.Get(o.id); !ok {
				return
			}
		}
	}()
	// Once wsgate has cut the client, the session is closing (its 1001
	// to the backend is out); the backend peer then goes too.
	waitFor(t, "the session to start closing", hangGuard, func() bool {
		in, ok := reg.Get(o.id)
		return !ok || in.Closing
	})
	_ = o.backend.conn.Close()
	<-done
	o.waitGone()
	got := reg.Closes()
	if len(got) != 1 || got[0].ClosedBy != "wsgate" || got[0].Reason != "client write timeout" {
		t.Fatalf("Closes() = %+v, want one session closed by wsgate, reason \"client write timeout\"", got)
	}
	if n := reg.Stats()[0].Ended[EndKey{Code: closeAbnormal, By: "wsgate"}]; n != 1 {
		t.Errorf("Ended[1006 wsgate] = %d, want 1", n)
	}
}

// TestBroadcastSkipsBusySession: a broadcast does not wait a write
// timeout (here an hour) for a session whose backend stopped in the
// middle of a fragmented message: it skips that one after a second and
// reaches the others.
func TestBroadcastSkipsBusySession(t *testing.T) {
	reg := opsRegistry()
	rt := reg.Route("chat", "app")
	c := opsConfig(rt, "127.0.0.1:5555")
	c.Write = time.Hour
	busy := startOps(t, reg, c, false)
	idle := startOps(t, reg, c, false)
	busy.backend.send(0x01, []byte("first half")) // text, not final
	if f := busy.client.read(); f.fin || f.opcode != opText || string(f.payload) != "first half" {
		t.Fatalf("busy client got opcode %d fin %v %q, want the first fragment", f.opcode, f.fin, f.payload)
	}
	sent := make(chan int, 1)
	go func() { sent <- reg.Broadcast("chat", false, []byte("news")) }()
	select {
	case n := <-sent:
		if n != 1 {
			t.Errorf("Broadcast = %d, want 1 (the idle session; the busy one skipped)", n)
		}
	case <-time.After(hangGuard):
		t.Fatal("Broadcast still waiting for the busy session")
	}
	idle.client.readData(opText, []byte("news"))
	busy.backend.send(0x80, []byte(" and the rest")) // continuation, final
	f := busy.client.read()
	if f.opcode != 0 || !f.fin || string(f.payload) != " and the rest" {
		t.Errorf("busy client got opcode %d fin %v %q, want the final continuation and nothing injected", f.opcode, f.fin, f.payload)
	}
}

// TestNewest: the newest sessions first, capped, with the live count.
func TestNewest(t *testing.T) {
	reg := opsRegistry()
	c := opsConfig(reg.Route("chat", "app"), "127.0.0.1:5555")
	var ids []string
	for range 4 {
		ids = append(ids, startOps(t, reg, c, false).id)
	}
	got, total := reg.Newest(3)
	if total != 4 || len(got) != 3 || got[0].ID != ids[3] || got[1].ID != ids[2] || got[2].ID != ids[1] {
		var gotIDs []string
		for _, in := range got {
			gotIDs = append(gotIDs, in.ID)
		}
		t.Errorf("Newest(3) = %v, %d; want %v, 4", gotIDs, total, []string{ids[3], ids[2], ids[1]})
	}
	if got, total := reg.Newest(10); len(got) != 4 || total != 4 {
		t.Errorf("Newest(10) = %d sessions, %d; want 4, 4", len(got), total)
	}
}
