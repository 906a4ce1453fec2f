package wsrelay

import (
	"testing"
	"unicode/utf8"
)

// validInPieces checks msg as the relay does: cut at the given points,
// each piece masked with key (unless zero) from its position.
func validInPieces(msg []byte, cuts []int, key [4]byte) bool {
	masked := append([]byte(nil), msg...)
	maskBytes(key, 0, masked)
	st := utf8Accept
	prev := 0
	for _, c := range append(cuts, len(msg)) {
		if c < prev || c > len(msg) {
			continue
		}
		st = utf8Masked(st, masked[prev:c], key, prev)
		if st == utf8Reject {
			return false
		}
		prev = c
	}
	return st == utf8Accept
}

func TestUTF8Cases(t *testing.T) {
	cases := []struct {
		in   string
		want bool
	}{
		{"", true},
		{"hello, world — ünïcödé 日本語 🎉", true},
		{"\xed\x9f\xbf", true},          // U+D7FF
		{"\xed\xa0\x80", false},         // U+D800, a surrogate
		{"\xee\x80\x80", true},          // U+E000
		{"\xf4\x8f\xbf\xbf", true},      // U+10FFFF
		{"\xf4\x90\x80\x80", false},     // past U+10FFFF
		{"\xc0\xaf", false},             // overlong /
		{"\xe0\x80\xaf", false},         // overlong /
		{"\xf0\x80\x80\xaf", false},     // overlong /
		{"\xce\xba\xe1\xbd", false},     // ends inside a character
		{"abcdefgh\x80abcdefgh", false}, // a lone continuation after an ASCII word
		{"\xff", false},
	}
	for _, c := range cases {
		for _, key := range [][4]byte{{}, {0x37, 0xfa, 0x21, 0x3d}} {
			for cut := 0; cut <= len(c.in); cut++ {
				if got := validInPieces([]byte(c.in), []int{cut}, key); got != c.want {
					t.Errorf("%q cut at %d, key %x: valid = %v, want %v", c.in, cut, key, got, c.want)
				}
			}
		}
	}
}

// FuzzUTF8Pieces: the streaming check over any cuts and any mask agrees
// with utf8.Valid on the whole message.
func FuzzUTF8Pieces(f *testing.F) {
	f.Add([]byte("κόσμε"), uint16(3), uint16(7), uint32(0x37fa213d))
	f.Add([]byte("\xed\xa0\x80abc"), uint16(1), uint16(2), uint32(0))
	f.Add([]byte("aaaaaaaaaaaaaaaaaaaaaaa\xf0\x9f\x8e\x89bbbbbbbbbbbbbbb"), uint16(9), uint16(25), uint32(0xdeadbeef))
	f.Fuzz(func(t *testing.T, msg []byte, c1, c2 uint16, k uint32) {
		key := [4]byte{byte(k), byte(k >> 8), byte(k >> 16), byte(k >> 24)}
		cuts := []int{int(c1) % (len(msg) + 1), int(c2) % (len(msg) + 1)}
		if cuts[0] > cuts[1] {
			cuts[0], cuts[1] = cuts[1], cuts[0]
		}
		if got, want := validInPieces(msg, cuts, key), utf8.Valid(msg); got != want {
			t.Fatalf("%q cut at %v, key %x: valid = %v, utf8.Valid = %v", msg, cuts, key, got, want)
		}
	})
}

func BenchmarkUTF8Masked128(b *testing.B) {
	msg := make([]byte, 128)
	for i := range msg {
		msg[i] = 'a' + byte(i%26)
	}
	key := [4]byte{1, 2, 3, 4}
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		if utf8Masked(utf8Accept, msg, key, 0) == utf8Reject {
			b.Fatal("reject")
		}
	}
}
