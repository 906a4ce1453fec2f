package wsrelay

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/wsgate/wsgate/ratelimit"
)

// policyConfig is opsConfig with a policy.
func policyConfig(rt *Route, p *Policy) Config {
	c := opsConfig(rt, "192.0.2.1:1000")
	c.Policy = p
	return c
}

// readPing reads frames until wsgate's own ping and returns it (it
// carries pingToken); data frames before it are a failure.
func (p *opsPeer) readPing() rawFrame {
	p.t.Helper()
	f := p.read()
	if f.opcode != opPing || !bytes.Equal(f.payload, pingToken[:]) {
		p.t.Fatalf("%s peer got opcode %d %q, want wsgate's ping", p.side, f.opcode, f.payload)
	}
	return f
}

// readDataAnsweringPings is readData, answering wsgate's pings that come
// before the data frame.
func (p *opsPeer) readDataAnsweringPings(opcode byte, payload []byte) {
	p.t.Helper()
	for {
		f := p.read()
		if f.opcode == opPing && bytes.Equal(f.payload, pingToken[:]) {
			p.send(0x8A, f.payload)
			continue
		}
		if !f.fin || f.rsv != 0 || f.opcode != opcode || !bytes.Equal(f.payload, payload) {
			p.t.Fatalf("%s peer got fin %v rsv %#x opcode %d, %d bytes %.20q; want one frame opcode %d, %d bytes %.20q",
				p.side, f.fin, f.rsv, f.opcode, len(f.payload), f.payload, opcode, len(payload), payload)
		}
		return
	}
}

// TestKeepalivePings: a quiet session gets wsgate's pings on both legs;
// the pongs that answer them are consumed (the other peer sees nothing),
// and the session outlives its idle timeout several times while both
// peers answer. The peers' own pings and pongs still pass.
func TestKeepalivePings(t *testing.T) {
	for _, path := range opsPaths {
		t.Run(path.name, func(t *testing.T) {
			reg := opsRegistry()
			rt := reg.Route("ping", "up")
			c := policyConfig(rt, &Policy{PingInterval: 300 * time.Millisecond, PingTimeout: 5 * time.Second})
			c.Idle = 2 * time.Second
			o := startOps(t, reg, c, path.pump)
			start := time.Now()
			rounds := 0
			for time.Since(start) < 3*c.Idle {
				for _, p := range []*opsPeer{o.client, o.backend} {
					f := p.readPing()
					p.send(0x8A, f.payload) // the pong
				}
				rounds++
			}
			if _, ok := reg.Get(o.id); !ok {
				t.Fatalf("session ended after %v of answered pings (idle timeout %v)", time.Since(start), c.Idle)
			}
			// The peers' own ping and pong pass untouched.
			o.client.send(0x89, []byte("from client"))
			if f := o.backend.read(); f.opcode != opPing || string(f.payload) != "from client" {
				// wsgate's own ping may come first: answer it and look again.
				if f.opcode == opPing && bytes.Equal(f.payload, pingToken[:]) {
					o.backend.send(0x8A, f.payload)
					f = o.backend.read()
				}
				if f.opcode != opPing || string(f.payload) != "from client" {
					t.Fatalf("backend got opcode %d %q, want the client's ping", f.opcode, f.payload)
				}
			}
			// Data still flows both ways; wsgate's pings keep coming
			// (every 300 ms) and may come first.
			msg := bytes.Repeat([]byte{10}, 10)
			o.client.send(0x82, msg)
			o.backend.readDataAnsweringPings(opBinary, msg)
			o.backend.send(0x82, msg)
			o.client.readDataAnsweringPings(opBinary, msg)
			st := routeStats(t, reg, "ping", "up")
			if st.ClientActions.Pings < int64(rounds) || st.BackendActions.Pings < int64(rounds) {
				t.Errorf("pings counted %d client, %d backend; want at least %d each", st.ClientActions.Pings, st.BackendActions.Pings, rounds)
			}
			if st.ClientActions.PingTimeouts+st.BackendActions.PingTimeouts != 0 {
				t.Errorf("ping timeouts counted: %+v %+v", st.ClientActions, st.BackendActions)
			}
			t.Logf("%d rounds of pings in %v", rounds, time.Since(start))
		})
	}
}

// TestPingTimeout: a peer that stops answering (no FIN, no close) is
// found dead after the interval plus the timeout; the other side gets
// 1001 (the client went) or 1011 "upstream unresponsive" (the backend
// went), and the session log says "ping timeout".
func TestPingTimeout(t *testing.T) {
	for _, path := range opsPaths {
		for _, dead := range []string{"client", "backend"} {
			t.Run(path.name+"/"+dead, func(t *testing.T) {
				reg := opsRegistry()
				rt := reg.Route("ping", "up")
				pol := &Policy{PingInterval: 400 * time.Millisecond, PingTimeout: 600 * time.Millisecond}
				// The lower bound is measured from before the session
				// starts: wsgate stamps its ping when written, which may be
				// before this test reads it, so the time from the read to
				// the close can be a little under the timeout.
				begin := time.Now()
				o := startOps(t, reg, policyConfig(rt, pol), path.pump)
				silent, live := o.client, o.backend
				if dead == "backend" {
					silent, live = o.backend, o.client
				}
				silent.readPing() // and never answer
				start := time.Now()
				// The live side answers its pings until the close comes.
				var code uint16
				var reason string
				for {
					f := live.read()
					if f.opcode == opPing {
						live.send(0x8A, f.payload)
						continue
					}
					if f.opcode != opClose || len(f.payload) < 2 {
						t.Fatalf("%s got opcode %d %q, want a close", live.side, f.opcode, f.payload)
					}
					code, reason = uint16(f.payload[0])<<8|uint16(f.payload[1]), string(f.payload[2:])
					break
				}
				took := time.Since(start)
				want, wantReason := uint16(closeGoingAway), "client ping timeout"
				if dead == "backend" {
					want, wantReason = closeInternalError, "upstream unresponsive"
				}
				if code != want || reason != wantReason {
					t.Fatalf("%s got close %d %q, want %d %q", live.side, code, reason, want, wantReason)
				}
				if since := time.Since(begin); since < pol.PingInterval+pol.PingTimeout {
					t.Errorf("dead %v after the session began, before interval + timeout (%v)", since, pol.PingInterval+pol.PingTimeout)
				}
				live.sendClose(code, "")
				o.waitGone()
				closes := reg.Closes()
				last := closes[len(closes)-1]
				if last.ClosedBy != "wsgate" || !strings.Contains(last.Reason, dead+" ping timeout") {
					t.Errorf("recorded close %+v, want by wsgate, a %s ping timeout", last, dead)
				}
				st := routeStats(t, reg, "ping", "up")
				a := st.ClientActions
				if dead == "backend" {
					a = st.BackendActions
				}
				if a.PingTimeouts != 1 {
					t.Errorf("%s ping timeouts = %d, want 1", dead, a.PingTimeouts)
				}
				t.Logf("found dead %v after the first ping (timeout %v)", took, pol.PingTimeout)
			})
		}
	}
}

// TestMessageRateClose: a sender may send its burst, then gets 1008
// "message rate exceeded"; the other side gets 1001. Both directions.
func TestMessageRateClose(t *testing.T) {
	for _, path := range opsPaths {
		for _, sender := range []string{"client", "backend"} {
			t.Run(path.name+"/"+sender, func(t *testing.T) {
				reg := opsRegistry()
				rt := reg.Route("rate", "up")
				// One message a minute after a burst of 5: the sixth, sent
				// at once, is over.
				pol := &Policy{MessageRate: ratelimit.NewLimit(1.0/60, 5)}
				o := startOps(t, reg, policyConfig(rt, pol), path.pump)
				from, to := o.client, o.backend
				if sender == "backend" {
					from, to = o.backend, o.client
				}
				for i := range 5 {
					msg := []byte{byte('a' + i)}
					from.send(0x82, msg)
					to.readData(opBinary, msg)
				}
				from.send(0x82, []byte("one too many"))
				from.expectClose(closePolicyViolation, "message rate exceeded")
				code, _ := to.readClose()
				if code != closeGoingAway {
					t.Errorf("%s got close %d, want 1001", to.side, code)
				}
				st := routeStats(t, reg, "rate", "up")
				a := st.ClientActions
				if sender == "backend" {
					a = st.BackendActions
				}
				if a.RateLimited != 1 {
					t.Errorf("rate limited = %d, want 1", a.RateLimited)
				}
			})
		}
	}
}

// TestMessageRateDrop: with drop, messages over the rate are dropped
// whole (every frame of a fragmented one, with pings between its frames
// still relayed) and counted; the session goes on, and the messages
// within the rate arrive intact.
func TestMessageRateDrop(t *testing.T) {
	for _, path := range opsPaths {
		t.Run(path.name, func(t *testing.T) {
			reg := opsRegistry()
			rt := reg.Route("drop", "up")
			pol := &Policy{MessageRate: ratelimit.NewLimit(1.0/60, 2), DropOverRate: true}
			o := startOps(t, reg, policyConfig(rt, pol), path.pump)
			o.client.send(0x82, []byte("first"))
			o.client.send(0x82, []byte("second"))
			// Over the rate: a single frame, then a fragmented message.
			o.client.send(0x82, []byte("dropped whole"))
			o.client.send(0x01, []byte("drop"))
			o.client.send(0x89, []byte("ping between fragments"))
			o.client.send(0x00, []byte("ped in "))
			o.client.send(0x80, []byte("three frames"))
			o.backend.readData(opBinary, []byte("first"))
			o.backend.readData(opBinary, []byte("second"))
			if f := o.backend.read(); f.opcode != opPing || string(f.payload) != "ping between fragments" {
				t.Fatalf("backend got opcode %d %q, want the client's ping", f.opcode, f.payload)
			}
			// The backend's direction has its own bucket.
			o.backend.send(0x82, []byte("reply"))
			o.client.readData(opBinary, []byte("reply"))
			o.backend.expectNothing(300 * time.Millisecond)
			st := routeStats(t, reg, "drop", "up")
			if st.ClientActions.Dropped != 2 || st.FromClient.Messages != 2 {
				t.Errorf("dropped %d, relayed %d from the client; want 2 and 2", st.ClientActions.Dropped, st.FromClient.Messages)
			}
			if st.ClientActions.RateLimited != 0 {
				t.Errorf("rate limit closes = %d, want 0", st.ClientActions.RateLimited)
			}
		})
	}
}

// TestInvalidUTF8: text that is not UTF-8 gets 1007 to its sender and
// 1001 to the other side, and is not forwarded: a character split across
// fragments is fine, a message ending inside one is not, and binary
// messages are not checked.
func TestInvalidUTF8(t *testing.T) {
	cases := []struct {
		name   string
		frames [][2]any // b0, payload
		valid  bool
	}{
		{"split character", [][2]any{{byte(0x01), "caf\xc3"}, {byte(0x80), "\xa9 ok"}}, true},
		{"binary is not checked", [][2]any{{byte(0x82), "\xff\xfe"}}, true},
		{"invalid byte", [][2]any{{byte(0x81), "ok \xff"}}, false},
		{"surrogate across fragments", [][2]any{{byte(0x01), "a\xed"}, {byte(0x80), "\xa0\x80"}}, false},
		{"ends inside a character", [][2]any{{byte(0x01), "abc"}, {byte(0x80), "\xe2\x82"}}, false},
	}
	for _, path := range opsPaths {
		for _, sender := range []string{"client", "backend"} {
			for _, c := range cases {
				t.Run(path.name+"/"+sender+"/"+c.name, func(t *testing.T) {
					reg := opsRegistry()
					rt := reg.Route("utf8", "up")
					o := startOps(t, reg, policyConfig(rt, &Policy{ValidateUTF8: true}), path.pump)
					from, to := o.client, o.backend
					if sender == "backend" {
						from, to = o.backend, o.client
					}
					var whole []byte
					for _, f := range c.frames {
						p := []byte(unescape(f[1].(string)))
						whole = append(whole, p...)
						from.send(f[0].(byte), p)
					}
					if c.valid {
						for _, f := range c.frames {
							got := to.read()
							if !bytes.Equal(got.payload, []byte(unescape(f[1].(string)))) {
								t.Fatalf("%s got %q, want %q", to.side, got.payload, f[1])
							}
						}
						o.exchange(5)
						return
					}
					from.expectClose(closeInvalidData, "invalid UTF-8 in a text message")
					// The other side may have got the valid fragments
					// before the bad one, never the bad one.
					for {
						f := to.read()
						if f.opcode == opClose {
							if code := uint16(f.payload[0])<<8 | uint16(f.payload[1]); code != closeGoingAway {
								t.Errorf("%s got close %d, want 1001", to.side, code)
							}
							break
						}
						if f.fin {
							t.Fatalf("%s got the last frame %q of the invalid message", to.side, f.payload)
						}
					}
					st := routeStats(t, reg, "utf8", "up")
					if n := st.ClientActions.InvalidUTF8 + st.BackendActions.InvalidUTF8; n != 1 {
						t.Errorf("invalid UTF-8 counted %d times, want 1", n)
					}
					_ = whole
				})
			}
		}
	}
}

// TestInvalidUTF8Streamed: in a text frame larger than a read buffer
// (streamed through in chunks), invalid UTF-8 near its end is found
// before that chunk goes out: the sender gets 1007, and the receiver,
// which already has part of the frame, is cut.
func TestInvalidUTF8Streamed(t *testing.T) {
	reg := opsRegistry()
	rt := reg.Route("utf8", "up")
	o := startOps(t, reg, policyConfig(rt, &Policy{ValidateUTF8: true}), false)
	msg := bytes.Repeat([]byte("é"), 100<<10) // 200 KiB of valid text
	msg[len(msg)-1] = 'x'                     // ... whose last character is cut short
	done := make(chan []byte)
	go func() {
		got, _ := io.ReadAll(o.backend.br)
		done <- got
	}()
	o.client.send(0x81, msg)
	o.client.expectClose(closeInvalidData, "invalid UTF-8 in a text message")
	select {
	case got := <-done:
		if len(got) >= len(msg) {
			t.Errorf("backend got %d bytes, the whole frame of %d", len(got), len(msg))
		}
	case <-time.After(hangGuard):
		t.Fatal("backend connection not cut")
	}
}

// unescape turns \xNN in s into bytes.
func unescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && s[i+1] == 'x' {
			var v byte
			for _, c := range s[i+2 : i+4] {
				v <<= 4
				switch {
				case c >= '0' && c <= '9':
					v |= byte(c - '0')
				default:
					v |= byte(c-'a') + 10
				}
			}
			b.WriteByte(v)
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// TestCloseClientSoon: a schedule's close is sent at once when neither
// leg has a write in progress, and not at all (the caller then waits on a
// goroutine) when one has: it never blocks.
func TestCloseClientSoon(t *testing.T) {
	for _, path := range opsPaths {
		t.Run(path.name, func(t *testing.T) {
			reg := opsRegistry()
			o := startOps(t, reg, opsConfig(reg.Route("soon", "up"), "192.0.2.9:1"), path.pump)
			o.exchange(10)
			s := reg.lookup(o.id)
			s.client.mu.Lock() // a frame in flight to the client
			if s.CloseClientSoon(4000, "later") {
				t.Fatal("CloseClientSoon went on while a write to the client was in progress")
			}
			s.client.mu.Unlock()
			s.backend.mu.Lock()
			if s.CloseClientSoon(4000, "later") {
				t.Fatal("CloseClientSoon went on while a write to the backend was in progress")
			}
			s.backend.mu.Unlock()
			o.client.expectNothing(100 * time.Millisecond)
			if !s.CloseClientSoon(4000, "now") {
				t.Fatal("CloseClientSoon refused with no write in progress")
			}
			o.client.expectClose(4000, "now")
			o.backend.expectClose(closeGoingAway, "going away")
			o.client.sendClose(4000, "now") // the replies end the session
			o.backend.sendClose(closeGoingAway, "")
			o.waitGone()
		})
	}
}
