package wsrelay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"
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

// Close codes wsgate sends itself (RFC 6455 §7.4.1).
const (
	closeNormal         = 1000
	closeGoingAway      = 1001
	closeProtocolError  = 1002
	closeNoStatus       = 1005 // received only: a close frame with no payload
	closeAbnormal       = 1006 // never sent: reported for a connection that ended without a close frame
	closeInvalidData    = 1007
	closeTooBig         = 1009
	closeInternalError  = 1011
	closeServiceRestart = CloseServiceRestart
)

const (
	maxControlPayload = 125
	maxFrameHeader    = 14
)

// frameHeader is a parsed WebSocket frame header.
type frameHeader struct {
	fin    bool
	rsv    byte // RSV1..3 as the bits 0x40, 0x20, 0x10
	opcode byte
	masked bool
	mask   [4]byte
	length int64 // payload length
	size   int   // header length on the wire
}

func (h *frameHeader) isControl() bool { return h.opcode&0x8 != 0 }

// protocolError is a frame that breaks RFC 6455; the sender gets close
// with code (1002, or 1007 for bad UTF-8 in a close reason).
type protocolError struct {
	code   uint16
	reason string
}

func (e *protocolError) Error() string { return "protocol error: " + e.reason }

func protoErr(format string, args ...any) *protocolError {
	return &protocolError{code: closeProtocolError, reason: fmt.Sprintf(format, args...)}
}

// peeker is the part of a buffered reader readHeader needs.
type peeker interface {
	Peek(n int) ([]byte, error)
}

// readHeader parses the next frame header from br without consuming it:
// the caller discards h.size bytes (or the whole frame) itself.
func readHeader(br peeker) (frameHeader, error) {
	b, err := br.Peek(2)
	if err != nil {
		return frameHeader{}, err
	}
	if size := headerSize(b); size > 2 {
		if b, err = br.Peek(size); err != nil {
			return frameHeader{}, err
		}
	}
	h, _, err := parseHeader(b)
	return h, err
}

// headerSize is the length of the header whose first two bytes are b.
func headerSize(b []byte) int {
	size := 2
	switch b[1] & 0x7F {
	case 126:
		size += 2
	case 127:
		size += 8
	}
	if b[1]&0x80 != 0 {
		size += 4
	}
	return size
}

// parseHeader parses the frame header at the start of b. ok is false when
// b is too short to hold the whole header.
func parseHeader(b []byte) (h frameHeader, ok bool, err error) {
	if len(b) < 2 {
		return h, false, nil
	}
	h.size = headerSize(b)
	if len(b) < h.size {
		return h, false, nil
	}
	h.fin = b[0]&0x80 != 0
	h.rsv = b[0] & 0x70
	h.opcode = b[0] & 0x0F
	h.masked = b[1]&0x80 != 0
	n := int64(b[1] & 0x7F)
	p := b[2:]
	switch n {
	case 126:
		n = int64(binary.BigEndian.Uint16(p))
		p = p[2:]
	case 127:
		v := binary.BigEndian.Uint64(p)
		if v>>63 != 0 {
			return h, true, protoErr("64-bit payload length has its most significant bit set")
		}
		n = int64(v)
		p = p[8:]
	}
	h.length = n
	if h.masked {
		copy(h.mask[:], p[:4])
	}
	return h, true, nil
}

// appendHeader appends the wire form of h (using h.masked and h.mask) to dst.
func appendHeader(dst []byte, h *frameHeader) []byte {
	b0 := h.rsv | h.opcode
	if h.fin {
		b0 |= 0x80
	}
	var b1 byte
	if h.masked {
		b1 = 0x80
	}
	switch {
	case h.length <= 125:
		dst = append(dst, b0, b1|byte(h.length))
	case h.length <= 0xFFFF:
		dst = append(dst, b0, b1|126, byte(h.length>>8), byte(h.length))
	default:
		dst = append(dst, b0, b1|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(h.length))
	}
	if h.masked {
		dst = append(dst, h.mask[:]...)
	}
	return dst
}

// maskBytes XORs b with key, starting at key position pos, and returns the
// position after b. Masking and unmasking are the same operation
// (RFC 6455 §5.3).
func maskBytes(key [4]byte, pos int, b []byte) int {
	if len(b) >= 16 {
		// Rotate the key so that b[0] lines up with key[pos&3], then XOR
		// eight bytes at a time.
		var k [8]byte
		for i := range k {
			k[i] = key[(pos+i)&3]
		}
		kw := binary.LittleEndian.Uint64(k[:])
		for len(b) >= 8 {
			binary.LittleEndian.PutUint64(b, binary.LittleEndian.Uint64(b)^kw)
			b = b[8:]
			// pos advances by 8, a multiple of 4: alignment is unchanged.
		}
	}
	for i := range b {
		b[i] ^= key[pos&3]
		pos++
	}
	return pos & 3
}

// closePayload is the parsed body of a close frame.
type closePayload struct {
	code   uint16 // closeNoStatus when the frame had no payload
	reason string
}

// parseClose validates a close frame payload (already unmasked): a code
// that may be sent on the wire and a UTF-8 reason (RFC 6455 §5.5.1, §7.4).
func parseClose(p []byte) (closePayload, error) {
	switch {
	case len(p) == 0:
		return closePayload{code: closeNoStatus}, nil
	case len(p) == 1:
		return closePayload{}, protoErr("close frame payload of 1 byte")
	}
	code := binary.BigEndian.Uint16(p)
	if !validCloseCode(code) {
		return closePayload{}, protoErr("invalid close code %d", code)
	}
	reason := p[2:]
	if !utf8.Valid(reason) {
		return closePayload{}, &protocolError{code: closeInvalidData, reason: "close reason is not valid UTF-8"}
	}
	return closePayload{code: code, reason: string(reason)}, nil
}

// validCloseCode reports whether code may appear in a close frame on the
// wire: 1000–1003, 1007–1014 and 3000–4999 (RFC 6455 §7.4.1, IANA).
func validCloseCode(code uint16) bool {
	switch {
	case code >= 1000 && code <= 1003:
		return true
	case code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// relayCloseCode maps a received close code to the one wsgate passes on.
// 1014 (Bad Gateway) is registered but many client libraries reject it,
// so it travels as 1011.
func relayCloseCode(code uint16) uint16 {
	if code == 1014 {
		return closeInternalError
	}
	return code
}

// appendCloseFrame appends a complete close frame to dst. The reason is
// cut to fit the 125-byte control payload on a UTF-8 boundary. A code of
// closeNoStatus produces an empty payload.
func appendCloseFrame(dst []byte, code uint16, reason string, masked bool, key [4]byte) []byte {
	var payload [maxControlPayload]byte
	n := 0
	if code != closeNoStatus {
		binary.BigEndian.PutUint16(payload[:], code)
		n = 2
		r := reason
		if len(r) > maxControlPayload-2 {
			r = r[:maxControlPayload-2]
			for len(r) > 0 && !utf8.ValidString(r) {
				r = r[:len(r)-1]
			}
		}
		n += copy(payload[2:], r)
	}
	return appendControlFrame(dst, opClose, payload[:n], masked, key)
}

// appendControlFrame appends a complete control frame with an unmasked
// payload p (≤125 bytes), masking it with key when masked is set.
func appendControlFrame(dst []byte, opcode byte, p []byte, masked bool, key [4]byte) []byte {
	h := frameHeader{fin: true, opcode: opcode, masked: masked, mask: key, length: int64(len(p))}
	dst = appendHeader(dst, &h)
	start := len(dst)
	dst = append(dst, p...)
	if masked {
		maskBytes(key, 0, dst[start:])
	}
	return dst
}

var errMessageTooBig = errors.New("message exceeds max_message_size")

// CloseServiceRestart (1012) is the close code a reload sends by default.
const CloseServiceRestart = 1012
