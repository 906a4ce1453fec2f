// Package filewatch tells its caller when files may have changed. It
// watches the directories holding the files (and their symlink targets),
// not the files, which catches editors' and certbot's replace-by-rename
// and Kubernetes' ConfigMap and Secret symlink swaps. Events are
// debounced; the caller's check decides, from the files' stats, whether
// anything really changed.
//
// Platform contract: watch_linux.go provides newDirWatcher with inotify
// (through package syscall); watch_other.go returns an error wrapping
// errors.ErrUnsupported, and Watch polls instead. The package imports
// only the standard library.
package filewatch

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Options configures [Watch]; zero fields take the stated defaults.
type Options struct {
	// Debounce is how long Watch waits after the last event before it
	// checks, so that a writer replacing several files back to back
	// causes one check. Default 200ms.
	Debounce time.Duration
	// MaxDebounce bounds the wait when events keep coming (a busy
	// directory), so that a check still happens. Default 2s.
	MaxDebounce time.Duration
	// Poll is how often Watch checks when it cannot watch directories.
	// Default 2s.
	Poll time.Duration
	// Logger receives watch failures; nil means slog.Default().
	Logger *slog.Logger
	// What names the watch in logs, such as "certificate watch".
	What string
}

// Watch calls check after the directories of files() saw events
// (debounced), once after the watches are set up (files may have changed
// before), and every Poll when directories cannot be watched, until ctx
// is done; it blocks, so run it in its own goroutine. After each check it
// calls files() again and watches the new set of directories if it
// differs. Watch returns only after every goroutine it started has
// exited.
func Watch(ctx context.Context, files func() []string, check func(), o Options) {
	if o.Debounce <= 0 {
		o.Debounce = 200 * time.Millisecond
	}
	if o.MaxDebounce <= 0 {
		o.MaxDebounce = 2 * time.Second
	}
	if o.Poll <= 0 {
		o.Poll = 2 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	for ctx.Err() == nil {
		dirs := Dirs(files())
		w, err := newDirWatcher(dirs)
		if err != nil {
			level := slog.LevelWarn
			if errors.Is(err, errors.ErrUnsupported) {
				level = slog.LevelInfo
			}
			o.Logger.Log(ctx, level, o.What+": cannot watch directories, polling files",
				"dirs", dirs, "interval", o.Poll, "error", err)
			check()
			poll(ctx, o.Poll, check)
			return
		}
		// Files may have changed between the caller's last load (or the
		// last watcher) and the watches taking effect.
		check()
		err = watchEvents(ctx, w, dirs, files, check, &o)
		switch {
		case err == nil:
			return
		case errors.Is(err, errRewatch):
			// A symlink now points into another directory, or a watched
			// directory went away (Kubernetes deletes the old target after
			// its swap): watch the current set.
			o.Logger.Debug(o.What+": watching again", "reason", err)
		default:
			o.Logger.Warn(o.What+" failed, polling files", "dirs", dirs, "interval", o.Poll, "error", err)
			check()
			poll(ctx, o.Poll, check)
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

// watchEvents debounces w's events into checks until ctx is done (nil),
// w fails (its error), or the directories to watch differ from dirs after
// a check (errRewatch). It closes w before returning.
func watchEvents(ctx context.Context, w dirWatcher, dirs []string, files func() []string, check func(), o *Options) error {
	defer w.Close()
	timer := time.NewTimer(o.Debounce)
	timer.Stop()
	defer timer.Stop()
	var first time.Time // first event since the last check; zero when none pending
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
			timer.Reset(min(o.Debounce, max(0, first.Add(o.MaxDebounce).Sub(now))))
		case <-timer.C:
			first = time.Time{}
			check()
			if !slices.Equal(dirs, Dirs(files())) {
				return errRewatch
			}
		}
	}
}

// poll calls check every interval until ctx is done.
func poll(ctx context.Context, interval time.Duration, check func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			check()
		}
	}
}

// Stat is what os.Stat (following symlinks) said about one file.
type Stat struct {
	fi  os.FileInfo // nil if Stat failed
	err error
}

// StatFile stats name, following symlinks.
func StatFile(name string) Stat {
	fi, err := os.Stat(name)
	return Stat{fi: fi, err: err}
}

// Same reports whether two stats describe the same file content as far
// as a watcher can tell: same file, size and modification time, or both
// failing the same way.
func (a Stat) Same(b Stat) bool {
	if a.fi == nil || b.fi == nil {
		return a.fi == nil && b.fi == nil && a.err.Error() == b.err.Error()
	}
	return os.SameFile(a.fi, b.fi) && a.fi.Size() == b.fi.Size() && a.fi.ModTime().Equal(b.fi.ModTime())
}

// IsDir reports whether the stat found a directory.
func (a Stat) IsDir() bool { return a.fi != nil && a.fi.IsDir() }

// StatFiles appends the stats of names to dst.
func StatFiles(names []string, dst []Stat) []Stat {
	for _, n := range names {
		dst = append(dst, StatFile(n))
	}
	return dst
}

// Changed reports whether any of names differs from old, which StatFiles
// produced for the same names.
func Changed(old []Stat, names []string) bool {
	if len(old) != len(names) {
		return true
	}
	for i, n := range names {
		if !old[i].Same(StatFile(n)) {
			return true
		}
	}
	return false
}

// Dirs returns the distinct directories to watch for files: each file's
// parent, and the parent of its symlink target when that differs, so an
// in-place write to the target is seen too.
func Dirs(files []string) []string {
	var dirs []string
	seen := map[string]bool{}
	add := func(d string) {
		if !seen[d] {
			seen[d] = true
			dirs = append(dirs, d)
		}
	}
	for _, f := range files {
		add(filepath.Dir(f))
		if real, err := filepath.EvalSymlinks(f); err == nil {
			add(filepath.Dir(real))
		}
	}
	return dirs
}
