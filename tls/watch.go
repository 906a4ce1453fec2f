package tls

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"
)

const (
	// debounce is how long Watch waits after the last event before it
	// reloads, so a writer replacing cert and key back to back causes one
	// reload, not a reload of a half-written pair.
	debounce = 200 * time.Millisecond
	// maxDebounce bounds the wait when events keep coming (a busy
	// directory), so a reload still happens.
	maxDebounce = 2 * time.Second
	// pollInterval is how often Watch stats the files when it cannot use
	// inotify.
	pollInterval = 2 * time.Second
)

// Watch reloads the certificates after their files change, until ctx is
// done; it blocks, so run it in its own goroutine. It watches the
// directories holding the files (and their symlink targets), not the files,
// which catches editors' and certbot's replace-by-rename and Kubernetes'
// symlink swaps. Events are debounced (~200ms); a reload happens only if a
// file's identity, size or modification time changed since the last load.
// Reload errors are logged and the old certificates stay in use. Without
// inotify (other systems, or inotify failing) it polls every 2s. Watch
// returns only after every goroutine it started has exited.
func (s *Store) Watch(ctx context.Context) {
	for {
		dirs := watchDirs(s.pairs)
		w, err := newDirWatcher(dirs)
		if err != nil {
			level := slog.LevelWarn
			if errors.Is(err, errors.ErrUnsupported) {
				level = slog.LevelInfo
			}
			s.log.Log(ctx, level, "certificate watch: cannot watch directories, polling files",
				"dirs", dirs, "interval", pollInterval, "error", err)
			s.reloadIfChanged() // files may have changed since Load
			s.poll(ctx, pollInterval)
			return
		}
		// Files may have changed between Load (or the last watcher) and the
		// watches taking effect.
		s.reloadIfChanged()
		err = s.watchEvents(ctx, w, dirs)
		switch {
		case err == nil:
			return
		case errors.Is(err, errRewatch):
			// A symlink now points into another directory, or a watched
			// directory went away (Kubernetes deletes the old target after
			// its swap): watch the current set.
			s.log.Debug("certificate watch: watching again", "reason", err)
		default:
			s.log.Warn("certificate watch failed, polling files",
				"dirs", dirs, "interval", pollInterval, "error", err)
			s.reloadIfChanged()
			s.poll(ctx, pollInterval)
			return
		}
	}
}

// errRewatch says the watched directories are stale and Watch should set
// up a new watcher.
var errRewatch = errors.New("watched directories changed")

// dirWatcher reports changes in a set of directories.
type dirWatcher interface {
	// Changed receives a value after one or more events; values coalesce.
	Changed() <-chan struct{}
	// Failed receives the error that ended watching; errRewatch if a
	// watched directory was removed or moved. Changed then stays silent.
	Failed() <-chan error
	// Close stops watching and returns after the watcher's goroutines exit.
	Close()
}

// watchEvents debounces w's events into reloads until ctx is done (nil),
// w fails (its error), or the directories to watch differ from dirs after
// a reload (errRewatch). It closes w before returning.
func (s *Store) watchEvents(ctx context.Context, w dirWatcher, dirs []string) error {
	defer w.Close()
	timer := time.NewTimer(debounce)
	timer.Stop()
	defer timer.Stop()
	var first time.Time // first event since the last reload; zero when none pending
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-w.Failed():
			return err
		case <-w.Changed():
			now := time.Now()
			if first.IsZero() {
				first = now
			}
			// Since Go 1.23 Reset discards a stale tick; no draining needed.
			timer.Reset(min(debounce, max(0, first.Add(maxDebounce).Sub(now))))
		case <-timer.C:
			first = time.Time{}
			if s.reloadIfChanged() && !slices.Equal(dirs, watchDirs(s.pairs)) {
				return errRewatch
			}
		}
	}
}

// poll checks the files every interval until ctx is done.
func (s *Store) poll(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.reloadIfChanged()
		}
	}
}

// reloadIfChanged reloads if some file's stat differs from the last load
// attempt, logging errors, and reports whether it tried.
func (s *Store) reloadIfChanged() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !statsChanged(s.stats, s.pairs) {
		return false
	}
	if err := s.reloadLocked(); err != nil {
		s.log.Error("certificate reload failed; keeping the previous certificates", "error", err)
	}
	return true
}

// fileStat is what os.Stat (following symlinks) said about one file.
type fileStat struct {
	fi  os.FileInfo // nil if Stat failed
	err error
}

// same reports whether two stats describe the same file content as far
// as a watcher can tell: same file, size and modification time, or both
// failing the same way.
func (a fileStat) same(b fileStat) bool {
	if a.fi == nil || b.fi == nil {
		return a.fi == nil && b.fi == nil && a.err.Error() == b.err.Error()
	}
	return os.SameFile(a.fi, b.fi) && a.fi.Size() == b.fi.Size() && a.fi.ModTime().Equal(b.fi.ModTime())
}

// statPairs appends the stats of each pair's cert and key file to dst.
func statPairs(pairs []Pair, dst []fileStat) []fileStat {
	for _, p := range pairs {
		dst = append(dst, statFile(p.CertFile), statFile(p.KeyFile))
	}
	return dst
}

func statFile(name string) fileStat {
	fi, err := os.Stat(name)
	return fileStat{fi: fi, err: err}
}

// statsChanged reports whether any file of pairs differs from old, which
// statPairs produced for the same pairs.
func statsChanged(old []fileStat, pairs []Pair) bool {
	for i, p := range pairs {
		if !old[2*i].same(statFile(p.CertFile)) || !old[2*i+1].same(statFile(p.KeyFile)) {
			return true
		}
	}
	return false
}

// watchDirs returns the distinct directories to watch: each file's parent,
// and the parent of its symlink target when that differs, so an in-place
// write to the target is seen too.
func watchDirs(pairs []Pair) []string {
	var dirs []string
	seen := map[string]bool{}
	add := func(d string) {
		if !seen[d] {
			seen[d] = true
			dirs = append(dirs, d)
		}
	}
	for _, p := range pairs {
		for _, f := range []string{p.CertFile, p.KeyFile} {
			add(filepath.Dir(f))
			if real, err := filepath.EvalSymlinks(f); err == nil {
				add(filepath.Dir(real))
			}
		}
	}
	return dirs
}
