package integration

import (
	"os/exec"
	"strings"
	"testing"
)

const modulePath = "github.com/wsgate/wsgate"

// deps returns the import paths of the non-standard packages that pkgs
// depend on (themselves included), as go list -deps reports them.
func deps(t *testing.T, pkgs ...string) []string {
	t.Helper()
	args := append([]string{"list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}"}, pkgs...)
	cmd := exec.Command("go", args...)
	cmd.Dir = moduleRoot
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return lines(string(out))
}

// TestImportBoundaries enforces the layout in STYLE.md: only config sees
// YAML, proxy never imports config, routes, tls and internal/filewatch
// use the standard library only, and upstream sits below routes, proxy and
// config.
func TestImportBoundaries(t *testing.T) {
	needBinary(t) // skipped under -short with the rest of the package

	all := deps(t, "./proxy", "./routes", "./tls", "./upstream")
	if len(all) == 0 {
		t.Fatal("go list -deps listed nothing")
	}
	for _, p := range all {
		if p == "gopkg.in/yaml.v3" || strings.HasPrefix(p, "gopkg.in/yaml.v3/") {
			t.Errorf("proxy, routes, tls or upstream depend on %s; only config may", p)
		}
		if p == modulePath+"/config" || strings.HasPrefix(p, modulePath+"/config/") {
			t.Errorf("proxy, routes, tls or upstream depend on %s", p)
		}
		if p == modulePath+"/cmd/wsgate" {
			t.Errorf("proxy, routes, tls or upstream depend on %s", p)
		}
	}
	for _, p := range deps(t, "./upstream") {
		switch p {
		case modulePath + "/proxy", modulePath + "/routes", "github.com/valyala/fasthttp":
			// The proxy owns the HTTP clients it attaches to targets.
			t.Errorf("upstream depends on %s", p)
		}
	}

	for _, pkg := range []string{"./routes", "./tls", "./internal/filewatch"} {
		for _, p := range deps(t, pkg) {
			// go list marks standard packages, so any other package
			// outside this module (a dotted module path like
			// golang.org/x/net, or anything else) is a dependency.
			if p != modulePath && !strings.HasPrefix(p, modulePath+"/") {
				t.Errorf("%s depends on %s; it may use only the standard library", pkg, p)
			}
			if p == modulePath+"/proxy" || p == modulePath+"/config" ||
				(pkg == "./internal/filewatch" && p != modulePath+"/internal/filewatch" && strings.HasPrefix(p, modulePath+"/")) {
				t.Errorf("%s depends on %s", pkg, p)
			}
		}
	}
}
