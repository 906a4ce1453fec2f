package wsrelay

import (
	"bytes"
	"errors"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsgate/wsgate/ratelimit"
)

// readSkippingPings reads the next frame that is not wsgate's own ping,
// answering those pings on the way.
func (p *opsPeer) readSkippingPings() rawFrame {
	p.t.Helper()
	for {
		f := p.read()
		if f.opcode == opPing && bytes.Equal(f.payload, pingToken[:]) {
			p.send(0x8A, f.payload)
			continue
		}
		return f
	}
}

// TestReviewRateLimitedCountedOnce: a sender that bursts past the rate
// gets one 1008, and the session counts once in RateLimited ("sessions
// closed (1008)"), however many messages over the rate it had sent
// before it read the close.
func TestReviewRateLimitedCountedOnce(t *testing.T) {
	for _, path := range opsPaths {
		t.Run(path.name, func(t *testing.T) {
			reg := opsRegistry()
			rt := reg.Route("rate", "up")
			pol := &Policy{MessageRate: ratelimit.NewLimit(1.0/60, 1)}
			o := startOps(t, reg, policyConfig(rt, pol), path.pump)
			// Six messages in one write: the first is within the burst,
			// the five others over the rate.
			var burst []byte
			key := [4]byte{0x5a, 0x13, 0xc7, 0x01}
			for i := range 6 {
				burst = append(burst, makeFrame(0x82, &key, []byte{byte('a' + i)})...)
			}
			if _, err := o.client.conn.Write(burst); err != nil {
				t.Fatal(err)
			}
			o.backend.readData(opBinary, []byte("a"))
			o.client.expectClose(closePolicyViolation, closeRateReason)
			o.backend.expectClose(closeGoingAway, "client message rate exceeded")
			o.client.sendClose(closePolicyViolation, "")
			o.backend.sendClose(closeGoingAway, "")
			o.waitGone() // every frame of the burst has been read by now
			st := routeStats(t, reg, "rate", "up")
			if st.ClientActions.RateLimited != 1 {
				t.Errorf("ClientActions.RateLimited = %d for one session closed with 1008, want 1", st.ClientActions.RateLimited)
			}
		})
	}
}

// TestReviewInvalidUTF8NotCountedAfterClose: a valid text message
// whose first (streamed) frame is over max_message_size closes the
// session with 1009; its valid continuation must not then be judged
// invalid UTF-8 (the discarded streamed frame was never checked, so the
// check's state is stale) and counted as a 1007 close.
func TestReviewInvalidUTF8NotCountedAfterClose(t *testing.T) {
	for _, path := range opsPaths {
		t.Run(path.name, func(t *testing.T) {
			reg := opsRegistry()
			rt := reg.Route("utf8", "up")
			c := policyConfig(rt, &Policy{ValidateUTF8: true})
			c.MaxMessage = 64 << 10
			o := startOps(t, reg, c, path.pump)
			first := bytes.Repeat([]byte("é"), 50<<10) // 100 KiB, over the limit: streamed
			first = first[:len(first)-1]               // ... ending inside "é"
			o.client.send(0x01, first)
			o.client.send(0x80, []byte{0xA9}) // the rest of "é": the message is valid UTF-8
			o.client.expectClose(closeTooBig, errMessageTooBig.Error())
			o.backend.expectClose(closeGoingAway, "client message too big")
			o.client.sendClose(closeTooBig, "")
			o.backend.sendClose(closeGoingAway, "")
			_ = o.client.conn.Close() // after its reply, as a client seeing a FIN would
			o.waitGone()
			st := routeStats(t, reg, "utf8", "up")
			if st.ClientActions.InvalidUTF8 != 0 {
				t.Errorf("ClientActions.InvalidUTF8 = %d for valid text (closed with 1009), want 0", st.ClientActions.InvalidUTF8)
			}
			// The client's close reply is read as a close, not drained away
			// by failProtocol as what a protocol violator sends after its 1007.
			if closes := reg.Closes(); len(closes) != 1 || closes[0].ClientCode != closeTooBig {
				t.Errorf("Closes() = %+v, want one session whose client sent 1009", closes)
			}
		})
	}
}

// pausedFrame starts a session with pings on, has the backend send the
// first half of a frame larger than a read buffer (streamed: the relay
// holds the client leg's write lock until the frame ends), and waits out
// pause, longer than the ping interval plus its timeout, with the client
// silent. It returns the session and the rest of the frame.
func pausedFrame(t *testing.T, pump bool, pol *Policy, pause time.Duration) (o *opsSession, rest []byte, payload []byte) {
	reg := opsRegistry()
	rt := reg.Route("ping", "up")
	o = startOps(t, reg, policyConfig(rt, pol), pump)
	payload = bytes.Repeat([]byte("0123456789"), 10000)
	frame := makeFrame(0x82, nil, payload)
	half := len(frame) / 2
	if _, err := o.backend.conn.Write(frame[:half]); err != nil {
		t.Fatal(err)
	}
	_ = o.client.conn.SetReadDeadline(time.Now().Add(hangGuard))
	if _, err := o.client.br.Peek(half); err != nil {
		t.Fatalf("client peer: the first half did not arrive: %v", err)
	}
	// The pause: nothing more reaches the client (a lower bound: this
	// waits it out).
	_ = o.client.conn.SetReadDeadline(time.Now().Add(pause))
	if _, err := o.client.br.Peek(half + 1); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("client peer: Peek past the first half = %v, want a timeout", err)
	}
	return o, frame[half:], payload
}

// TestReviewPingAfterBlockedWrite: a silent client whose keepalive ping
// could not go out while the backend's large frame held the client leg
// (the backend paused mid-frame) gets the full ping timeout to answer
// once the ping does go out. A client that answers 50 ms after the ping
// is alive and keeps its session.
func TestReviewPingAfterBlockedWrite(t *testing.T) {
	for _, path := range opsPaths {
		t.Run(path.name, func(t *testing.T) {
			pol := &Policy{PingInterval: 300 * time.Millisecond, PingTimeout: 2 * time.Second}
			o, rest, payload := pausedFrame(t, path.pump, pol, pol.PingInterval+pol.PingTimeout+500*time.Millisecond)
			if _, err := o.backend.conn.Write(rest); err != nil {
				t.Fatal(err)
			}
			o.client.readData(opBinary, payload)
			ping := o.client.readPing()
			// A round trip of 50 ms, well within the 2 s timeout.
			_ = o.client.conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			if f, err := readRawFrame(o.client.br); err == nil {
				t.Fatalf("client peer got opcode %d %q before it answered the ping", f.opcode, f.payload)
			} else if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("client connection cut %v after wsgate's ping was sent (ping timeout %v): %v", 50*time.Millisecond, pol.PingTimeout, err)
			}
			o.client.send(0x8A, ping.payload)
			o.client.send(0x82, []byte("alive"))
			if f := o.backend.readSkippingPings(); f.opcode != opBinary || string(f.payload) != "alive" {
				t.Fatalf("backend got opcode %d %q, want the client's message (the session was ended as a client ping timeout)", f.opcode, f.payload)
			}
			if n := routeStats(t, o.reg, "ping", "up").ClientActions.PingTimeouts; n != 0 {
				t.Errorf("client ping timeouts = %d, want 0", n)
			}
		})
	}
}

// TestReviewPingDoesNotStallOtherDirection: while the backend's large
// frame toward the client is paused, a message from the client still
// reaches the backend at once, as it does without pings: wsgate's
// keepalive ping toward the client must not make the client's own pump
// wait for the client leg's write lock.
func TestReviewPingDoesNotStallOtherDirection(t *testing.T) {
	for _, path := range opsPaths {
		t.Run(path.name, func(t *testing.T) {
			pol := &Policy{PingInterval: 300 * time.Millisecond, PingTimeout: time.Minute}
			o, rest, payload := pausedFrame(t, path.pump, pol, time.Second)
			o.client.send(0x82, []byte("hello"))
			// The backend finishes its frame only once it has the
			// client's message (or after hangGuard).
			f := o.backend.read()
			if _, err := o.backend.conn.Write(rest); err != nil {
				t.Fatal(err)
			}
			if f.opcode != opBinary || string(f.payload) != "hello" {
				t.Fatalf("backend got opcode %d %q, want the client's message", f.opcode, f.payload)
			}
			o.client.readData(opBinary, payload)
		})
	}
}

// TestReviewNoSpinWhileCloseIsWritten: while a close frame toward a leg
// is being written (reserved, closeSent set, before startClosing), the
// pump reading that leg must not spin on a read deadline in the past
// because its keepalive ping is due but can no longer be sent. Here the
// state is held for 300 ms; a pump that waits for data makes a few
// iterations in that time, a spinning one thousands.
func TestReviewNoSpinWhileCloseIsWritten(t *testing.T) {
	s, _, _ := testSession(t)
	s.SetPolicy(&Policy{PingInterval: 100 * time.Millisecond, PingTimeout: time.Minute})
	old := time.Now().Add(-time.Second).UnixNano()
	s.client.lastRead.Store(old) // the client's ping is overdue
	s.client.mu.Lock()
	s.client.closeSent = true // what reserveClose does before writeClose
	s.client.mu.Unlock()
	var iterations atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		st := pumpState{fromClient: true}
		for {
			select {
			case <-stop:
				return
			default:
			}
			if !s.relayFrame(s.client, s.backend, &st) {
				return
			}
			iterations.Add(1)
		}
	}()
	timer := time.NewTimer(300 * time.Millisecond)
	<-timer.C
	close(stop)
	s.startClosing() // ends the read
	_ = s.client.conn.SetReadDeadline(time.Now())
	<-done
	if n := iterations.Load(); n > 100 {
		t.Errorf("the client pump went round %d times in 300 ms with nothing to read, want a few", n)
	}
}

// TestReviewPolicyRelayAllocs: with every policy on (pings, a message
// rate, UTF-8 checks of text), relaying a small text frame still
// allocates nothing.
func TestReviewPolicyRelayAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts under -race are not meaningful")
	}
	s, clientPeer, backendPeer := testSession(t)
	s.SetPolicy(&Policy{
		PingInterval: time.Hour, PingTimeout: time.Minute,
		MessageRate: ratelimit.NewLimit(1e9, 1e6), ValidateUTF8: true,
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64<<10)
		for {
			if _, err := backendPeer.Read(buf); err != nil {
				return
			}
		}
	}()
	key := [4]byte{1, 2, 3, 4}
	frame := makeFrame(0x81, &key, []byte("héllo, wörld: a text frame of some length"))
	st := pumpState{fromClient: true}
	step := func() {
		if _, err := clientPeer.Write(frame); err != nil {
			t.Fatal(err)
		}
		if !s.relayFrame(s.client, s.backend, &st) {
			t.Fatal("relayFrame ended the pump")
		}
	}
	for range 100 {
		step()
	}
	if allocs := testing.AllocsPerRun(1000, step); allocs != 0 {
		t.Errorf("relayFrame with policies allocates %v times per small text frame, want 0", allocs)
	}
	_ = backendPeer.SetReadDeadline(time.Now())
	<-done
}

// TestReviewHugePingInterval: a ping interval of centuries (config
// accepts up to 2562047h) means no ping for now; lastRead + interval must
// not overflow into the past and make wsgate ping at once (and again on
// every pong).
func TestReviewHugePingInterval(t *testing.T) {
	for _, path := range opsPaths {
		t.Run(path.name, func(t *testing.T) {
			reg := opsRegistry()
			rt := reg.Route("ping", "up")
			pol := &Policy{PingInterval: 2500000 * time.Hour, PingTimeout: 10 * time.Second}
			o := startOps(t, reg, policyConfig(rt, pol), path.pump)
			o.client.expectNothing(2500 * time.Millisecond)
			o.exchange(10)
		})
	}
}

// TestReviewSetPolicyAppliesToQuietSession: a reload that turns pings on
// applies them to the running sessions (SetPolicy, docs/config.md
// "Reloading"): a quiet session gets its first ping about one interval
// after the reload, whether its legs wait in the poller or on pump
// goroutines (TLS legs always do), not once its idle timeout (1h) fires.
//
// A leg that never parks (the pump path) looks again every recheckEvery
// (30 s; 1 s here).
func TestReviewSetPolicyAppliesToQuietSession(t *testing.T) {
	defer recheckEvery.Store(recheckEvery.Load())
	recheckEvery.Store(int64(time.Second))
	for _, path := range opsPaths {
		t.Run(path.name, func(t *testing.T) {
			reg := opsRegistry()
			rt := reg.Route("ping", "up")
			o := startOps(t, reg, policyConfig(rt, nil), path.pump)
			o.exchange(10)
			s := reg.lookup(o.id)
			if s == nil {
				t.Fatal("session gone")
			}
			s.SetPolicy(&Policy{PingInterval: 300 * time.Millisecond, PingTimeout: time.Minute})
			_ = o.client.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			f, err := readRawFrame(o.client.br)
			if err != nil {
				t.Fatalf("no ping within 5 s of turning pings on (interval 300ms): %v", err)
			}
			if f.opcode != opPing || !bytes.Equal(f.payload, pingToken[:]) {
				t.Fatalf("client got opcode %d %q, want wsgate's ping", f.opcode, f.payload)
			}
		})
	}
}

// TestReviewSetPolicyRaisesRate: a reload that raises a route's message
// rate lets its running sessions send at the new rate at once. The
// GCRA state carried over (tat) was built with the old, slow emission
// interval and must not keep refusing for minutes under the new limit.
func TestReviewSetPolicyRaisesRate(t *testing.T) {
	for _, path := range opsPaths {
		t.Run(path.name, func(t *testing.T) {
			reg := opsRegistry()
			rt := reg.Route("rate", "up")
			slow := &Policy{MessageRate: ratelimit.NewLimit(1.0/60, 3), DropOverRate: true}
			o := startOps(t, reg, policyConfig(rt, slow), path.pump)
			for i := range 3 {
				msg := []byte{byte('a' + i)}
				o.client.send(0x82, msg)
				o.backend.readData(opBinary, msg)
			}
			s := reg.lookup(o.id)
			if s == nil {
				t.Fatal("session gone")
			}
			s.SetPolicy(&Policy{MessageRate: ratelimit.NewLimit(1000, 1000), DropOverRate: true})
			o.client.send(0x82, []byte("under the new rate"))
			o.backend.send(0x82, []byte("marker"))
			o.client.readData(opBinary, []byte("marker"))
			_ = o.backend.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
			f, err := readRawFrame(o.backend.br)
			if err != nil {
				st := routeStats(t, reg, "rate", "up")
				t.Fatalf("backend got nothing (%v); dropped %d messages: a message within 1000/s was dropped after the reload", err, st.ClientActions.Dropped)
			}
			if string(f.payload) != "under the new rate" {
				t.Fatalf("backend got %q", f.payload)
			}
		})
	}
}
