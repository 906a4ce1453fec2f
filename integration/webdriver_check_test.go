package integration

import (
	"errors"
	"net"
	"net/http"
	"os"
	"testing"
)

// TestChromedriverPortTaken checks the retry path of startChromedriver:
// on a port another process holds, chromedriver exits and tryChromedriver
// reports errPortTaken (which startChromedriver answers with another
// port), not a failure.
func TestChromedriverPortTaken(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: skipped under -short")
	}
	if _, err := os.Stat(chromedriverBin); err != nil {
		skipMissingPeer(t, chromedriverBin+" not installed (Debian package chromium-driver)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	client := &http.Client{Timeout: webdriverTimeout, Transport: &http.Transport{Proxy: nil}}
	base, err := tryChromedriver(t, client, t.TempDir(), port)
	if !errors.Is(err, errPortTaken) {
		t.Fatalf("tryChromedriver on a held port = %q, %v; want an error wrapping errPortTaken", base, err)
	}
	t.Logf("as expected: %v", err)
}
