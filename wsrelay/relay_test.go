package wsrelay

import (
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

// testSession returns a session between two loopback connections, as
// run would set it up, and the peers: client and backend.
func testSession(t testing.TB) (s *Session, clientPeer, backendPeer net.Conn) {
	clientPeer, clientConn := tcpPair(t)
	backendConn, backendPeer := tcpPair(t)
	s = &Session{
		reg:   NewRegistry(Options{Logger: slog.New(slog.DiscardHandler)}),
		route: &Route{Name: "test"},
		start: time.Now().UnixNano(),
		idle:  time.Hour,
		write: time.Minute,
		// Readers without a RawConn keep their buffer: the allocation test
		// must not depend on sync.Pool, which drops items under -race.
		client:  &leg{conn: clientConn, br: newFrameReader(clientConn, nil, nil)},
		backend: &leg{conn: backendConn, br: newFrameReader(backendConn, nil, nil), masked: true},
	}
	s.SetPolicy(nil)
	s.client.lastRead.Store(time.Now().UnixNano())
	s.backend.lastRead.Store(time.Now().UnixNano())
	return s, clientPeer, backendPeer
}

// TestRelayFrameAllocs: relaying a small data frame allocates nothing in
// steady state, in either direction (re-masking toward the backend
// included). One relayFrame call is one pump iteration: header read and
// checks, deadline, forward.
func TestRelayFrameAllocs(t *testing.T) {
	t.Run("kept buffers", func(t *testing.T) {
		s, clientPeer, backendPeer := testSession(t)
		checkRelayFrameAllocs(t, s, clientPeer, backendPeer)
	})
	// The production legs: plain TCP, buffers borrowed from the pool and
	// returned whenever a read would block.
	t.Run("pooled buffers", func(t *testing.T) {
		if raceEnabled {
			t.Skip("sync.Pool drops items at random under -race")
		}
		s, clientPeer, backendPeer := testSession(t)
		s.client = newLeg(s.client.conn, nil, false)
		s.backend = newLeg(s.backend.conn, nil, true)
		touch(s)
		checkRelayFrameAllocs(t, s, clientPeer, backendPeer)
	})
}

func checkRelayFrameAllocs(t *testing.T, s *Session, clientPeer, backendPeer net.Conn) {
	key := [4]byte{1, 2, 3, 4}
	for _, dir := range []struct {
		name     string
		src, dst *leg
		in, out  net.Conn // the peers writing src and reading dst
		frame    []byte
	}{
		{"client to backend", s.client, s.backend, clientPeer, backendPeer, makeFrame(0x82, &key, make([]byte, 100))},
		{"backend to client", s.backend, s.client, backendPeer, clientPeer, makeFrame(0x82, nil, make([]byte, 100))},
	} {
		t.Run(dir.name, func(t *testing.T) {
			// Drain the destination peer with a fixed buffer so that its
			// socket never fills.
			var received atomic.Int64
			done := make(chan struct{})
			go func() {
				defer close(done)
				buf := make([]byte, 64<<10)
				for {
					n, err := dir.out.Read(buf)
					received.Add(int64(n))
					if err != nil {
						return
					}
				}
			}()
			st := pumpState{fromClient: dir.src == s.client}
			step := func() {
				if _, err := dir.in.Write(dir.frame); err != nil {
					t.Fatal(err)
				}
				if !s.relayFrame(dir.src, dir.dst, &st) {
					t.Fatal("relayFrame ended the pump")
				}
			}
			for range 100 {
				step()
			}
			const runs = 2000
			allocs := testing.AllocsPerRun(runs, step)
			want := int64((100 + 1 + runs) * len(dir.frame)) // warm-up, AllocsPerRun's own warm-up, runs
			waitFor(t, "the frames to arrive", 5*time.Second, func() bool { return received.Load() == want })
			if allocs != 0 {
				t.Errorf("relayFrame allocates %v times per small frame, want 0", allocs)
			}
			dir.out.SetReadDeadline(time.Now()) // end the drain goroutine
			<-done
			dir.out.SetReadDeadline(time.Time{})
		})
	}
}

// TestSessionCutBeforeStart: when Drain cuts a session whose hijack
// handler has not run yet (only the backend connection exists), the
// client connection handed over later must be closed at once too:
// nothing else would close it (KeepHijackedConns).
func TestSessionCutBeforeStart(t *testing.T) {
	s, clientPeer, backendPeer := testSession(t)
	clientConn := s.client.conn
	s.client = nil                // run sets it
	s.reg.closeWait = time.Minute // no close budget can end it within hangGuard
	s.closeConns()                // what forceClose does
	if _, err := backendPeer.Read(make([]byte, 1)); err == nil {
		t.Fatal("backend connection still open after closeConns")
	}
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		s.Run(clientConn, nil)
	}()
	select {
	case <-ran:
	case <-time.After(hangGuard):
		t.Fatal("run did not return at once on a cut session")
	}
	clientPeer.SetReadDeadline(time.Now().Add(hangGuard))
	if n, err := io.Copy(io.Discard, clientPeer); err != nil || n != 0 {
		t.Errorf("client connection: %d bytes then %v; want EOF at once", n, err)
	}
}

// TestSessionSizeClasses: an idle session holds a Session and two legs,
// so each must stay within its malloc size class (the idle-memory
// benchmark compares whole processes; this says which struct grew).
func TestSessionSizeClasses(t *testing.T) {
	// 288 since issue 13: each leg keeps when its peer was last heard
	// from, its keepalive ping and its rate limit state (24 bytes).
	if n := unsafe.Sizeof(leg{}); n > 288 {
		t.Errorf("leg is %d bytes, want at most 288 (the next size class is 320)", n)
	}
	if n := unsafe.Sizeof(Session{}); n > 288 {
		t.Errorf("Session is %d bytes, want at most 288 (the next size class is 320)", n)
	}
}

// touch marks both legs of s active now, as Run does: legs made by
// newLeg in a test have never seen a frame.
func touch(s *Session) {
	now := time.Now().UnixNano()
	s.client.lastRead.Store(now)
	s.backend.lastRead.Store(now)
}
