package filewatch

import (
	"context"
	"os"
	"path/filepath"
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
