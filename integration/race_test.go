//go:build race

package integration

// raceEnabled makes TestMain build the binary with -race too, so a data
// race in wsgate under real traffic fails the test that caused it.
const raceEnabled = true
