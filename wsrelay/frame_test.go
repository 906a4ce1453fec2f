package wsrelay

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"testing"
)

// TestMaskBytes compares maskBytes with the byte-at-a-time definition for
// every length up to 100 and every starting key position.
func TestMaskBytes(t *testing.T) {
	key := [4]byte{0x12, 0x34, 0x56, 0x78}
	for n := range 101 {
		for pos := range 4 {
			data := make([]byte, n)
			for i := range data {
				data[i] = byte(i * 7)
			}
			want := bytes.Clone(data)
			for i := range want {
				want[i] ^= key[(pos+i)&3]
			}
			next := maskBytes(key, pos, data)
			if !bytes.Equal(data, want) {
				t.Fatalf("maskBytes(len %d, pos %d) = %x, want %x", n, pos, data, want)
			}
			if next != (pos+n)&3 {
				t.Fatalf("maskBytes(len %d, pos %d) returned %d, want %d", n, pos, next, (pos+n)&3)
			}
		}
	}
	// Split masking continues where the first part stopped.
	data := bytes.Repeat([]byte{0xAA}, 1000)
	whole := bytes.Clone(data)
	maskBytes(key, 0, whole)
	pos := 0
	for _, cut := range [][2]int{{0, 3}, {3, 20}, {20, 517}, {517, 1000}} {
		pos = maskBytes(key, pos, data[cut[0]:cut[1]])
	}
	if !bytes.Equal(data, whole) {
		t.Fatal("masking in parts differs from masking at once")
	}
}

func BenchmarkMaskBytes(b *testing.B) {
	for _, size := range []int{16, 128, 4 << 10, 64 << 10} {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			data := make([]byte, size)
			key := [4]byte{1, 2, 3, 4}
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				maskBytes(key, 1, data)
			}
		})
	}
}

// FuzzFrameHeader checks that readHeader never panics, that what it
// returns is consistent with its input, and that appendHeader re-encodes
// a minimally encoded header to the same bytes.
func FuzzFrameHeader(f *testing.F) {
	for _, seed := range [][]byte{
		{0x81, 0x05, 'h', 'e', 'l', 'l', 'o'},
		{0x82, 0xFE, 0x01, 0x00, 1, 2, 3, 4},
		{0x02, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0},
		{0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4},
		{0x88, 0x82, 1, 2, 3, 4, 0x02, 0xE9},
		{0xC1, 0x7E, 0x00, 0x10}, // non-minimal 16-bit length
		{0x89},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(b), 16)
		h, err := readHeader(br)
		if err != nil {
			return
		}
		if h.size < 2 || h.size > maxFrameHeader || h.size > len(b) {
			t.Fatalf("header size %d for %d input bytes", h.size, len(b))
		}
		if h.length < 0 {
			t.Fatalf("negative length %d", h.length)
		}
		if br.Buffered() < h.size && br.Buffered() != len(b) {
			t.Fatalf("readHeader consumed input: %d buffered", br.Buffered())
		}
		if h.fin != (b[0]&0x80 != 0) || h.rsv != b[0]&0x70 || h.opcode != b[0]&0x0F || h.masked != (b[1]&0x80 != 0) {
			t.Fatalf("header %+v does not match first bytes %x", h, b[:2])
		}
		switch n := b[1] & 0x7F; {
		case n == 126 && h.length < 126, n == 127 && h.length <= 0xFFFF:
			return // not minimal (RFC 6455 §5.2); appendHeader writes the minimal form
		}
		if got := appendHeader(nil, &h); !bytes.Equal(got, b[:h.size]) {
			t.Fatalf("appendHeader(readHeader(%x)) = %x", b[:h.size], got)
		}
	})
}

// TestReadHeaderErrors: a header cut short is an I/O error, a 64-bit
// length with its top bit set a protocol error (1002).
func TestReadHeaderErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    []byte
		proto bool
	}{
		{"empty", nil, false},
		{"one byte", []byte{0x81}, false},
		{"short 16-bit length", []byte{0x81, 0x7E, 0x01}, false},
		{"short 64-bit length", []byte{0x81, 0x7F, 0, 0, 0, 0}, false},
		{"short mask", []byte{0x81, 0x85, 1, 2}, false},
		{"64-bit MSB", []byte{0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := readHeader(bufio.NewReader(bytes.NewReader(tc.in)))
			var pe *protocolError
			if errors.As(err, &pe) != tc.proto || err == nil {
				t.Fatalf("readHeader(%x) = %v, want protocol error %v", tc.in, err, tc.proto)
			}
			if tc.proto && pe.code != closeProtocolError {
				t.Errorf("code %d, want 1002", pe.code)
			}
		})
	}
}
