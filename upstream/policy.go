package upstream

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"math"
)

// maxSchedule bounds the length of a round-robin schedule; weights whose
// sum (after dividing by their common divisor) is larger are scaled down.
const maxSchedule = 1 << 16

// smoothSchedule returns one cycle of nginx's smooth weighted round robin
// over the given weights, as indexes: each index appears weight times,
// spread out (weights 5, 1, 1 give a a b a c a a, not a a a a a b c).
// Equal weights give 0, 1, …, n-1.
func smoothSchedule(weights []int) []uint32 {
	if len(weights) == 0 {
		return nil
	}
	g := 0
	for _, w := range weights {
		g = gcd(g, w)
	}
	w := make([]int, len(weights))
	total := 0
	for i, x := range weights {
		w[i] = x / g
		total += w[i]
	}
	if total == len(w) { // equal weights: plain round robin
		seq := make([]uint32, len(w))
		for i := range seq {
			seq[i] = uint32(i)
		}
		return seq
	}
	if total > maxSchedule {
		scale := float64(maxSchedule) / float64(total)
		total = 0
		for i := range w {
			w[i] = max(1, int(float64(w[i])*scale))
			total += w[i]
		}
	}
	// O(total × len(w)): at most 2^16 × 256 steps, on a rebuild only.
	seq := make([]uint32, 0, total)
	cur := make([]int, len(w))
	for range total {
		best := 0
		for i := range w {
			cur[i] += w[i]
			if cur[i] > cur[best] {
				best = i
			}
		}
		cur[best] -= total
		seq = append(seq, uint32(best))
	}
	return seq
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// FNV-1a, 64 bits (the constants of hash/fnv), inlined so that hashing a
// request's key allocates nothing.
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func fnv1a(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	return h
}

func fnv1aBytes(h uint64, b []byte) uint64 {
	for _, c := range b {
		h ^= uint64(c)
		h *= fnvPrime
	}
	return h
}

// fmix64 is the 64-bit finalizer of MurmurHash3: it spreads every input
// bit over the output, which FNV alone does not do well enough for
// rendezvous scores.
func fmix64(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

// hrwHash is the rendezvous hash of a key hash and a target: fixed, with
// no per-process seed, so that every wsgate with the same targets ranks
// them alike for a key. keyHash is fnv1a of the key bytes.
func hrwHash(keyHash uint64, t *Target) uint64 {
	return fmix64(keyHash ^ t.hrw)
}

// hrwScore weights a rendezvous hash (the logarithmic method of
// Schindelhauer and Schomaker): score = weight / -ln(u), u the hash mapped
// into (0, 1). A target with twice the weight wins twice as many keys,
// and removing a target moves only the keys it won.
func hrwScore(h uint64, weight int) float64 {
	// 52 bits: h>>12 + 0.5 is exact in a float64, so u < 1 for every h.
	u := (float64(h>>12) + 0.5) / (1 << 52)
	return float64(weight) / -math.Log(u)
}

// cookieKey returns the HMAC key of the sticky cookie values: the
// configured secret, or else one derived from the upstream's name (stable
// across restarts and replicas, but guessable: set a secret so that a
// value cannot be matched to an address).
func cookieKey(cfg *Config) []byte {
	if cfg.Sticky.Secret != "" {
		return []byte(cfg.Sticky.Secret)
	}
	return []byte("wsgate sticky cookie for upstream " + cfg.Name)
}

// cookieValue names a target in the sticky cookie: the first 8 bytes of
// HMAC-SHA256(key, URL), in hex.
func cookieValue(key []byte, url string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(url))
	return hex.EncodeToString(m.Sum(nil)[:8])
}
