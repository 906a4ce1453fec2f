package proxy

import (
	"bytes"
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
	Peek(key string) []byte
	DelBytes(key []byte)
}

// removeHopByHop deletes every field named in Connection, then the fixed
// hop-by-hop fields. Names compare case-insensitively (fasthttp
// normalises stored names, and DelBytes normalises its argument).
// The nominated fields go first, so a client cannot name a field that
// wsgate adds itself afterwards (X-Forwarded-For).
func removeHopByHop(h headerDeleter) {
	if conn := h.Peek("Connection"); len(conn) > 0 {
		// Copy: DelBytes may move the bytes conn points into.
		var buf [256]byte
		list := append(buf[:0], conn...)
		for len(list) > 0 {
			var tok []byte
			if i := bytes.IndexByte(list, ','); i >= 0 {
				tok, list = list[:i], list[i+1:]
			} else {
				tok, list = list, nil
			}
			tok = bytes.TrimSpace(tok)
			if len(tok) > 0 {
				h.DelBytes(tok)
			}
		}
	}
	for _, name := range hopByHop {
		h.DelBytes(name)
	}
}

// hasToken reports whether the comma-separated header value v contains
// token, compared ASCII case-insensitively (RFC 9110 §5.6.1).
func hasToken(v []byte, token string) bool {
	for len(v) > 0 {
		var tok []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			tok, v = v[:i], v[i+1:]
		} else {
			tok, v = v, nil
		}
		if bytes.EqualFold(bytes.TrimSpace(tok), []byte(token)) {
			return true
		}
	}
	return false
}

// appendForwardedFor appends the X-Forwarded-For value to dst: the prior
// values when the peer is a trusted proxy, then the peer address. An
// untrusted peer's X-Forwarded-For is dropped, so a client cannot forge
// the addresses a backend sees.
func appendForwardedFor(dst []byte, prior [][]byte, peer netip.Addr, trusted []netip.Prefix) []byte {
	if isTrusted(peer, trusted) {
		for _, p := range prior {
			p = bytes.TrimSpace(p)
			if len(p) == 0 {
				continue
			}
			dst = append(dst, p...)
			dst = append(dst, ", "...)
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

// setForwarded sets X-Forwarded-For, -Proto and -Host on a request that is
// about to leave for a backend. Proto and Host from a trusted proxy are
// kept; from anyone else they are replaced.
func setForwarded(dst *fasthttp.RequestHeader, src *fasthttp.RequestHeader, peer netip.Addr, isTLS bool, trusted []netip.Prefix) {
	var buf [256]byte
	xff := appendForwardedFor(buf[:0], src.PeekAll("X-Forwarded-For"), peer, trusted)
	dst.SetBytesV("X-Forwarded-For", xff)
	fromTrusted := isTrusted(peer, trusted)
	if !fromTrusted || len(src.Peek("X-Forwarded-Proto")) == 0 {
		if isTLS {
			dst.Set("X-Forwarded-Proto", "https")
		} else {
			dst.Set("X-Forwarded-Proto", "http")
		}
	}
	if !fromTrusted || len(src.Peek("X-Forwarded-Host")) == 0 {
		dst.SetBytesV("X-Forwarded-Host", src.Host())
	}
}

// applyRequestOps applies a route's request header edits.
func applyRequestOps(h *fasthttp.RequestHeader, ops *routes.HeaderOps) {
	for _, name := range ops.Remove {
		h.Del(name)
	}
	for _, kv := range ops.Set {
		h.Set(kv.Name, kv.Value)
	}
}

// applyResponseOps applies a route's response header edits.
func applyResponseOps(h *fasthttp.ResponseHeader, ops *routes.HeaderOps) {
	for _, name := range ops.Remove {
		h.Del(name)
	}
	for _, kv := range ops.Set {
		h.Set(kv.Name, kv.Value)
	}
}

// peerAddr returns the client address of ctx as a netip.Addr, unmapping
// IPv4-in-IPv6.
func peerAddr(ctx *fasthttp.RequestCtx) netip.Addr {
	a, _ := netip.AddrFromSlice(ctx.RemoteIP())
	return a.Unmap()
}
