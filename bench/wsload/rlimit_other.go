//go:build !unix

package main

// raiseNoFileLimit does nothing where there is no RLIMIT_NOFILE; 0 means
// unknown.
func raiseNoFileLimit() (uint64, error) { return 0, nil }
