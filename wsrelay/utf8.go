package wsrelay

import (
	"encoding/binary"
	"math/bits"
)

// Text messages are checked as UTF-8 (RFC 6455 §8.1) while they pass,
// frame by frame and chunk by chunk, without buffering a message: the
// check carries one byte of state from one piece to the next. Client
// frames are still masked when they are read (wsgate re-masks them for
// the backend without ever unmasking them), so the check unmasks as it
// reads rather than making a pass of its own.

// UTF-8 states: how the bytes so far end (RFC 3629 §4). utf8Accept: on a
// character boundary; utf8Need1..3: inside a character, that many
// continuation bytes (80–BF) to go; the others: the next byte has a
// narrower range (no overlong forms, no surrogates, nothing past
// U+10FFFF), then one or two more.
const (
	utf8Accept uint8 = iota
	utf8Need1
	utf8Need2
	utf8Need3
	utf8AfterE0 // A0–BF, then one more
	utf8AfterED // 80–9F, then one more
	utf8AfterF0 // 90–BF, then two more
	utf8AfterF4 // 80–8F, then two more
	utf8Reject
)

// utf8Step is the state after byte c in state st.
func utf8Step(st uint8, c byte) uint8 {
	switch st {
	case utf8Accept:
		switch {
		case c < 0x80:
			return utf8Accept
		case c < 0xC2: // continuation bytes, and C0/C1 (overlong)
			return utf8Reject
		case c < 0xE0:
			return utf8Need1
		case c == 0xE0:
			return utf8AfterE0
		case c == 0xED:
			return utf8AfterED
		case c < 0xF0:
			return utf8Need2
		case c == 0xF0:
			return utf8AfterF0
		case c < 0xF4:
			return utf8Need3
		case c == 0xF4:
			return utf8AfterF4
		}
		return utf8Reject
	case utf8Need1, utf8Need2, utf8Need3:
		if c&0xC0 != 0x80 {
			return utf8Reject
		}
		return st - 1
	case utf8AfterE0:
		if c < 0xA0 || c > 0xBF {
			return utf8Reject
		}
		return utf8Need1
	case utf8AfterED:
		if c < 0x80 || c > 0x9F {
			return utf8Reject
		}
		return utf8Need1
	case utf8AfterF0:
		if c < 0x90 || c > 0xBF {
			return utf8Reject
		}
		return utf8Need2
	case utf8AfterF4:
		if c < 0x80 || c > 0x8F {
			return utf8Reject
		}
		return utf8Need2
	}
	return utf8Reject
}

// utf8Masked returns the state after the bytes of b, which are masked
// with key from key position pos (a zero key for unmasked frames), in
// state st. ASCII runs go eight bytes at a time.
func utf8Masked(st uint8, b []byte, key [4]byte, pos int) uint8 {
	var k [8]byte
	for i := range k {
		k[i] = key[(pos+i)&3]
	}
	kw := binary.LittleEndian.Uint64(k[:])
	i := 0
	for i < len(b) {
		if st == utf8Accept && i+8 <= len(b) {
			// The key repeats every four bytes: rotated, it lines up
			// with b[i].
			w := bits.RotateLeft64(kw, -8*(i&3))
			for i+8 <= len(b) && (binary.LittleEndian.Uint64(b[i:])^w)&0x8080808080808080 == 0 {
				i += 8 // eight ASCII bytes
			}
			if i == len(b) {
				break
			}
		}
		st = utf8Step(st, b[i]^k[i&7])
		if st == utf8Reject {
			return st
		}
		i++
	}
	return st
}
