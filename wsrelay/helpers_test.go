package wsrelay

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"time"

	"github.com/wsgate/wsgate/internal/testnet"
)

// makeFrame encodes one frame by hand: b0 is FIN|RSV|opcode; payload is
// masked with *key when key is not nil. It uses the minimal length
// encoding and is independent of frame.go.
func makeFrame(b0 byte, key *[4]byte, payload []byte) []byte {
	var mb byte
	if key != nil {
		mb = 0x80
	}
	b := []byte{b0}
	switch n := len(payload); {
	case n <= 125:
		b = append(b, mb|byte(n))
	case n <= 0xFFFF:
		b = append(b, mb|126, byte(n>>8), byte(n))
	default:
		b = append(b, mb|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if key == nil {
		return append(b, payload...)
	}
	b = append(b, key[:]...)
	for i, c := range payload {
		b = append(b, c^key[i&3])
	}
	return b
}

// rawFrame is one frame as read off the wire by readRawFrame.
type rawFrame struct {
	fin     bool
	rsv     byte
	opcode  byte
	masked  bool
	key     [4]byte
	payload []byte // unmasked
}

// readRawFrame reads one whole frame from br, independently of frame.go.
// Payloads are capped at 64 MiB.
func readRawFrame(br *bufio.Reader) (rawFrame, error) {
	var f rawFrame
	var hdr [2]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return f, err
	}
	f.fin = hdr[0]&0x80 != 0
	f.rsv = hdr[0] & 0x70
	f.opcode = hdr[0] & 0x0F
	f.masked = hdr[1]&0x80 != 0
	n := uint64(hdr[1] & 0x7F)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(br, b[:]); err != nil {
			return f, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(br, b[:]); err != nil {
			return f, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	if n > 64<<20 {
		return f, fmt.Errorf("frame of %d bytes", n)
	}
	if f.masked {
		if _, err := io.ReadFull(br, f.key[:]); err != nil {
			return f, err
		}
	}
	f.payload = make([]byte, n)
	if _, err := io.ReadFull(br, f.payload); err != nil {
		return f, err
	}
	if f.masked {
		for i := range f.payload {
			f.payload[i] ^= f.key[i&3]
		}
	}
	return f, nil
}

// hangGuard bounds waits for what must happen at once, in tests whose
// close-handshake budget is a minute: a test that sees a connection end
// within hangGuard knows that the path under test did it, not the cut.
const hangGuard = 20 * time.Second

// Shared with the other packages' tests.
var tcpPair = testnet.TCPPair
var waitFor = testnet.WaitFor
