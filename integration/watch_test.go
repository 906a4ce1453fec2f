package integration

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// liveWatchConfig is a config with one listener whose route /version
// answers version.
func liveWatchConfig(version string) string {
	return fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
routes:
  - name: version
    match: {path: /version}
    respond: {body: %s}
`, version)
}

// liveFileChangeReload accepts a "config reloaded" line of the watcher that
// changed the version route.
func liveFileChangeReload(e map[string]any) bool {
	return e["source"] == "file change" && liveLogListHas(e, "routes_changed", "version")
}

// liveWantVersion checks that wsgate at addr answers /version with version.
func liveWantVersion(t *testing.T, addr, version string) {
	t.Helper()
	if status, body := liveGet(t, "http://"+addr+"/version"); status != http.StatusOK || body != version {
		t.Errorf("GET /version: %d %q, want 200 %q", status, body, version)
	}
}

// TestWatchReload: without a signal, wsgate reloads when its config file
// or a certificate is replaced, in the ways editors, Kubernetes and
// certbot replace them, and a burst of writes costs a few reloads.
func TestWatchReload(t *testing.T) {
	needBinary(t)

	t.Run("rename over the config", func(t *testing.T) {
		lg := startLiveGateway(t, liveWatchConfig("v1"))
		liveWantVersion(t, lg.g.Addr, "v1")
		from := lg.mark()
		replaceByRename(t, lg.path, []byte(liveWatchConfig("v2")))
		lg.waitReloaded(t, from, "from the watcher", liveFileChangeReload)
		liveWantVersion(t, lg.g.Addr, "v2")
	})

	t.Run("Kubernetes ConfigMap symlink swap", func(t *testing.T) {
		// The layout the kubelet writes for a mounted ConfigMap:
		// config.yaml -> ..data/config.yaml, ..data -> ..TIMESTAMP. An
		// update writes a new ..TIMESTAMP directory, points ..data_tmp at
		// it, renames ..data_tmp over ..data, and removes the old one.
		dir := t.TempDir()
		swap := func(t *testing.T, ts, version string, first bool) {
			t.Helper()
			if err := os.Mkdir(filepath.Join(dir, ts), 0o755); err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(dir, ts, "config.yaml"), []byte(liveWatchConfig(version)))
			if first {
				if err := os.Symlink(ts, filepath.Join(dir, "..data")); err != nil {
					t.Fatal(err)
				}
				return
			}
			old, err := os.Readlink(filepath.Join(dir, "..data"))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(ts, filepath.Join(dir, "..data_tmp")); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
				t.Fatal(err)
			}
			if err := os.RemoveAll(filepath.Join(dir, old)); err != nil {
				t.Fatal(err)
			}
		}
		swap(t, "..2026_01_01_00_00_00.000000001", "v1", true)
		path := filepath.Join(dir, "config.yaml")
		if err := os.Symlink(filepath.Join("..data", "config.yaml"), path); err != nil {
			t.Fatal(err)
		}
		lg := &liveGateway{path: path, g: startGatewayFile(t, path, nil)}
		liveWantVersion(t, lg.g.Addr, "v1")
		// Twice: after the first swap the watched target directory is
		// gone, and the watcher must follow ..data to the new one.
		for i, version := range []string{"v2", "v3"} {
			from := lg.mark()
			swap(t, fmt.Sprintf("..2026_01_01_00_00_0%d.000000001", i+1), version, false)
			lg.waitReloaded(t, from, "after swap "+version, liveFileChangeReload)
			liveWantVersion(t, lg.g.Addr, version)
		}
	})

	t.Run("burst of writes", func(t *testing.T) {
		lg := startLiveGateway(t, liveWatchConfig("w0"))
		from := lg.mark()
		const writes = 10
		for i := 1; i <= writes; i++ {
			replaceByRename(t, lg.path, []byte(liveWatchConfig(fmt.Sprintf("w%d", i))))
			time.Sleep(30 * time.Millisecond) // the stimulus: writes 30ms apart, within the 500ms debounce
		}
		// The last write wins: poll until it is served.
		final := fmt.Sprintf("w%d", writes)
		deadline := time.Now().Add(ioTimeout)
		for {
			_, body := liveGet(t, "http://"+lg.g.Addr+"/version")
			if body == final {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("GET /version = %q %v after the burst, want %q", body, ioTimeout, final)
			}
			time.Sleep(20 * time.Millisecond) // poll interval
		}
		// The reload that served the last write logs under the lock that a
		// SIGHUP reload takes next, and the watcher's reloads run one
		// after another: once the SIGHUP line is logged, every reload of
		// the burst is.
		lg.hup(t)
		_, barrier := lg.waitEntry(t, from, `"config reloaded" after SIGHUP`, func(e map[string]any) bool {
			return e["msg"] == "config reloaded" && e["source"] == "SIGHUP"
		})
		entries, _ := lg.g.logs.snapshot()
		reloads := 0
		for _, e := range entries[from:barrier] {
			switch e["msg"] {
			case "config reloaded":
				reloads++
				if e["source"] != "file change" {
					t.Errorf("reload during the burst: source %v, want file change", e["source"])
				}
			case "config reload failed; keeping the running config", "config error":
				t.Errorf("during the burst of whole-file renames: %v", e)
			}
		}
		// 30ms apart, the 10 writes take about 300ms: one debounced
		// reload, one more when the watcher's first check (right after it
		// starts) catches the first write, and another when the machine
		// stalls the writer past the debounce's 2s bound.
		t.Logf("%d writes, %d reloads", writes, reloads)
		if reloads < 1 || reloads > 3 {
			t.Errorf("%d writes caused %d reloads, want 1 to 3", writes, reloads)
		}
		liveWantVersion(t, lg.g.Addr, final)
	})

	t.Run("certificate replaced by rename", func(t *testing.T) {
		certs := newLiveTLS(t)
		lg := startLiveGateway(t, fmt.Sprintf(`listeners:
  - addr: 127.0.0.1:0
    tls:
      certificates:
        - {cert: %s, key: %s}
routes:
  - name: version
    match: {path: /version}
    respond: {body: ok}
`, yamlQuote(certs.cert), yamlQuote(certs.key)))
		addr := lg.g.Addr
		if cn := liveServedCN(t, addr, "a.test", certs); cn != "a.test" {
			t.Fatalf("certificate CN %q at start, want a.test", cn)
		}
		// As certbot does: each file renamed into place. Between the two
		// renames the pair does not match; the debounce usually hides
		// that, and a reload that sees it fails and keeps the old pair.
		cert, key := certs.ca.issue(t, "a.test", "v2", 200)
		from := lg.mark()
		replaceByRename(t, certs.key, key)
		replaceByRename(t, certs.cert, cert)
		lg.waitReloaded(t, from, "from the watcher", func(e map[string]any) bool { return e["source"] == "file change" })
		if cn := liveServedCN(t, addr, "a.test", certs); cn != "v2" {
			t.Errorf("certificate CN %q after the reload, want v2", cn)
		}
	})
}
