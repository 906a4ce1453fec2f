//go:build !linux

package filewatch

import (
	"errors"
	"fmt"
	"runtime"
)

// newDirWatcher is unavailable outside Linux; Watch polls instead.
func newDirWatcher(dirs []string) (dirWatcher, error) {
	return nil, fmt.Errorf("directory watching on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}
