package tls

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// startWatch runs fn(ctx) in a goroutine and returns a stop function that
// cancels ctx and fails the test unless fn returns within 5s.
func startWatch(t *testing.T, fn func(context.Context)) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(ctx)
	}()
	stopped := false
	stop = func() {
		t.Helper()
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("watcher did not return after its context was cancelled")
		}
	}
	t.Cleanup(stop)
	return stop
}

// waitForCN polls handshakes until the server presents want (deadline 10s).
func waitForCN(t *testing.T, addr, sni, want string) {
	t.Helper()
	eventually(t, 10*time.Second, "CN "+want, func() bool {
		cn, err := tryServedCN(addr, sni)
		return err == nil && cn == want
	})
}

func TestWatchReplace(t *testing.T) {
	dir := t.TempDir()
	p := writePair(t, dir, "cert", "v1", "a.example.com")
	s, logs := mustLoad(t, Options{Pairs: []Pair{p}})
	addr := startServer(t, s.Config())
	stop := startWatch(t, s.Watch)

	replacePair(t, p, "v2", "a.example.com")
	waitForCN(t, addr, "a.example.com", "v2")

	// An unrelated file in the directory does not cause a reload.
	writeFile(t, filepath.Join(dir, "unrelated"), []byte("x"))
	replacePair(t, p, "v3", "a.example.com")
	waitForCN(t, addr, "a.example.com", "v3")
	stop()

	if out := logs.String(); runtime.GOOS == "linux" && strings.Contains(out, "polling") {
		t.Errorf("Watch fell back to polling on Linux:\n%s", out)
	} else if strings.Contains(out, "reload failed") {
		t.Logf("a reload saw a half-replaced pair and was retried:\n%s", out)
	}
}

func TestWatchBrokenThenFixed(t *testing.T) {
	dir := t.TempDir()
	p := writePair(t, dir, "cert", "v1", "a.example.com")
	s, logs := mustLoad(t, Options{Pairs: []Pair{p}})
	addr := startServer(t, s.Config())
	startWatch(t, s.Watch)

	replaceFile(t, p.KeyFile, []byte("broken\n"))
	eventually(t, 10*time.Second, "reload error in the log", func() bool {
		return strings.Contains(logs.String(), "certificate reload failed")
	})
	if got := servedCN(t, addr, "a.example.com"); got != "v1" {
		t.Errorf("after a broken key served CN %q, want v1", got)
	}
	replacePair(t, p, "v2", "a.example.com")
	waitForCN(t, addr, "a.example.com", "v2")
}

// TestWatchSymlinkSwap replaces certificates the way Kubernetes updates a
// mounted secret: the files are symlinks through "..data", which is
// switched to a new directory by renaming a new symlink over it, and the
// old directory is then deleted.
func TestWatchSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	version := func(name, cn string) {
		t.Helper()
		d := filepath.Join(dir, name)
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		certPEM, keyPEM := genCert(t, cn, "a.example.com")
		writeFile(t, filepath.Join(d, "tls.crt"), certPEM)
		writeFile(t, filepath.Join(d, "tls.key"), keyPEM)
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
	symlink("..data/tls.crt", "tls.crt")
	symlink("..data/tls.key", "tls.key")

	p := Pair{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key")}
	s, logs := mustLoad(t, Options{Pairs: []Pair{p}})
	addr := startServer(t, s.Config())
	startWatch(t, s.Watch)

	version("..v2", "v2")
	swap("..v1", "..v2")
	waitForCN(t, addr, "a.example.com", "v2")

	// The second swap works too: the watcher followed the symlink to the
	// new directory after the old one was deleted.
	version("..v3", "v3")
	swap("..v2", "..v3")
	waitForCN(t, addr, "a.example.com", "v3")

	// An in-place write to the symlink target is seen as well.
	certPEM, keyPEM := genCert(t, "v4", "a.example.com")
	writeFile(t, filepath.Join(dir, "..v3", "tls.crt"), certPEM)
	writeFile(t, filepath.Join(dir, "..v3", "tls.key"), keyPEM)
	waitForCN(t, addr, "a.example.com", "v4")

	if out := logs.String(); runtime.GOOS == "linux" && strings.Contains(out, "polling") {
		t.Errorf("Watch fell back to polling on Linux:\n%s", out)
	}
}

// TestWatchFallback makes directory watching fail (the directory is gone
// when Watch starts) and checks that Watch polls and sees the files return.
func TestWatchFallback(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	p := writePair(t, dir, "cert", "v1", "a.example.com")
	s, logs := mustLoad(t, Options{Pairs: []Pair{p}})
	addr := startServer(t, s.Config())
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	startWatch(t, s.Watch)
	eventually(t, 5*time.Second, "fallback to polling", func() bool {
		return strings.Contains(logs.String(), "polling files")
	})

	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	replacePair(t, p, "v2", "a.example.com")
	waitForCN(t, addr, "a.example.com", "v2") // within a few 2s polls
}

func TestReloadIfChanged(t *testing.T) {
	dir := t.TempDir()
	p := writePair(t, dir, "cert", "v1", "a.example.com")
	s, _ := mustLoad(t, Options{Pairs: []Pair{p}})

	if s.reloadIfChanged() {
		t.Error("reloadIfChanged() = true right after Load, want false")
	}
	writeFile(t, filepath.Join(dir, "unrelated"), []byte("x"))
	if s.reloadIfChanged() {
		t.Error("reloadIfChanged() = true after an unrelated write, want false")
	}
	replaceFile(t, p.KeyFile, []byte("broken\n"))
	if !s.reloadIfChanged() {
		t.Error("reloadIfChanged() = false after replacing the key, want true")
	}
	if s.reloadIfChanged() {
		t.Error("reloadIfChanged() = true again for the same broken key, want false (retry only after a change)")
	}
	if err := os.Remove(p.CertFile); err != nil {
		t.Fatal(err)
	}
	if !s.reloadIfChanged() {
		t.Error("reloadIfChanged() = false after removing the cert, want true")
	}
	replacePair(t, p, "v2", "a.example.com")
	if !s.reloadIfChanged() {
		t.Error("reloadIfChanged() = false after replacing the pair, want true")
	}
	if got := s.idx.Load().certs[0].Leaf.Subject.CommonName; got != "v2" {
		t.Errorf("CN after reloadIfChanged = %q, want v2", got)
	}
}
