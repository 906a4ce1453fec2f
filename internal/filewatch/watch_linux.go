//go:build linux

package filewatch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// inotifyMask selects the events that can mean new certificate content:
// in-place writes, replace-by-rename (editors, certbot), symlink swaps
// (Kubernetes renames "..data_tmp" over "..data"), deletion and chmod. The
// *_SELF events tell us the directory itself went away or moved.
const inotifyMask = syscall.IN_CLOSE_WRITE | syscall.IN_MODIFY | syscall.IN_ATTRIB |
	syscall.IN_CREATE | syscall.IN_DELETE | syscall.IN_MOVED_FROM | syscall.IN_MOVED_TO |
	syscall.IN_DELETE_SELF | syscall.IN_MOVE_SELF | syscall.IN_ONLYDIR

// inotifyWatcher watches directories with one inotify instance and one
// reader goroutine.
type inotifyWatcher struct {
	f       *os.File      // the inotify fd, owned by the runtime poller
	changed chan struct{} // cap 1; sends never block, events coalesce
	failed  chan error    // cap 1; at most one send, then the reader returns
	done    chan struct{} // closed when the reader returns
}

// newDirWatcher watches dirs with inotify.
func newDirWatcher(dirs []string) (dirWatcher, error) {
	fd, err := syscall.InotifyInit1(syscall.IN_CLOEXEC | syscall.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify_init1: %w", err)
	}
	// A non-blocking fd makes NewFile register it with the runtime poller,
	// so Close interrupts a pending Read instead of waiting for an event.
	f := os.NewFile(uintptr(fd), "inotify")
	if err := f.SetReadDeadline(time.Time{}); err != nil {
		f.Close()
		return nil, fmt.Errorf("inotify fd is not pollable: %w", err)
	}
	for _, d := range dirs {
		if _, err := syscall.InotifyAddWatch(fd, d, inotifyMask); err != nil {
			f.Close()
			return nil, fmt.Errorf("inotify watch %q: %w", d, err)
		}
	}
	w := &inotifyWatcher{
		f:       f,
		changed: make(chan struct{}, 1),
		failed:  make(chan error, 1),
		done:    make(chan struct{}),
	}
	go w.read()
	return w, nil
}

func (w *inotifyWatcher) Changed() <-chan struct{} { return w.changed }
func (w *inotifyWatcher) Failed() <-chan error     { return w.failed }

// Close closes the inotify fd, which makes the reader's Read fail, and
// waits for the reader to return.
func (w *inotifyWatcher) Close() {
	w.f.Close()
	<-w.done
}

// read turns inotify events into signals on w.changed until the fd is
// closed or a watch is lost.
func (w *inotifyWatcher) read() {
	defer close(w.done)
	// Room for many events; one event is at most SizeofInotifyEvent+NAME_MAX+1.
	buf := make([]byte, 16*(syscall.SizeofInotifyEvent+syscall.NAME_MAX+1))
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				w.failed <- fmt.Errorf("read inotify events: %w", err)
			}
			return
		}
		lost := false
		// struct inotify_event: wd int32, mask, cookie, len uint32, name[len].
		for off := 0; off+syscall.SizeofInotifyEvent <= n; {
			mask := binary.NativeEndian.Uint32(buf[off+4:])
			nameLen := binary.NativeEndian.Uint32(buf[off+12:])
			off += syscall.SizeofInotifyEvent + int(nameLen)
			// IN_IGNORED: the kernel dropped a watch (its directory was
			// deleted or unmounted). IN_Q_OVERFLOW needs nothing special:
			// any event leads to a stat comparison of every file.
			if mask&(syscall.IN_IGNORED|syscall.IN_DELETE_SELF|syscall.IN_MOVE_SELF|syscall.IN_UNMOUNT) != 0 {
				lost = true
			}
		}
		if lost {
			w.failed <- fmt.Errorf("inotify: %w", errRewatch)
			return
		}
		select {
		case w.changed <- struct{}{}:
		default: // a signal is already pending
		}
	}
}
