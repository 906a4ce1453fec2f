//go:build linux

package integration

import (
	"archive/tar"
	"archive/zip"
	"compress/gzip"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// TestReleaseScript runs scripts/release.sh for this machine's Linux and
// for windows/amd64: versioned archives whose checksums sha256sum -c accepts,
// each with the binary, the docs and configs, and deploy/ without the Go
// test module; the Linux binary prints the version it was stamped with.
func TestReleaseScript(t *testing.T) {
	needBinary(t)
	for _, tool := range []string{"tar", "sha256sum", "zip"} {
		if _, err := exec.LookPath(tool); err != nil {
			skipMissingPeer(t, tool+" is not installed")
		}
	}
	out := t.TempDir()
	const version = "v9.9.9-test"
	linux := "linux-" + runtime.GOARCH
	cmd := exec.Command("./scripts/release.sh", "--version", version, "--out", out, "linux/"+runtime.GOARCH, "windows/amd64")
	cmd.Dir = moduleRoot
	cmd.Env = processEnv()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/release.sh: %v\n%s", err, b)
	}
	sums, err := os.ReadFile(filepath.Join(out, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"wsgate-" + version + "-" + linux + ".tar.gz", "wsgate-" + version + "-windows-amd64.zip"} {
		if !strings.Contains(string(sums), "  "+want+"\n") {
			t.Errorf("SHA256SUMS lacks %s:\n%s", want, sums)
		}
	}
	check := exec.Command("sha256sum", "-c", "SHA256SUMS")
	check.Dir = out
	if b, err := check.CombinedOutput(); err != nil {
		t.Errorf("sha256sum -c: %v\n%s", err, b)
	}

	// The tarball's names, and the binary run from it.
	prefix := "wsgate-" + version + "-" + linux + "/"
	f, err := os.Open(filepath.Join(out, "wsgate-"+version+"-"+linux+".tar.gz"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var names []string
	bin := filepath.Join(t.TempDir(), "wsgate")
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.Name == prefix+"wsgate" {
			if h.Mode&0o111 == 0 {
				t.Errorf("the binary is not executable: mode %o", h.Mode)
			}
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(bin, b, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, want := range []string{"wsgate", "README.md", "config.example.yaml", "config.schema.json",
		"deploy/systemd/wsgate.service", "deploy/docker/wsgate.yaml", "deploy/kubernetes/edge/kustomization.yaml"} {
		if !slices.Contains(names, prefix+want) {
			t.Errorf("the tarball lacks %s", want)
		}
	}
	for _, n := range names {
		if strings.HasSuffix(n, ".go") || strings.HasSuffix(n, "go.mod") {
			t.Errorf("the tarball holds %s (the deploy test module)", n)
		}
	}
	if b, err := exec.Command(bin, "version").Output(); err != nil || string(b) != "wsgate "+version+"\n" {
		t.Errorf("the released binary's version: %q, %v; want wsgate %s", b, err, version)
	}

	// The Windows zip holds wsgate.exe.
	zf, err := zip.OpenReader(filepath.Join(out, "wsgate-"+version+"-windows-amd64.zip"))
	if err != nil {
		t.Fatal(err)
	}
	defer zf.Close()
	found := false
	for _, e := range zf.File {
		if e.Name == "wsgate-"+version+"-windows-amd64/wsgate.exe" && e.UncompressedSize64 > 1<<20 {
			found = true
		}
	}
	if !found {
		t.Errorf("the zip lacks wsgate.exe")
	}
}
