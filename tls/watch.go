package tls

import (
	"context"
	"time"

	"github.com/wsgate/wsgate/internal/filewatch"
)

// pollInterval is how often Watch stats the files when it cannot use
// inotify.
const pollInterval = 2 * time.Second

// Watch reloads the certificates after their files change, until ctx is
// done; it blocks, so run it in its own goroutine. It watches the
// directories holding the files (and their symlink targets), not the files,
// which catches editors' and certbot's replace-by-rename and Kubernetes'
// symlink swaps (see package filewatch). Events are debounced (~200ms); a
// reload happens only if a file's identity, size or modification time
// changed since the last load. Reload errors are logged and the old
// certificates stay in use. Without inotify (other systems, or inotify
// failing) it polls every 2s. Watch returns only after every goroutine it
// started has exited.
func (s *Store) Watch(ctx context.Context) {
	filewatch.Watch(ctx, s.files, func() { s.reloadIfChanged() },
		filewatch.Options{Poll: pollInterval, Logger: s.log, What: "certificate watch"})
}

// files returns the certificate and key files, in pair order.
func (s *Store) files() []string {
	out := make([]string, 0, 2*len(s.pairs))
	for _, p := range s.pairs {
		out = append(out, p.CertFile, p.KeyFile)
	}
	return out
}

// reloadIfChanged reloads if some file's stat differs from the last load
// attempt, logging errors, and reports whether it tried.
func (s *Store) reloadIfChanged() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !filewatch.Changed(s.stats, s.files()) {
		return false
	}
	if err := s.reloadLocked(); err != nil {
		s.log.Error("certificate reload failed; keeping the previous certificates", "error", err)
	}
	return true
}
