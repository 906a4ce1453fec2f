package main

import (
	"math"
	"math/bits"
	"time"
)

// histogram is a log-linear latency histogram in the style of HdrHistogram:
// values below 256 ns are exact, larger ones fall into 128 buckets per power
// of two, so a bucket is at most 1/128 (0.8%) of its value wide. It is a
// fixed-size array: recording never allocates and two histograms merge by
// adding counts. Values are clamped to 2^40 ns (about 18 minutes).
type histogram struct {
	counts [histBuckets]int64
	total  int64
	max    time.Duration
}

const (
	histSubBits  = 7
	histSub      = 1 << histSubBits // sub-buckets per power of two
	histMaxBits  = 40               // largest value is 2^40-1 ns
	histMaxShift = histMaxBits - histSubBits - 1
	histBuckets  = (histMaxShift + 2) * histSub
)

// histIndex maps v ≥ 0 to its bucket. For v < 256 the index is v; above,
// v is shifted right until it has 8 significant bits, m in [128, 256), and
// the index is shift*128 + m, which continues the exact range seamlessly.
func histIndex(v uint64) int {
	if v >= 1<<histMaxBits {
		v = 1<<histMaxBits - 1
	}
	if v < 2*histSub {
		return int(v)
	}
	shift := bits.Len64(v) - histSubBits - 1
	return shift*histSub + int(v>>shift)
}

// histValue is the midpoint of bucket i, the inverse of histIndex.
func histValue(i int) uint64 {
	if i < 2*histSub {
		return uint64(i)
	}
	shift := i/histSub - 1
	m := uint64(i - shift*histSub)
	return m<<shift + (1<<shift)/2
}

// record adds one observation.
func (h *histogram) record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.counts[histIndex(uint64(d))]++
	h.total++
	if d > h.max {
		h.max = d
	}
}

// merge adds o's observations to h.
func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.total += o.total
	h.max = max(h.max, o.max)
}

// quantile returns the value at quantile q in [0, 1] (nearest rank), or 0
// when h is empty. Quantile 1 is the exact maximum.
func (h *histogram) quantile(q float64) time.Duration {
	if h.total == 0 {
		return 0
	}
	if q >= 1 {
		return h.max
	}
	rank := max(int64(math.Ceil(q*float64(h.total))), 1)
	var seen int64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return min(time.Duration(histValue(i)), h.max)
		}
	}
	return h.max
}
