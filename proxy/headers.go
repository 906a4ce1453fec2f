package proxy

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"net/netip"

	"github.com/valyala/fasthttp"

	"github.com/wsgate/wsgate/routes"
)

// hopByHop lists the fields that belong to one connection (RFC 9110
// §7.6.1), plus HTTP2-Settings, which only accompanies an h2c upgrade.
var hopByHop = [][]byte{
	[]byte("Connection"),
	[]byte("Keep-Alive"),
	[]byte("Proxy-Connection"),
	[]byte("TE"),
	[]byte("Trailer"),
	[]byte("Transfer-Encoding"),
	[]byte("Upgrade"),
	[]byte("Proxy-Authorization"),
	[]byte("Proxy-Authenticate"),
	[]byte("HTTP2-Settings"),
}

// headerDeleter is the part of fasthttp's request and response headers
// that hop-by-hop removal needs.
type headerDeleter interface {
	PeekAll(key string) [][]byte
	ConnectionClose() bool
	DelBytes(key []byte)
}

// removeHopByHop deletes every field named in any Connection line, then
// the fixed hop-by-hop fields (RFC 9110 §7.6.1). Names compare
// case-insensitively (fasthttp normalises stored names, and DelBytes
// normalises its argument). The nominated fields go first, so a client
// cannot name a field that wsgate adds itself afterwards
// (X-Forwarded-For).
//
// fasthttp hides Connection lines in two ways: a final "Connection: close"
// line hides the earlier ones from Peek and PeekAll, and
// ResetConnectionClose deletes them. A parsed request keeps its raw head,
// which is read instead; for a response, call this before
// ResetConnectionClose.
//
// It does not allocate: tokens are read in place, which is safe because
// DelBytes only moves whole entries and never rewrites the bytes of the
// lines being read.
func removeHopByHop(h headerDeleter) {
	if rh, ok := h.(*fasthttp.RequestHeader); ok {
		raw := rh.RawHeaders()
		for len(raw) > 0 {
			var line []byte
			if i := indexCRLF(raw); i >= 0 {
				line, raw = raw[:i], raw[i+1:]
			} else {
				line, raw = raw, nil
			}
			if colon := indexByteOf(line, ':'); colon > 0 && equalFoldASCII(line[:colon], "connection") {
				deleteNominated(h, line[colon+1:])
			}
		}
	}
	if !h.ConnectionClose() {
		for _, line := range h.PeekAll("Connection") {
			deleteNominated(h, line)
		}
	} else if rh, ok := h.(*fasthttp.ResponseHeader); ok {
		// Collect, then delete: All must not run over a changing list.
		var buf [8][]byte
		lines := buf[:0]
		for k, v := range rh.All() {
			if equalFoldASCII(k, "connection") {
				lines = append(lines, v)
			}
		}
		for _, v := range lines {
			deleteNominated(h, v)
		}
	}
	for _, name := range hopByHop {
		h.DelBytes(name)
	}
}

// nextElement splits the first element off a comma-separated list,
// trimmed of optional white space (RFC 9110 §5.6.1), and returns it with
// the rest of the list.
func nextElement(v []byte) (elem, rest []byte) {
	if i := bytes.IndexByte(v, ','); i >= 0 {
		return trimOWS(v[:i]), v[i+1:]
	}
	return trimOWS(v), nil
}

// deleteNominated deletes each field named in the Connection value v.
func deleteNominated(h headerDeleter, v []byte) {
	for len(v) > 0 {
		var tok []byte
		if tok, v = nextElement(v); len(tok) > 0 {
			h.DelBytes(tok)
		}
	}
}

// hasToken reports whether the comma-separated header value v contains
// token, compared ASCII case-insensitively after trimming optional white
// space (RFC 9110 §5.6.1, §5.6.2). token must be lower-case. Unicode case
// folding would be wrong: "webſocket" is not "websocket".
func hasToken(v []byte, token string) bool {
	for len(v) > 0 {
		var tok []byte
		if tok, v = nextElement(v); equalFoldASCII(tok, token) {
			return true
		}
	}
	return false
}

// appendForwardedFor appends the X-Forwarded-For value to dst: the prior
// addresses when the peer is a trusted proxy, then the peer address. The
// prior field lines are joined into one list; empty list elements and
// optional white space around elements are dropped. An untrusted peer's
// X-Forwarded-For is dropped, so a client cannot forge the addresses a
// backend sees.
func appendForwardedFor(dst []byte, prior [][]byte, peer netip.Addr, trusted []netip.Prefix) []byte {
	if isTrusted(peer, trusted) {
		for _, line := range prior {
			for len(line) > 0 {
				var elem []byte
				if elem, line = nextElement(line); len(elem) > 0 {
					dst = append(dst, elem...)
					dst = append(dst, ", "...)
				}
			}
		}
	}
	return peer.AppendTo(dst)
}

func isTrusted(peer netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(peer) {
			return true
		}
	}
	return false
}

// Header names setForwarded writes or drops.
var (
	hdrXFF       = []byte("X-Forwarded-For")
	hdrXFProto   = []byte("X-Forwarded-Proto")
	hdrXFHost    = []byte("X-Forwarded-Host")
	hdrForwarded = []byte("Forwarded")
	hdrXRealIP   = []byte("X-Real-Ip")
	valueHTTP    = []byte("http")
	valueHTTPS   = []byte("https")
)

// setForwarded sets X-Forwarded-For, -Proto and -Host on a request that is
// about to leave for a backend, replacing every line the client sent.
// Proto and Host from a trusted proxy are kept; from anyone else they are
// replaced, and the client's Forwarded and X-Real-IP are dropped: wsgate
// does not set them, and a backend must not read forged addresses there.
func setForwarded(dst *fasthttp.RequestHeader, src *fasthttp.RequestHeader, peer netip.Addr, isTLS bool, trusted []netip.Prefix) {
	var buf [256]byte
	xff := appendForwardedFor(buf[:0], src.PeekAll("X-Forwarded-For"), peer, trusted)
	// SetCanonical replaces only the first line of a repeated field.
	dst.DelBytes(hdrXFF)
	dst.SetCanonical(hdrXFF, xff)
	fromTrusted := isTrusted(peer, trusted)
	if !fromTrusted {
		dst.DelBytes(hdrForwarded)
		dst.DelBytes(hdrXRealIP)
	}
	if proto := src.PeekAll("X-Forwarded-Proto"); !fromTrusted || len(proto) != 1 || len(proto[0]) == 0 {
		dst.DelBytes(hdrXFProto)
		if isTLS {
			dst.SetCanonical(hdrXFProto, valueHTTPS)
		} else {
			dst.SetCanonical(hdrXFProto, valueHTTP)
		}
	}
	if host := src.PeekAll("X-Forwarded-Host"); !fromTrusted || len(host) != 1 || len(host[0]) == 0 {
		dst.DelBytes(hdrXFHost)
		dst.SetCanonical(hdrXFHost, src.Host())
	}
}

// applyRequestOps applies a route's request header edits. A set replaces
// every line of the field.
func applyRequestOps(h *fasthttp.RequestHeader, ops *routes.HeaderOps) {
	for _, name := range ops.Remove {
		h.Del(name)
	}
	for _, kv := range ops.Set {
		h.Del(kv.Name)
		h.Set(kv.Name, kv.Value)
	}
}

// applyResponseOps applies a route's response header edits. A set
// replaces every line of the field.
func applyResponseOps(h *fasthttp.ResponseHeader, ops *routes.HeaderOps) {
	for _, name := range ops.Remove {
		h.Del(name)
	}
	for _, kv := range ops.Set {
		h.Del(kv.Name)
		h.Set(kv.Name, kv.Value)
	}
}

// peerAddr returns the client address of ctx as a netip.Addr, unmapping
// IPv4-in-IPv6.
func peerAddr(ctx *fasthttp.RequestCtx) netip.Addr {
	a, _ := netip.AddrFromSlice(ctx.RemoteIP())
	return a.Unmap()
}

// hdrRequestID names the request id: kept from a trusted proxy, else made
// here; forwarded to the backend, returned to the client and logged.
var hdrRequestID = []byte("X-Request-Id")

// maxRequestID bounds a request id kept from a trusted proxy.
const maxRequestID = 200

// setRequestID gives the request its id and returns it: the one a trusted
// proxy sent, if it is one visible-ASCII token of at most maxRequestID
// bytes, else 16 random hex digits (replacing what the client sent). The
// returned slice is the request header's, valid during the request.
func setRequestID(ctx *fasthttp.RequestCtx, trusted []netip.Prefix) []byte {
	if len(trusted) > 0 {
		if v := ctx.Request.Header.PeekAll(string(hdrRequestID)); len(v) == 1 && validRequestID(v[0]) && isTrusted(peerAddr(ctx), trusted) {
			return v[0]
		}
	}
	var raw [8]byte
	var buf [16]byte
	binary.BigEndian.PutUint64(raw[:], rand.Uint64())
	hex.Encode(buf[:], raw[:])
	if len(ctx.Request.Header.PeekBytes(hdrRequestID)) > 0 {
		ctx.Request.Header.DelBytes(hdrRequestID) // every line the client sent
	}
	ctx.Request.Header.SetCanonical(hdrRequestID, buf[:])
	return ctx.Request.Header.PeekBytes(hdrRequestID)
}

// validRequestID reports whether v may be kept as a request id.
func validRequestID(v []byte) bool {
	if len(v) == 0 || len(v) > maxRequestID {
		return false
	}
	for _, c := range v {
		if c <= ' ' || c > '~' {
			return false
		}
	}
	return true
}
