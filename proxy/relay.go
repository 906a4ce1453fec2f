package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wsgate/wsgate/routes"
)

// closeWait bounds each close handshake: after wsgate sends a close frame
// (or one side ends), the peer has this long to answer before the TCP
// connections are cut.
const closeWait = 5 * time.Second

// chunkSize is the copy buffer for frames larger than a leg's read buffer.
const chunkSize = 32 << 10

var chunkPool = sync.Pool{New: func() any { b := make([]byte, chunkSize); return &b }}

// leg is one side of a session: the client or the backend connection.
type leg struct {
	name string // "client" or "backend", for logs
	conn net.Conn
	br   *bufio.Reader // read only by the pump whose source is this leg
	// masked: frames written to this leg are masked (wsgate is the client
	// of the backend); frames read from the other leg then arrive masked.
	masked bool

	mu        sync.Mutex // guards writes to conn and the fields below
	closeSent bool       // a close frame went out, or the leg is dead
	wbuf      []byte     // scratch for headers and control frames

	// Set by the pump reading this leg, read after both pumps end.
	closeCode   uint16 // close code this leg sent, 0 if none
	closeReason string
	messages    int64
	bytes       int64
}

// session is one proxied WebSocket: two legs and two pumps.
type session struct {
	h       *Handler
	route   *routes.Route
	client  *leg
	backend *leg
	remote  string // client address, for logs
	target  string // backend address, for logs
	start   time.Time

	deflate    bool // permessage-deflate negotiated: RSV1 allowed on data frames
	maxMessage int64
	idle       time.Duration
	write      time.Duration

	lastActive atomic.Int64 // unix nanoseconds of the last frame either way
	closing    atomic.Bool  // close frames are out; reads are bounded by closeBy
	closeBy    atomic.Int64 // unix nanoseconds
	endMu      sync.Mutex
	started    bool        // guarded by endMu: client is set and the pumps run
	goingAway  bool        // guarded by endMu: Drain asked for 1001 before the start
	pumpsRun   int         // guarded by endMu
	force      *time.Timer // guarded by endMu
	ended      bool        // guarded by endMu: conns are closed
}

// run relays frames both ways until both sides are done, then closes both
// connections. It returns only after both pumps have returned. One pump
// runs on the caller's goroutine (the hijack handler), so a session costs
// two goroutines.
func (s *session) run(client net.Conn) {
	s.lastActive.Store(time.Now().UnixNano())
	s.endMu.Lock()
	s.client = &leg{name: "client", conn: client, br: bufio.NewReaderSize(client, 4096)}
	s.started = true
	s.pumpsRun = 2
	away := s.goingAway
	s.endMu.Unlock()
	if away {
		s.goAway()
	}
	done := make(chan struct{})
	go func() {
		s.pump(s.backend, s.client)
		s.pumpReturned()
		close(done)
	}()
	s.pump(s.client, s.backend)
	s.pumpReturned()
	<-done
	s.endMu.Lock()
	if s.force != nil {
		s.force.Stop()
	}
	s.endMu.Unlock()
	s.closeConns()
	s.log()
}

// pumpReturned starts the close-handshake budget for the other pump when
// the first one ends: it gets closeWait, then both connections are cut.
func (s *session) pumpReturned() {
	s.endMu.Lock()
	defer s.endMu.Unlock()
	s.pumpsRun--
	if s.pumpsRun == 1 {
		s.force = time.AfterFunc(closeWait, s.closeConns)
	}
}

// closeConns cuts both TCP connections, which ends any blocked pump.
// Safe to call more than once and from any goroutine.
func (s *session) closeConns() {
	s.endMu.Lock()
	if s.ended {
		s.endMu.Unlock()
		return
	}
	s.ended = true
	client := s.client
	s.endMu.Unlock()
	if client != nil {
		_ = client.conn.Close()
	}
	_ = s.backend.conn.Close()
}

// closeBoth sends close frames to both legs (each only once) and bounds
// the remaining reads by closeWait.
func (s *session) closeBoth(clientCode uint16, clientReason string, backendCode uint16, backendReason string) {
	s.startClosing()
	_ = s.client.sendClose(clientCode, clientReason, s.write)
	_ = s.backend.sendClose(backendCode, backendReason, s.write)
}

func (s *session) startClosing() {
	if s.closing.CompareAndSwap(false, true) {
		by := time.Now().Add(closeWait)
		s.closeBy.Store(by.UnixNano())
		// Wake pumps blocked on a long idle deadline.
		_ = s.client.conn.SetReadDeadline(by)
		_ = s.backend.conn.SetReadDeadline(by)
	}
}

// goAway sends 1001 "going away" to both legs; used by Drain.
func (s *session) goAway() {
	s.endMu.Lock()
	if !s.started {
		s.goingAway = true // run sends it
		s.endMu.Unlock()
		return
	}
	s.endMu.Unlock()
	s.closeBoth(closeGoingAway, "going away", closeGoingAway, "going away")
}

// pump reads frames from src and forwards them to dst until src sends a
// close frame, its connection ends, or it breaks the protocol. Only pump
// reads src; writes to dst go under dst.mu, whole frames at a time, so
// close frames injected by other goroutines land between frames.
func (s *session) pump(src, dst *leg) {
	fromClient := src == s.client
	var (
		inMessage bool  // a fragmented data message is in progress
		msgSize   int64 // bytes of the current message so far
	)
	for {
		s.setReadDeadline(src)
		h, err := readHeader(src.br)
		if err != nil {
			var pe *protocolError
			if errors.As(err, &pe) {
				s.failProtocol(src, dst, pe)
				return
			}
			if isTimeout(err) && !s.closing.Load() && s.idle > 0 {
				last := time.Unix(0, s.lastActive.Load())
				if time.Since(last) < s.idle {
					continue // the other direction is busy: not idle
				}
				s.closeBoth(closeGoingAway, "idle timeout", closeGoingAway, "idle timeout")
				continue // read the close replies until closeBy
			}
			s.sourceGone(src, dst)
			return
		}
		if err := s.check(&h, fromClient, &inMessage); err != nil {
			s.failProtocol(src, dst, err.(*protocolError))
			return
		}
		s.lastActive.Store(time.Now().UnixNano())

		if h.isControl() {
			var payload [maxControlPayload]byte
			total := h.size + int(h.length)
			b, err := src.br.Peek(total)
			if err != nil {
				s.sourceGone(src, dst)
				return
			}
			p := payload[:copy(payload[:], b[h.size:])]
			_, _ = src.br.Discard(total)
			if h.masked {
				maskBytes(h.mask, 0, p)
			}
			switch h.opcode {
			case opClose:
				cp, err := parseClose(p)
				if err != nil {
					s.failProtocol(src, dst, err.(*protocolError))
					return
				}
				src.closeCode, src.closeReason = cp.code, cp.reason
				s.startClosing()
				_ = dst.sendClose(relayCloseCode(cp.code), cp.reason, s.write)
				return
			default: // ping, pong: end to end, so each peer answers the other
				_ = dst.writeControl(h.opcode, p, s.write)
			}
			continue
		}

		// Data frame.
		if h.opcode != opContinuation {
			msgSize = 0
			src.messages++
		}
		msgSize += h.length
		src.bytes += h.length
		inMessage = !h.fin
		if s.maxMessage > 0 && msgSize > s.maxMessage {
			// RFC 6455 §7.4.1: 1009 to the sender; the receiver loses its
			// peer, so it gets 1001.
			if fromClient {
				s.closeBoth(closeTooBig, errMessageTooBig.Error(), closeGoingAway, "client message too big")
			} else {
				s.closeBoth(closeGoingAway, "backend message too big", closeTooBig, errMessageTooBig.Error())
			}
		}
		if err := s.forward(src, dst, &h); err != nil {
			s.sourceGone(src, dst)
			return
		}
	}
}

// check validates a frame header against RFC 6455 §5 and the message
// state; it returns a *protocolError.
func (s *session) check(h *frameHeader, fromClient bool, inMessage *bool) error {
	if fromClient != h.masked {
		if fromClient {
			return protoErr("unmasked client frame")
		}
		return protoErr("masked server frame")
	}
	rsv := h.rsv
	if s.deflate && (h.opcode == opText || h.opcode == opBinary) {
		rsv &^= 0x40 // RSV1 marks a compressed message (RFC 7692 §6)
	}
	if rsv != 0 {
		return protoErr("reserved bits set without a negotiated extension")
	}
	switch h.opcode {
	case opContinuation:
		if !*inMessage {
			return protoErr("continuation frame without a message")
		}
	case opText, opBinary:
		if *inMessage {
			return protoErr("new data frame inside a fragmented message")
		}
	case opClose, opPing, opPong:
		if !h.fin {
			return protoErr("fragmented control frame")
		}
		if h.length > maxControlPayload {
			return protoErr("control frame payload over 125 bytes")
		}
	default:
		return protoErr("reserved opcode %#x", h.opcode)
	}
	return nil
}

// forward copies one data frame from src to dst. Frames toward the backend
// are re-masked with a key wsgate chose (RFC 6455 §5.3: the masking key
// must be unpredictable to the application that supplies the payload).
// Frames for a leg that is closed are read and dropped. It returns an
// error only when reading src fails.
func (s *session) forward(src, dst *leg, h *frameHeader) error {
	total := int64(h.size) + h.length
	dst.mu.Lock()
	defer dst.mu.Unlock()
	if dst.closeSent {
		return discard(src.br, total)
	}
	var xor [4]byte // old key XOR new key: re-masks in one pass
	if dst.masked {
		newKey := rand.Uint32()
		old := h.mask
		h.mask = [4]byte{byte(newKey), byte(newKey >> 8), byte(newKey >> 16), byte(newKey >> 24)}
		for i := range xor {
			xor[i] = old[i] ^ h.mask[i]
		}
	}
	if s.write > 0 {
		_ = dst.conn.SetWriteDeadline(time.Now().Add(s.write))
	}
	if total <= int64(src.br.Size()) {
		// Small frame: forward it from the read buffer in one write.
		b, err := src.br.Peek(int(total))
		if err != nil {
			return err
		}
		if dst.masked {
			copy(b[h.size-4:h.size], h.mask[:])
			maskBytes(xor, 0, b[h.size:])
		}
		_, werr := dst.conn.Write(b)
		_, _ = src.br.Discard(int(total))
		if werr != nil {
			dst.closeSent = true // dead: the other pump reports it
		}
		return nil
	}
	dst.wbuf = appendHeader(dst.wbuf[:0], h)
	if _, err := src.br.Discard(h.size); err != nil {
		return err
	}
	_, werr := dst.conn.Write(dst.wbuf)
	bp := chunkPool.Get().(*[]byte)
	defer chunkPool.Put(bp)
	buf := *bp
	pos := 0
	for remaining := h.length; remaining > 0; {
		n := min(int64(len(buf)), remaining)
		m, err := src.br.Read(buf[:n])
		if m == 0 && err != nil {
			if werr == nil {
				dst.closeSent = true // half a frame went out: the leg is unusable
			}
			return err
		}
		remaining -= int64(m)
		if werr != nil {
			continue // keep reading src in step; dst is dead
		}
		if dst.masked {
			pos = maskBytes(xor, pos, buf[:m])
		}
		if _, werr = dst.conn.Write(buf[:m]); werr == nil && s.write > 0 {
			_ = dst.conn.SetWriteDeadline(time.Now().Add(s.write))
		}
		s.extendReadDeadline(src)
	}
	if werr != nil {
		dst.closeSent = true
	}
	return nil
}

// discard reads and drops n bytes from br.
func discard(br *bufio.Reader, n int64) error {
	for n > 0 {
		m, err := br.Discard(int(min(n, 1<<30)))
		n -= int64(m)
		if err != nil {
			return err
		}
	}
	return nil
}

// failProtocol answers a protocol violation by src: the code from pe to
// src, a close to dst, then a half-close toward src so that it sees the
// end right after the close frame (RFC 6455 §7.1.7).
func (s *session) failProtocol(src, dst *leg, pe *protocolError) {
	s.h.log.Info("websocket protocol error", "route", s.route.Name, "side", src.name, "error", pe.reason)
	if src == s.client {
		s.closeBoth(pe.code, pe.reason, closeGoingAway, "client protocol error")
	} else {
		s.closeBoth(closeInternalError, "backend protocol error", pe.code, pe.reason)
	}
	closeWrite(src.conn)
	// Read what src still sends until it closes, so that closing our end
	// does not reset the connection under the close frame.
	_ = src.conn.SetReadDeadline(time.Unix(0, s.closeBy.Load()))
	bp := chunkPool.Get().(*[]byte)
	_, _ = io.CopyBuffer(io.Discard, readerOnly{src.br}, *bp)
	chunkPool.Put(bp)
}

// sourceGone handles the end of src's connection without a close frame.
func (s *session) sourceGone(src, dst *leg) {
	src.mu.Lock()
	src.closeSent = true // nothing more can be written to a gone peer
	src.mu.Unlock()
	if src == s.client {
		_ = dst.sendClose(closeGoingAway, "client went away", s.write)
	} else {
		// RFC 6455 §7.4.1: 1011 for an unexpected condition; the client
		// must never see 1006 because the backend vanished.
		_ = dst.sendClose(closeInternalError, "backend went away", s.write)
	}
	s.startClosing()
}

func (s *session) setReadDeadline(src *leg) {
	switch {
	case s.closing.Load():
		_ = src.conn.SetReadDeadline(time.Unix(0, s.closeBy.Load()))
	case s.idle > 0:
		_ = src.conn.SetReadDeadline(time.Now().Add(s.idle))
	}
}

// extendReadDeadline keeps a long frame from tripping the idle timeout
// while its payload still flows.
func (s *session) extendReadDeadline(src *leg) {
	if s.idle > 0 && !s.closing.Load() {
		s.lastActive.Store(time.Now().UnixNano())
		_ = src.conn.SetReadDeadline(time.Now().Add(s.idle))
	}
}

// sendClose writes a close frame to l once; later calls do nothing.
func (l *leg) sendClose(code uint16, reason string, timeout time.Duration) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closeSent {
		return nil
	}
	l.closeSent = true
	l.wbuf = appendCloseFrame(l.wbuf[:0], code, reason, l.masked, newMaskKey())
	return l.writeLocked(timeout)
}

// writeControl writes a ping or pong to l unless l is closed.
func (l *leg) writeControl(opcode byte, p []byte, timeout time.Duration) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closeSent {
		return nil
	}
	l.wbuf = appendControlFrame(l.wbuf[:0], opcode, p, l.masked, newMaskKey())
	return l.writeLocked(timeout)
}

func (l *leg) writeLocked(timeout time.Duration) error {
	if timeout <= 0 || timeout > closeWait {
		timeout = closeWait
	}
	_ = l.conn.SetWriteDeadline(time.Now().Add(timeout))
	_, err := l.conn.Write(l.wbuf)
	return err
}

func newMaskKey() [4]byte {
	k := rand.Uint32()
	return [4]byte{byte(k), byte(k >> 8), byte(k >> 16), byte(k >> 24)}
}

// readerOnly hides a reader's WriteTo so io.CopyBuffer uses the buffer.
type readerOnly struct{ io.Reader }

// closeWrite half-closes c when it supports it (TCP FIN, TLS close_notify).
func closeWrite(c net.Conn) {
	if u, ok := c.(interface{ UnsafeConn() net.Conn }); ok {
		c = u.UnsafeConn()
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// log writes the session summary when it ends.
func (s *session) log() {
	s.h.log.LogAttrs(context.Background(), slog.LevelInfo, "websocket closed",
		slog.String("route", s.route.Name),
		slog.String("client", s.remote),
		slog.String("backend", s.target),
		slog.Int64("duration_ms", time.Since(s.start).Milliseconds()),
		slog.Int("client_close", int(s.client.closeCode)),
		slog.Int("backend_close", int(s.backend.closeCode)),
		slog.Int64("client_messages", s.client.messages),
		slog.Int64("client_bytes", s.client.bytes),
		slog.Int64("backend_messages", s.backend.messages),
		slog.Int64("backend_bytes", s.backend.bytes),
	)
}
