//go:build linux

package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// parkedLegs counts the legs of h's sessions waiting in the shared poller.
func parkedLegs(h *Handler) int {
	pickPoller()
	n := 0
	for _, p := range pollers {
		p.mu.Lock()
		for _, page := range p.slots.pages {
			for _, pp := range page {
				if pp.src != nil && pp.s.h == h {
					n++
				}
			}
		}
		p.mu.Unlock()
	}
	return n
}

// TestParkedSessionsRelay: idle legs park in the poller (no goroutine),
// and data on a parked leg resumes it in either direction; then a drain
// reaches parked sessions too.
func TestParkedSessionsRelay(t *testing.T) {
	backend := startBackend(t, echoWS(t))
	p := startProxy(t, wsRoute(testUpstream(backend)))
	const n = 20
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		conns[i], _ = dialWS(t, p.addr, "/", nil)
	}
	waitFor(t, "every leg parked", 10*time.Second, func() bool { return parkedLegs(p.h) == 2*n })

	for round := range 2 {
		for i, c := range conns {
			msg := fmt.Sprintf("round %d conn %d", round, i)
			if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, got, err := c.ReadMessage()
			if err != nil || string(got) != msg {
				t.Fatalf("echo from a parked session: %q, %v; want %q", got, err, msg)
			}
		}
		waitFor(t, "legs parked again", 10*time.Second, func() bool { return parkedLegs(p.h) == 2*n })
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	drained := make(chan error, 1)
	go func() { drained <- drainErr(p.h, ctx) }()
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _, err := c.ReadMessage()
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway {
			t.Fatalf("parked session on drain: %v, want close 1001", err)
		}
		c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, ""))
	}
	if err := <-drained; err != nil {
		t.Fatalf("Drain = %v, want nil", err)
	}
	if got := p.h.Sessions(); got != 0 {
		t.Errorf("Sessions() = %d after drain", got)
	}
}

// TestParkedSessionsCostNoGoroutine: once parked, a session holds no
// goroutine of the proxy (the net/http backend keeps one per connection).
func TestParkedSessionsCostNoGoroutine(t *testing.T) {
	backend := startBackend(t, echoWS(t))
	p := startProxy(t, wsRoute(testUpstream(backend)))
	// Warm the fasthttp worker pool so its goroutines are not counted.
	for range 4 {
		c, _ := dialWS(t, p.addr, "/", nil)
		c.Close()
	}
	waitFor(t, "warm-up sessions ended", 10*time.Second, func() bool { return p.h.Sessions() == 0 })
	before := runtime.NumGoroutine()
	const n = 200
	for range n {
		dialWS(t, p.addr, "/", nil)
	}
	waitFor(t, "every leg parked", 15*time.Second, func() bool { return parkedLegs(p.h) == 2*n })
	// Allow the backend's one goroutine per connection and a little slack
	// for fasthttp workers that have not retired yet.
	if grown := runtime.NumGoroutine() - before; grown > n+16 {
		t.Errorf("goroutines grew by %d for %d parked sessions, want ≤ %d (backend only)", grown, n, n+16)
	}
}

// TestParkedSessionIdleTimeout: a parked session still meets its idle
// timeout (the sweep hands it back to a goroutine before the deadline).
func TestParkedSessionIdleTimeout(t *testing.T) {
	backend := startBackend(t, echoWS(t))
	r := wsRoute(testUpstream(backend))
	r.WebSocket.IdleTimeout = parkMargin + 500*time.Millisecond // long enough to park
	p := startProxy(t, r)
	c, _ := dialWS(t, p.addr, "/", nil)
	waitFor(t, "legs parked", 5*time.Second, func() bool { return parkedLegs(p.h) == 2 })
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err := c.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway || ce.Text != "idle timeout" {
		t.Fatalf("parked idle session: %v, want close 1001 idle timeout", err)
	}
}

// TestParkedSessionForcedDrain: a parked session whose client never
// answers the close is cut when the drain budget ends, and ends.
func TestParkedSessionForcedDrain(t *testing.T) {
	backend := startBackend(t, echoWS(t))
	p := startProxy(t, wsRoute(testUpstream(backend)))
	c, _ := dialWS(t, p.addr, "/", nil)
	waitFor(t, "legs parked", 5*time.Second, func() bool { return parkedLegs(p.h) == 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := drainErr(p.h, ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Drain = %v, want deadline exceeded (the client never answers)", err)
	}
	waitFor(t, "session removed", 5*time.Second, func() bool { return p.h.Sessions() == 0 })
	// The client sees the close frame, then the cut.
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := c.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseGoingAway) {
		t.Errorf("client read %v, want close 1001", err)
	}
	if _, err := c.NetConn().Read(make([]byte, 1)); err == nil || errors.Is(err, net.ErrClosed) {
		t.Errorf("client connection after the cut: %v, want EOF or reset", err)
	}
}

// TestPollerRelaysFrames: once parked, both legs of a plain-TCP session
// are relayed by the poller itself: messages in both directions arrive,
// are counted, and no leg goes back to a pump goroutine.
func TestPollerRelaysFrames(t *testing.T) {
	backend := startBackend(t, echoWS(t))
	p := startProxy(t, wsRoute(testUpstream(backend)))
	const n, rounds = 20, 5
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		conns[i], _ = dialWS(t, p.addr, "/", nil)
	}
	waitFor(t, "every leg parked", 10*time.Second, func() bool { return parkedLegs(p.h) == 2*n })
	before := p.h.handOffs.Load()
	for round := range rounds {
		for i, c := range conns {
			msg := bytes.Repeat([]byte{byte(i), byte(round)}, 1+(i*97+round*31)%1000)
			if err := c.WriteMessage(websocket.BinaryMessage, msg); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			mt, got, err := c.ReadMessage()
			if err != nil || mt != websocket.BinaryMessage || !bytes.Equal(got, msg) {
				t.Fatalf("round %d conn %d: echo %d bytes type %d, %v; want %d bytes back", round, i, len(got), mt, err, len(msg))
			}
		}
	}
	if got := p.h.handOffs.Load() - before; got != 0 {
		t.Errorf("%d legs went back to a goroutine while the poller relayed small messages, want 0", got)
	}
	for _, c := range conns {
		c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := c.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
			t.Errorf("close through the poller: %v, want the backend's 1000 echoed", err)
		}
		c.Close()
	}
	waitFor(t, "sessions ended", 10*time.Second, func() bool { return p.h.Sessions() == 0 })
	want := fmt.Sprintf("client_messages=%d", rounds)
	if got := strings.Count(p.logs.String(), want); got != n {
		t.Errorf("%d session logs say %s, want %d:\n%s", got, want, n, p.logs.String())
	}
}

// TestServePartialWrite: when the destination takes only part of what
// the poller read, the rest is written by a pump goroutine, in order and
// before anything else reaches that destination.
func TestServePartialWrite(t *testing.T) {
	s, clientPeer, backendPeer := testSession(t)
	s.client = newLeg(s.client.conn, nil, false)
	s.backend = newLeg(s.backend.conn, nil, true)
	s.pumpsRun = 1
	// Small socket buffers toward the backend, which does not read yet.
	if err := s.backend.conn.(*net.TCPConn).SetWriteBuffer(4 << 10); err != nil {
		t.Fatal(err)
	}
	if err := backendPeer.(*net.TCPConn).SetReadBuffer(4 << 10); err != nil {
		t.Fatal(err)
	}
	key := [4]byte{9, 8, 7, 6}
	frame := func(seq int) []byte {
		payload := bytes.Repeat([]byte{byte(seq), byte(seq >> 8)}, 512)
		return makeFrame(0x82, &key, payload)
	}
	sent := 0
	for ; sent < 10000; sent++ {
		if _, err := clientPeer.Write(frame(sent)); err != nil {
			t.Fatal(err)
		}
		if !s.serve(s.client, s.backend, time.Now()) {
			sent++
			break
		}
	}
	if s.client.pending == 0 {
		t.Fatalf("after %d frames serve handed off with nothing pending (buffered %d), want a partial write", sent, s.client.br.Buffered())
	}
	if s.backend.mu.TryLock() {
		t.Fatal("backend leg unlocked while frames for it are pending")
	}
	pumped := make(chan struct{})
	go func() {
		defer close(pumped)
		s.pumpLoop(s.client, s.backend)
	}()
	// One more frame after the hand-off: the pump relays it after the
	// pending bytes.
	if _, err := clientPeer.Write(frame(sent)); err != nil {
		t.Fatal(err)
	}
	sent++
	br := bufio.NewReader(backendPeer)
	backendPeer.SetReadDeadline(time.Now().Add(10 * time.Second))
	for seq := range sent {
		f, err := readRawFrame(br)
		if err != nil {
			t.Fatalf("frame %d of %d: %v", seq, sent, err)
		}
		want := frame(seq)[8:] // the payload, masked with key
		for i := range want {
			want[i] ^= key[i&3]
		}
		if f.opcode != 2 || !f.fin || !f.masked || f.key == key || !bytes.Equal(f.payload, want) {
			t.Fatalf("frame %d: opcode %d fin %v masked %v key %v, payload ok %v; want it whole, in order, re-masked",
				seq, f.opcode, f.fin, f.masked, f.key, bytes.Equal(f.payload, want))
		}
	}
	clientPeer.Close()
	select {
	case <-pumped:
	case <-time.After(10 * time.Second):
		t.Fatal("pump did not end after the client closed")
	}
	if s.client.messages != int64(sent) {
		t.Errorf("client messages = %d, want %d", s.client.messages, sent)
	}
}

// TestBatchStopsAtHugeFrame: a frame declaring 2^63-1 bytes right after a
// small one in the same read is not taken for a whole buffered frame (its
// size overflowed once): the small frame goes out alone, on both the
// poller's path and the pump's.
func TestBatchStopsAtHugeFrame(t *testing.T) {
	key := [4]byte{1, 2, 3, 4}
	small := makeFrame(0x82, &key, []byte("small"))
	huge := []byte{0x82, 0x80 | 127}
	huge = binary.BigEndian.AppendUint64(huge, 1<<63-1)
	huge = append(huge, key[:]...)
	huge = append(huge, bytes.Repeat([]byte{'x'}, 1000)...)
	for _, path := range []string{"poller", "pump"} {
		t.Run(path, func(t *testing.T) {
			s, clientPeer, backendPeer := testSession(t)
			s.client = newLeg(s.client.conn, nil, false)
			s.backend = newLeg(s.backend.conn, nil, true)
			if _, err := clientPeer.Write(append(bytes.Clone(small), huge...)); err != nil {
				t.Fatal(err)
			}
			if path == "poller" {
				waitFor(t, "serve read the frames", 5*time.Second, func() bool {
					return !s.serve(s.client, s.backend, time.Now()) // true: nothing read yet
				})
			} else {
				if !s.relayFrame(s.client, s.backend, &s.client.st) {
					t.Fatal("relayFrame ended the pump")
				}
			}
			if got := s.client.br.Buffered(); got != len(huge) {
				t.Errorf("%d bytes left buffered, want the huge frame's %d", got, len(huge))
			}
			backendPeer.SetReadDeadline(time.Now().Add(5 * time.Second))
			f, err := readRawFrame(bufio.NewReader(backendPeer))
			if err != nil || string(f.payload) != "small" || !f.fin {
				t.Fatalf("backend got %q fin %v, %v; want the small frame alone", f.payload, f.fin, err)
			}
			if s.client.messages != 1 {
				t.Errorf("client messages = %d, want 1 (the huge frame is not counted yet)", s.client.messages)
			}
		})
	}
}

// TestPollerSeesEndAfterData: a client that sends a frame and at once
// half-closes (no close frame) is noticed although its data and its FIN
// come in one readiness event: the backend gets the frame, then 1001.
func TestPollerSeesEndAfterData(t *testing.T) {
	const n = 20
	results := make(chan error, 2*n)
	backend := startWSBackend(t, nil, func(c *websocket.Conn) {
		_, msg, err := c.ReadMessage()
		if err == nil && string(msg) != "last words" {
			err = fmt.Errorf("message %q", msg)
		}
		results <- err
		results <- readUntilError(c)
	})
	p := startProxy(t, wsRoute(testUpstream(backend)))
	clients := make([]*rawWS, n)
	for i := range clients {
		clients[i] = dialRaw(t, p.addr, "/", nil)
	}
	waitFor(t, "every leg parked", 10*time.Second, func() bool { return parkedLegs(p.h) == 2*n })
	for _, w := range clients {
		w.send(0x81, []byte("last words"))
		if err := w.c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
	}
	// The idle timeout is an hour: only noticing each FIN ends the wait.
	frames, away := 0, 0
	for range 2 * n {
		err := recvErr(t, "the frames and the ends", results, 10*time.Second)
		switch code, _ := closeCode(err); {
		case err == nil:
			frames++
		case code == websocket.CloseGoingAway:
			away++
		default:
			t.Errorf("backend read %v, want the frame, then close 1001", err)
		}
	}
	if frames != n || away != n {
		t.Errorf("backends read %d frames and %d closes 1001, want %d of each", frames, away, n)
	}
}

// TestParkSlots: slots are reused once released, an id from an earlier
// occupant of a slot finds nothing, and a reserved slot (taken, not yet
// released) is not handed to another leg.
func TestParkSlots(t *testing.T) {
	var ps parkSlots
	legs := make([]*leg, parkPage+10)
	ids := make([]uint64, len(legs))
	for i := range legs {
		legs[i] = &leg{}
		ids[i] = ps.add(parkedPump{src: legs[i]})
	}
	if len(ps.pages) != 2 {
		t.Fatalf("%d legs in %d pages, want 2", len(legs), len(ps.pages))
	}
	pp, ok := ps.take(ids[3])
	if !ok || pp.src != legs[3] {
		t.Fatalf("take(%x) = %v, %v; want leg 3", ids[3], pp.src, ok)
	}
	if _, ok := ps.take(ids[3]); ok {
		t.Fatal("a taken slot was taken twice")
	}
	other := &leg{}
	oid := ps.add(parkedPump{src: other})
	if uint32(oid) == uint32(ids[3]) {
		t.Fatal("a reserved slot was given to another leg")
	}
	ps.put(ids[3], pp)
	if got, ok := ps.remove(ids[3]); !ok || got.src != legs[3] {
		t.Fatalf("remove after put = %v, %v; want leg 3", got.src, ok)
	}
	// The freed slot goes to the next leg, under a new id.
	next := &leg{}
	nid := ps.add(parkedPump{src: next})
	if uint32(nid) != uint32(ids[3]) || nid == ids[3] {
		t.Fatalf("reuse: id %x after %x, want the same slot with a new generation", nid, ids[3])
	}
	if _, ok := ps.take(ids[3]); ok {
		t.Fatal("a stale id matched the slot's new leg")
	}
	if _, ok := ps.removeLeg(legs[3]); ok {
		t.Fatal("removeLeg found a leg that is no longer parked")
	}
	if got, ok := ps.removeLeg(next); !ok || got.src != next {
		t.Fatalf("removeLeg(next) = %v, %v", got.src, ok)
	}
	if _, ok := ps.remove(uint64(len(ps.pages)*parkPage + 5)); ok {
		t.Fatal("an index past the pages matched")
	}
}

// TestTakeDue: the sweep finds due legs on every page of slots (it locks
// one page at a time) and leaves the others parked.
func TestTakeDue(t *testing.T) {
	p := &poller{}
	now := time.Now()
	quiet := &session{idle: time.Hour}
	quiet.lastActive.Store(now.UnixNano())
	closing := &session{idle: time.Hour}
	closing.lastActive.Store(now.UnixNano())
	closing.closeBy.Store(now.Add(closeWait).UnixNano())
	idleSoon := &session{idle: time.Minute}
	idleSoon.lastActive.Store(now.Add(-time.Minute + parkMargin/2).UnixNano())

	due := map[*leg]bool{}
	n := 3*parkPage + 7
	for i := range n {
		s := quiet
		switch {
		case i == parkPage+3:
			s = closing
		case i == n-1:
			s = idleSoon
		}
		l := &leg{}
		p.slots.add(parkedPump{s: s, src: l})
		if s != quiet {
			due[l] = true
		}
	}
	got := p.takeDue(now)
	if len(got) != len(due) {
		t.Fatalf("took %d due legs, want %d", len(got), len(due))
	}
	for _, pp := range got {
		if !due[pp.src] {
			t.Errorf("took a leg that is not due (session %p)", pp.s)
		}
		if _, ok := p.slots.removeLeg(pp.src); ok {
			t.Error("a taken leg is still parked")
		}
	}
	left := 0
	for _, page := range p.slots.pages {
		for _, pp := range page {
			if pp.src != nil {
				left++
			}
		}
	}
	if left != n-len(due) {
		t.Errorf("%d legs still parked, want %d", left, n-len(due))
	}
}
