//go:build linux

package wsrelay

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"
)

// TestServePartialWrite: when the destination takes only part of what
// the poller read, the rest is written by a pump goroutine, in order and
// before anything else reaches that destination.
func TestServePartialWrite(t *testing.T) {
	s, clientPeer, backendPeer := testSession(t)
	s.client = newLeg(s.client.conn, nil, false)
	s.backend = newLeg(s.backend.conn, nil, true)
	touch(s)
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
		if s.serve(s.client, s.backend, time.Now()) != serveStay {
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
	if s.client.messages.Load() != int64(sent) {
		t.Errorf("client messages = %d, want %d", s.client.messages.Load(), sent)
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
			touch(s)
			if _, err := clientPeer.Write(append(bytes.Clone(small), huge...)); err != nil {
				t.Fatal(err)
			}
			if path == "poller" {
				waitFor(t, "serve read the frames", 5*time.Second, func() bool {
					return s.serve(s.client, s.backend, time.Now()) != serveStay // stay: nothing read yet
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
			if s.client.messages.Load() != 1 {
				t.Errorf("client messages = %d, want 1 (the huge frame is not counted yet)", s.client.messages.Load())
			}
		})
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
// one page at a time) and leaves the others parked; it lists the legs
// due for a keepalive ping and leaves them parked too.
func TestTakeDue(t *testing.T) {
	p := &poller{}
	now := time.Now()
	session := func(idle time.Duration, active time.Time, pol *Policy) *Session {
		s := &Session{idle: idle, client: &leg{}, backend: &leg{masked: true}}
		s.SetPolicy(pol)
		s.client.lastRead.Store(active.UnixNano())
		s.backend.lastRead.Store(active.UnixNano())
		return s
	}
	pings := &Policy{PingInterval: 30 * time.Second, PingTimeout: 10 * time.Second}
	quiet := session(time.Hour, now, noPolicy)
	// Closing: its legs stay parked (the poller reads the close frames)
	// until the close handshake's time is up.
	closing := session(time.Hour, now, noPolicy)
	closing.closeBy.Store(now.Add(closeWait).UnixNano())
	closeOver := session(time.Hour, now, noPolicy)
	closeOver.closeBy.Store(now.Add(-time.Millisecond).UnixNano())
	idleSoon := session(time.Minute, now.Add(-time.Minute+parkMargin/2), noPolicy)
	// Quiet for 29.6 s: pinged by this sweep (half a sweep early).
	pingDue := session(time.Hour, now.Add(-30*time.Second+sweepEvery/3), pings)
	// Quiet for 20 s: not yet.
	pingLater := session(time.Hour, now.Add(-20*time.Second), pings)
	// Pinged 9 s ago, no answer: its timeout is within parkMargin.
	pingOut := session(time.Hour, now.Add(-40*time.Second), pings)
	pingOut.client.pingAt.Store(now.Add(-9 * time.Second).UnixNano())
	// Pinged 1 s ago: waits in the poller for the answer.
	pingWait := session(time.Hour, now.Add(-40*time.Second), pings)
	pingWait.client.pingAt.Store(now.Add(-time.Second).UnixNano())

	due := map[*leg]bool{}
	toPing := map[*leg]bool{}
	n := 3*parkPage + 7
	for i := range n {
		s := quiet
		switch i {
		case parkPage + 3:
			s = closing
		case parkPage + 4:
			s = closeOver
		case n - 1:
			s = idleSoon
		case 5:
			s = pingDue
		case 6:
			s = pingLater
		case 2*parkPage + 1:
			s = pingOut
		case 2*parkPage + 2:
			s = pingWait
		}
		l := s.client
		if s == quiet || s == closing {
			l = &leg{}
		}
		p.slots.add(parkedPump{s: s, src: l})
		switch s {
		case closeOver, idleSoon, pingOut:
			due[l] = true
		case pingDue:
			toPing[l] = true
		}
	}
	got, ping := p.takeDue(now)
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
	if len(ping) != len(toPing) {
		t.Fatalf("%d legs to ping, want %d", len(ping), len(toPing))
	}
	for _, pp := range ping {
		if !toPing[pp.src] {
			t.Errorf("a leg not due is to be pinged (session %p)", pp.s)
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
	if left != n-len(due) { // the legs to ping stay parked
		t.Errorf("%d legs still parked, want %d", left, n-len(due))
	}
}
