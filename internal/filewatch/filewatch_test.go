package filewatch

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// watch runs Watch on files until the test ends and counts its checks.
func watch(t *testing.T, files []string, o Options) *atomic.Int64 {
	t.Helper()
	var checks atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { Watch(ctx, func() []string { return files }, func() { checks.Add(1) }, o) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return &checks
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWatchRename(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(f, []byte("a"), 0o600); err != nil {
		t.Fatal(err)
	}
	checks := watch(t, []string{f}, Options{Debounce: 10 * time.Millisecond})
	waitFor(t, "the first check", func() bool { return checks.Load() >= 1 })
	before := checks.Load()
	tmp := filepath.Join(dir, ".config.yaml.tmp")
	if err := os.WriteFile(tmp, []byte("b"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, f); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a check after the rename", func() bool { return checks.Load() > before })
}

func TestPoll(t *testing.T) {
	var n atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		poll(ctx, time.Millisecond, func() { n.Add(1) })
	}()
	waitFor(t, "three polls", func() bool { return n.Load() >= 3 })
	cancel()
	<-done
}

func TestChanged(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	if err := os.WriteFile(a, []byte("1"), 0o600); err != nil {
		t.Fatal(err)
	}
	names := []string{a, b} // b does not exist
	old := StatFiles(names, nil)
	if Changed(old, names) {
		t.Error("Changed right after StatFiles = true, want false")
	}
	if !Changed(old, names[:1]) {
		t.Error("Changed with fewer names = false, want true")
	}
	if err := os.WriteFile(b, []byte("2"), 0o600); err != nil {
		t.Fatal(err)
	}
	if !Changed(old, names) {
		t.Error("Changed after b appeared = false, want true")
	}
}

func TestDirs(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "data", "config.yaml")
	if err := os.MkdirAll(filepath.Dir(real), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(real, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "config.yaml")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	got := Dirs([]string{link, link})
	want := []string{dir, filepath.Dir(real)}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("Dirs = %q, want %q", got, want)
	}
}

// syncBuffer is a log destination safe for the watch goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// changeCounter runs Watch on files, counting the checks that found a
// file changed since the previous one (the caller's job in real use).
func changeCounter(t *testing.T, files []string, o Options) *atomic.Int64 {
	t.Helper()
	var mu sync.Mutex
	last := StatFiles(files, nil)
	var changes atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		Watch(ctx, func() []string { return files }, func() {
			mu.Lock()
			defer mu.Unlock()
			if Changed(last, files) {
				last = StatFiles(files, last[:0])
				changes.Add(1)
			}
		}, o)
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return &changes
}

// TestWatchSymlinkSwap: the Kubernetes layout (file -> ..data/file,
// ..data -> ..vN) is followed through two swaps, each deleting the old
// target directory, and an in-place write to the current target is seen
// too, all without falling back to polling on Linux.
func TestWatchSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	version := func(name, content string) {
		t.Helper()
		d := filepath.Join(dir, name)
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "config.yaml"), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	symlink := func(target, name string) {
		t.Helper()
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	swap := func(from, to string) {
		t.Helper()
		symlink(to, "..data_tmp")
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(filepath.Join(dir, from)); err != nil {
			t.Fatal(err)
		}
	}
	version("..v1", "v1")
	symlink("..v1", "..data")
	symlink("..data/config.yaml", "config.yaml")

	logs := &syncBuffer{}
	changes := changeCounter(t, []string{filepath.Join(dir, "config.yaml")},
		Options{Debounce: 10 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(logs, nil))})

	version("..v2", "v2 longer")
	swap("..v1", "..v2")
	waitFor(t, "the first swap", func() bool { return changes.Load() >= 1 })
	version("..v3", "v3 longer still")
	swap("..v2", "..v3")
	waitFor(t, "the second swap", func() bool { return changes.Load() >= 2 })
	n := changes.Load()
	if err := os.WriteFile(filepath.Join(dir, "..v3", "config.yaml"), []byte("v4, written in place"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the in-place write", func() bool { return changes.Load() > n })

	if out := logs.String(); runtime.GOOS == "linux" && strings.Contains(out, "polling") {
		t.Errorf("Watch fell back to polling on Linux:\n%s", out)
	}
}

// TestWatchFallback: when a directory cannot be watched (it is gone when
// Watch starts), Watch logs that it polls, and polling sees the file come
// back.
func TestWatchFallback(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "conf")
	f := filepath.Join(dir, "config.yaml")
	logs := &syncBuffer{}
	changes := changeCounter(t, []string{f},
		Options{Poll: 10 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	waitFor(t, "the fallback to polling", func() bool { return strings.Contains(logs.String(), "polling files") })
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f, []byte("back"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a poll that sees the file", func() bool { return changes.Load() >= 1 })
}
