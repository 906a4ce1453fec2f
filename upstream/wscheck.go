package upstream

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"
)

// WebSocket opcodes (RFC 6455 §5.2).
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA
)

// maxCheckMessage bounds a message the WebSocket check reads.
const maxCheckMessage = 64 << 10

// wsCheck holds a real WebSocket conversation with the target within
// Health.Timeout: an upgrade whose 101 must carry the right
// Sec-WebSocket-Accept (and the configured subprotocol), then a ping that
// must be answered by a pong with the same payload, or the configured
// text message that must be answered by a message matching Expect, then
// a close 1000 that must be answered by a close frame (or the end of the
// connection). It catches a backend whose WebSocket layer is wedged: one
// that answers 101 and never reads.
func (c *checker) wsCheck(ctx context.Context) error {
	w := c.h.WebSocket
	ctx, cancel := context.WithTimeout(ctx, c.h.Timeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	conn, err := c.dialer.DialContext(ctx, "tcp", c.t.Addr)
	if err != nil {
		return fmt.Errorf("websocket %s: %w", w.Path, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(deadline)
	if c.tls != nil {
		tc := tls.Client(conn, c.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			return fmt.Errorf("websocket %s: %w", w.Path, err)
		}
		conn = tc
	}
	wc := &wsConn{conn: conn, br: bufio.NewReaderSize(conn, 4096)}
	if err := c.upgrade(wc); err != nil {
		return fmt.Errorf("websocket %s: %w", w.Path, timeoutError(err, c.h.Timeout))
	}
	if err := c.converse(wc); err != nil {
		return fmt.Errorf("websocket %s: %w", w.Path, err)
	}
	// The close handshake (RFC 6455 §7.1.2): 1000, then the target's
	// close frame, or the end of the connection.
	if err := wc.write(opClose, []byte{0x03, 0xE8}); err != nil {
		return fmt.Errorf("websocket %s: close: %w", w.Path, err)
	}
	for {
		op, _, err := wc.readFrame()
		// A reset is an end too: a target that closes while the close
		// frame it has not read is queued makes its kernel send one.
		if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || op == opClose {
			return nil
		}
		if err != nil {
			return fmt.Errorf("websocket %s: close: %w", w.Path, timeoutError(err, c.h.Timeout))
		}
	}
}

// timeoutError names a timeout by the check's budget.
func timeoutError(err error, d time.Duration) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("no answer within %s", d)
	}
	return err
}

// upgrade sends the opening handshake and checks the 101 (RFC 6455 §4.1).
func (c *checker) upgrade(wc *wsConn) error {
	w := c.h.WebSocket
	var raw [16]byte
	_, _ = rand.Read(raw[:])
	key := base64.StdEncoding.EncodeToString(raw[:])
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n", w.Path, c.host)
	fmt.Fprintf(&b, "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n", key)
	if w.Subprotocol != "" {
		fmt.Fprintf(&b, "Sec-WebSocket-Protocol: %s\r\n", w.Subprotocol)
	}
	ua := false
	for _, hd := range c.h.Headers {
		if strings.EqualFold(hd.Name, "Host") {
			continue
		}
		ua = ua || strings.EqualFold(hd.Name, "User-Agent")
		fmt.Fprintf(&b, "%s: %s\r\n", hd.Name, hd.Value)
	}
	if !ua {
		b.WriteString("User-Agent: wsgate-health-check\r\n")
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(wc.conn, b.String()); err != nil {
		return err
	}
	resp, err := http.ReadResponse(wc.br, nil)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		resp.Body.Close()
		return fmt.Errorf("status %d, want 101", resp.StatusCode)
	}
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	switch {
	case !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket"):
		return errors.New("101 without Upgrade: websocket")
	case resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]):
		return errors.New("101 with a wrong Sec-WebSocket-Accept")
	case w.Subprotocol != "" && resp.Header.Get("Sec-WebSocket-Protocol") != w.Subprotocol:
		return fmt.Errorf("subprotocol %q not chosen (got %q)", w.Subprotocol, resp.Header.Get("Sec-WebSocket-Protocol"))
	}
	return nil
}

// converse sends a ping and waits for its pong, or sends the configured
// message and waits for a matching one. Other frames are skipped.
func (c *checker) converse(wc *wsConn) error {
	w, d := c.h.WebSocket, c.h.Timeout
	if w.Send == "" {
		const payload = "wsgate-health-check"
		if err := wc.write(opPing, []byte(payload)); err != nil {
			return timeoutError(err, d)
		}
		for {
			op, p, err := wc.readFrame()
			if err != nil {
				return fmt.Errorf("waiting for pong: %w", timeoutError(err, d))
			}
			switch {
			case op == opPong && string(p) == payload:
				return nil
			case op == opClose:
				return fmt.Errorf("closed by the target (%s) instead of a pong", closeText(p))
			}
		}
	}
	if err := wc.write(opText, []byte(w.Send)); err != nil {
		return timeoutError(err, d)
	}
	var last []byte
	for {
		op, msg, err := wc.readMessage()
		if err != nil {
			if last != nil {
				return fmt.Errorf("no message matching %q (last %q): %w", w.Expect.String(), clip(last), timeoutError(err, d))
			}
			return fmt.Errorf("waiting for an answer: %w", timeoutError(err, d))
		}
		if op == opClose {
			return fmt.Errorf("closed by the target (%s) instead of an answer", closeText(msg))
		}
		if w.Expect == nil || w.Expect.Match(msg) {
			return nil
		}
		last = msg
	}
}

func clip(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "…"
	}
	return string(b)
}

func closeText(p []byte) string {
	if len(p) < 2 {
		return "no code"
	}
	return fmt.Sprintf("code %d %q", binary.BigEndian.Uint16(p), p[2:])
}

// wsConn is the client side of a WebSocket, just enough for a check.
type wsConn struct {
	conn net.Conn
	br   *bufio.Reader
}

// write sends one masked frame with FIN set.
func (wc *wsConn) write(op byte, p []byte) error {
	frame := make([]byte, 0, 14+len(p))
	frame = append(frame, 0x80|op)
	switch n := len(p); {
	case n < 126:
		frame = append(frame, 0x80|byte(n))
	case n <= 0xFFFF:
		frame = append(frame, 0x80|126, byte(n>>8), byte(n))
	default:
		frame = append(frame, 0x80|127)
		frame = binary.BigEndian.AppendUint64(frame, uint64(n))
	}
	var mask [4]byte
	_, _ = rand.Read(mask[:])
	frame = append(frame, mask[:]...)
	for i, b := range p {
		frame = append(frame, b^mask[i%4])
	}
	_, err := wc.conn.Write(frame)
	return err
}

// readFrame reads one frame; a server's frames must not be masked.
func (wc *wsConn) readFrame() (op byte, payload []byte, err error) {
	op, _, payload, err = wc.readFrameFin()
	return op, payload, err
}

// readFrameFin is readFrame that also says whether the frame has FIN.
func (wc *wsConn) readFrameFin() (op byte, fin bool, payload []byte, err error) {
	var hdr [2]byte
	if _, err := io.ReadFull(wc.br, hdr[:]); err != nil {
		return 0, false, nil, err
	}
	op, fin = hdr[0]&0x0F, hdr[0]&0x80 != 0
	if hdr[1]&0x80 != 0 {
		return 0, false, nil, errors.New("masked frame from the target")
	}
	n := uint64(hdr[1] & 0x7F)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(wc.br, b[:]); err != nil {
			return 0, false, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(wc.br, b[:]); err != nil {
			return 0, false, nil, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	if n > maxCheckMessage {
		// A large frame (a snapshot pushed on connect, say) is skipped,
		// not read: it stands for an empty one.
		if _, err := io.CopyN(io.Discard, wc.br, int64(n)); err != nil {
			return 0, false, nil, err
		}
		return op, fin, nil, nil
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(wc.br, payload); err != nil {
		return 0, false, nil, err
	}
	return op, fin, payload, nil
}

// readMessage reads the next data message, joining its fragments, or a
// close frame; pings and pongs are skipped.
func (wc *wsConn) readMessage() (op byte, msg []byte, err error) {
	for {
		code, fin, p, err := wc.readFrameFin()
		if err != nil {
			return 0, nil, err
		}
		switch code {
		case opClose:
			return opClose, p, nil
		case opPing, opPong:
			continue
		case opText, opBinary:
			op, msg = code, p
		case opContinuation:
			if op == 0 {
				return 0, nil, errors.New("continuation frame without a message")
			}
			if len(msg)+len(p) > maxCheckMessage {
				return 0, nil, fmt.Errorf("message over %d bytes", maxCheckMessage)
			}
			msg = append(msg, p...)
		default:
			return 0, nil, fmt.Errorf("unknown opcode %#x", code)
		}
		if fin {
			return op, msg, nil
		}
	}
}
