//go:build race

package wsrelay

// raceEnabled: the race detector makes sync.Pool drop items at random, so
// allocation counts that rely on pooling are checked only without it.
const raceEnabled = true
