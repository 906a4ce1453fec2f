package integration

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const modulePath = "github.com/wsgate/wsgate"

// goList runs go list with args in the module root and returns its
// output lines.
func goList(t *testing.T, args ...string) []string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list"}, args...)...)
	cmd.Dir = moduleRoot
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return lines(string(out))
}

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
// config. wsrelay gets net.Conns, not fasthttp, and knows neither routes,
// upstreams nor config; internal/netpoll, internal/bufpool and
// internal/testnet use the standard library only; admin is net/http over
// read-only views; observe is the only package below cmd that imports
// Prometheus.
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

	forbidden := func(pkg string, bad ...string) {
		t.Helper()
		for _, p := range deps(t, pkg) {
			for _, b := range bad {
				if p == b || strings.HasPrefix(p, b+"/") {
					t.Errorf("%s depends on %s", pkg, p)
				}
			}
		}
	}
	forbidden("./wsrelay", "github.com/valyala/fasthttp", modulePath+"/routes", modulePath+"/upstream",
		modulePath+"/proxy", modulePath+"/config", "gopkg.in/yaml.v3")
	forbidden("./admin", "github.com/valyala/fasthttp", "gopkg.in/yaml.v3", modulePath+"/config", modulePath+"/proxy")

	// Prometheus: observe reads the others at scrape time, cmd/wsgate
	// serves it; no other package of the module links client_golang.
	const prom = "github.com/prometheus/client_golang"
	isProm := func(p string) bool { return p == prom || strings.HasPrefix(p, prom+"/") }
	promUsers := map[string]bool{}
	pkgs := map[string]bool{}
	for _, l := range goList(t, "-f", "{{.ImportPath}}{{range .Deps}} {{.}}{{end}}", "./...") {
		f := strings.Fields(l)
		pkgs[f[0]] = true
		if slices.ContainsFunc(f[1:], isProm) {
			promUsers[f[0]] = true
		}
	}
	for _, p := range []string{"proxy", "wsrelay", "ratelimit", "admin", "upstream", "config", "routes", "tls", "observe", "cmd/wsgate"} {
		if !pkgs[modulePath+"/"+p] {
			t.Errorf("go list ./... does not list %s/%s", modulePath, p)
		}
	}
	for p := range promUsers {
		if p != modulePath+"/observe" && p != modulePath+"/cmd/wsgate" {
			t.Errorf("%s depends on %s; only observe (and cmd/wsgate, through it) may", p, prom)
		}
	}
	// The check above is only worth something if it finds these.
	if !promUsers[modulePath+"/observe"] || !promUsers[modulePath+"/cmd/wsgate"] {
		t.Errorf("observe and cmd/wsgate do not both depend on %s (users: %v); the boundary check looks for the wrong path", prom, promUsers)
	}

	// ratelimit, like routes, is plain Go: no I/O, no other package of
	// the module.
	if d := deps(t, "./ratelimit"); len(d) != 1 || d[0] != modulePath+"/ratelimit" {
		t.Errorf("ratelimit depends on %v; it may use only the standard library", d[1:])
	}
	for _, p := range goList(t, "-deps", "./ratelimit") {
		if p == "net" || p == "os" {
			t.Errorf("ratelimit depends on %s: it does no I/O", p)
		}
	}

	for _, pkg := range []string{"./routes", "./tls", "./internal/filewatch", "./internal/netpoll", "./internal/bufpool", "./internal/testnet"} {
		for _, p := range deps(t, pkg) {
			// go list marks standard packages, so any other package
			// outside this module (a dotted module path like
			// golang.org/x/net, or anything else) is a dependency.
			if p != modulePath && !strings.HasPrefix(p, modulePath+"/") {
				t.Errorf("%s depends on %s; it may use only the standard library", pkg, p)
			}
			// The internal packages stand alone: not even another
			// package of this module.
			self := modulePath + strings.TrimPrefix(pkg, ".")
			if p == modulePath+"/proxy" || p == modulePath+"/config" ||
				(strings.HasPrefix(pkg, "./internal/") && p != self && strings.HasPrefix(p, modulePath+"/")) {
				t.Errorf("%s depends on %s", pkg, p)
			}
		}
	}
}
