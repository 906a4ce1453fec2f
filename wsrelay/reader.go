package wsrelay

import (
	"bufio"
	"errors"
	"net"
	"syscall"

	"github.com/wsgate/wsgate/internal/bufpool"
	"github.com/wsgate/wsgate/internal/netpoll"
)

// readBufferSize is a leg's read buffer. A frame that fits in it (header
// included) is forwarded with one write straight from the buffer, together
// with the complete frames that follow it. Plain TCP legs hold it only
// while data flows (see frameReader).
const readBufferSize = bufpool.Size

// keptBufferSize is the read buffer of a leg that cannot wait without one
// (TLS: the decrypted bytes live in crypto/tls): it keeps it for its
// whole life, so it is small.
const keptBufferSize = 4 << 10

// errWouldBlock: the leg has nothing to read now (see parkOnBlock).
var errWouldBlock = errors.New("read would block")

// frameReader is a leg's read buffer with the bufio operations the relay
// needs (Peek, Discard, Read). On a plain TCP leg it reads with one
// non-blocking read(2) through RawConn.Read and, whenever a read would
// block with nothing buffered, gives its buffer back to the pool before
// waiting: an idle leg holds no buffer, and a busy one pays no extra
// system call for it. Other legs (TLS) keep their buffer.
type frameReader struct {
	conn  net.Conn
	raw   syscall.RawConn // nil: read conn and keep the buffer
	early []byte          // bytes that come before conn's
	// parkOnBlock: a read that would block with nothing buffered fails
	// with errWouldBlock instead of waiting, so the pump can park.
	parkOnBlock bool
	bp          *[]byte // nil while idle
	r, w        int     // buffered bytes are (*bp)[r:w]

	// State of one RawConn.Read or readNow call, shared with its callback.
	onReadable func(fd uintptr) bool // b.readable, bound on first use
	onReadNow  func(fd uintptr)      // b.readNowFd, bound on first use
	rp         []byte
	rpooled    bool
	rn         int
	rerr       error
}

func newFrameReader(conn net.Conn, raw syscall.RawConn, early []byte) *frameReader {
	return &frameReader{conn: conn, raw: raw, early: early}
}

// idle reports whether the reader holds no buffer (and so no bytes).
func (b *frameReader) idle() bool { return b.bp == nil && len(b.early) == 0 }

// bufferedAfter returns the buffered bytes past the first n (n ≤ Buffered).
func (b *frameReader) bufferedAfter(n int) []byte {
	if b.bp == nil {
		return nil
	}
	return (*b.bp)[b.r+n : b.w]
}

// Buffered returns the number of bytes that can be read without waiting.
func (b *frameReader) Buffered() int { return b.w - b.r }

// Size returns the buffer size.
func (b *frameReader) Size() int {
	if b.raw == nil {
		return keptBufferSize
	}
	return readBufferSize
}

func (b *frameReader) acquire() {
	if b.bp != nil {
		return
	}
	if b.raw == nil {
		buf := make([]byte, keptBufferSize)
		b.bp = &buf
	} else {
		b.bp = bufpool.Get()
	}
	b.r, b.w = 0, 0
}

func (b *frameReader) releaseIfEmpty() {
	if b.raw != nil && b.bp != nil && b.r == b.w {
		bufpool.Put(b.bp)
		b.bp = nil
	}
}

// fill reads more bytes into the buffer, waiting for them if needed.
func (b *frameReader) fill() error {
	n, err := b.readInto(b.room(), true)
	b.w += n
	return err
}

// room takes a buffer if the reader has none, moves the buffered bytes to
// its start, and returns the free space after them.
func (b *frameReader) room() []byte {
	b.acquire()
	buf := *b.bp
	if b.r > 0 {
		b.w = copy(buf, buf[b.r:b.w])
		b.r = 0
	}
	return buf[b.w:]
}

// readInto reads into p: early bytes first, then the connection. With
// pooled set, the buffer may be released while waiting and reacquired
// when data arrives (p is then re-sliced from the new buffer).
func (b *frameReader) readInto(p []byte, pooled bool) (int, error) {
	if len(b.early) > 0 {
		n := copy(p, b.early)
		b.early = b.early[n:]
		return n, nil
	}
	if b.raw == nil {
		return b.conn.Read(p)
	}
	b.rp, b.rpooled = p, pooled
	if b.onReadable == nil {
		b.onReadable = b.readable
	}
	err := b.raw.Read(b.onReadable)
	n, rerr := b.rn, b.rerr
	b.rp, b.rn, b.rerr = nil, 0, nil
	return netpoll.ReadResult(err, n, rerr)
}

// readable is RawConn.Read's callback: one non-blocking read(2) into rp.
// It is a method value made once per reader (on its first read), so a
// read allocates nothing and a leg that never waits pays nothing.
func (b *frameReader) readable(fd uintptr) bool {
	if b.rpooled && b.bp == nil {
		b.acquire()
		b.rp = (*b.bp)[b.w:]
	}
	b.rn, b.rerr = netpoll.Recv(fd, b.rp)
	switch b.rerr {
	case syscall.EAGAIN:
		if b.rpooled && b.r == b.w {
			b.releaseIfEmpty() // wait without a buffer
			if b.parkOnBlock {
				b.rerr = errWouldBlock
				return true
			}
		}
		return false
	case syscall.EINTR:
		return false
	}
	if b.rn < 0 {
		b.rn = 0
	}
	return true
}

// readNow reads once from a plain TCP socket into the buffer without
// waiting (the poller knows it is readable). It returns what read(2)
// returned: syscall.EAGAIN when there was nothing after all.
func (b *frameReader) readNow() (int, error) {
	b.rp = b.room()
	if b.onReadNow == nil {
		b.onReadNow = b.readNowFd
	}
	err := b.raw.Control(b.onReadNow)
	n, rerr := b.rn, b.rerr
	b.rp, b.rn, b.rerr = nil, 0, nil
	if err != nil {
		return 0, err
	}
	if n > 0 {
		b.w += n
	}
	return n, rerr
}

func (b *frameReader) readNowFd(fd uintptr) {
	b.rn, b.rerr = netpoll.Recv(fd, b.rp)
}

// Peek returns the next n bytes without consuming them, waiting until
// they are buffered; n must not exceed Size.
func (b *frameReader) Peek(n int) ([]byte, error) {
	if n > b.Size() {
		return nil, bufio.ErrBufferFull
	}
	for b.w-b.r < n {
		if err := b.fill(); err != nil {
			if b.bp != nil && b.w-b.r >= n {
				break
			}
			return nil, err
		}
	}
	return (*b.bp)[b.r : b.r+n], nil
}

// Discard skips the next n bytes, reading and dropping them as needed.
func (b *frameReader) Discard(n int) (int, error) {
	done := 0
	for done < n {
		if b.w == b.r {
			if err := b.fill(); err != nil {
				return done, err
			}
			continue
		}
		k := min(n-done, b.w-b.r)
		b.r += k
		done += k
	}
	return done, nil
}

// Read reads buffered bytes, or straight from the connection into p when
// nothing is buffered.
func (b *frameReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if b.w > b.r {
		n := copy(p, (*b.bp)[b.r:b.w])
		b.r += n
		return n, nil
	}
	b.releaseIfEmpty()
	return b.readInto(p, false)
}

// release gives the buffer back when the reader holds no bytes; on a
// plain TCP leg the next read takes one from the pool again.
func (b *frameReader) release() { b.releaseIfEmpty() }

// newLeg returns a leg reading conn: the backend leg (masked frames are
// written to it) or the client leg. early holds bytes already read from
// it (fasthttp's buffer, or the handshake reader's) that come first.
func newLeg(conn net.Conn, early []byte, backend bool) *leg {
	var raw syscall.RawConn
	if tc, ok := netpoll.TCPConn(conn); ok && netpoll.Supported {
		if rc, err := tc.SyscallConn(); err == nil {
			// The leg does raw I/O itself (see write): it keeps the
			// bare TCPConn, not a rawTCPConn and its per-call state.
			conn, raw = tc, rc
		}
	}
	l := &leg{conn: conn, masked: backend, raw: raw}
	l.st.fromClient = !backend
	l.br = newFrameReader(conn, raw, early)
	return l
}

// writeNow writes p to a plain TCP leg without waiting (the socket is
// known writable) and returns what it wrote: fewer bytes, with
// syscall.EAGAIN or no error, when the socket buffer is full. Write
// deadlines do not apply. l.mu held.
func (l *leg) writeNow(p []byte) (int, error) {
	return l.rw.WriteNow(l.raw, p)
}

// write writes all of p to l, within the write deadline set on conn: on
// a plain TCP leg with raw system calls, waiting through the runtime's
// poller only while the socket is full. l.mu held, or the leg's close
// reserved.
func (l *leg) write(p []byte) (int, error) {
	if l.raw == nil {
		return l.conn.Write(p)
	}
	return l.rw.Write(l.raw, p)
}
