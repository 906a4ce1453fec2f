//go:build !race

package wsrelay

const raceEnabled = false
