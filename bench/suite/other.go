//go:build !linux

// The suite is Linux tooling: it pins processes with taskset, reads their
// CPU time from /proc and stops them by process group with a death
// signal. Elsewhere it only says so, so that the module builds on every
// platform.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "bench/suite runs on Linux only (taskset, /proc, process groups)")
	os.Exit(2)
}
