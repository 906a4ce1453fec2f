package integration

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// examplePath is the repository's example config, loaded by several tests.
var examplePath = filepath.Join(moduleRoot, "config.example.yaml")

func TestCLIVersion(t *testing.T) {
	stdout, stderr, code := runWsgate(t, "version")
	if code != 0 {
		t.Fatalf("wsgate version: exit %d, want 0; stderr:\n%s", code, stderr)
	}
	if !regexp.MustCompile(`^wsgate \S+\n$`).MatchString(stdout) {
		t.Errorf("wsgate version printed %q, want \"wsgate VERSION\\n\"", stdout)
	}
}

func TestCLIValidateExample(t *testing.T) {
	needBinary(t)
	if _, err := os.Stat(examplePath); err != nil {
		t.Fatalf("config.example.yaml: %v (the repository must ship it)", err)
	}
	stdout, stderr, code := runWsgate(t, "validate", examplePath)
	if code != 0 {
		t.Fatalf("wsgate validate %s: exit %d, want 0; stderr:\n%s", examplePath, code, stderr)
	}
	if want := examplePath + ": ok\n"; stdout != want {
		t.Errorf("stdout = %q, want %q", stdout, want)
	}
}

// TestCLIValidateErrors checks that validate reports every problem at
// once, one "FILE:LINE: key.path: message" line each, sorted by line,
// and exits 2.
func TestCLIValidateErrors(t *testing.T) {
	needBinary(t)
	const bad = `listeners:
  - addr: 127.0.0.1
upstreams:
  app:
    targets: [htp://127.0.0.1:9001]
routes:
  - match: {path: /chat}
    upstream: app
    tiemout: 5s
  - match: {path: /chat}
    upstream: nope
timeouts:
  drain: -1s
`
	path := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code := runWsgate(t, "validate", path)
	if code != 2 {
		t.Errorf("exit %d, want 2", code)
	}
	if stdout != "" {
		t.Errorf("stdout = %q, want nothing", stdout)
	}
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(path) + `:(\d+): ([A-Za-z0-9_.\[\]]+): (.+)$`)
	type at struct {
		line int
		path string
	}
	var got []at
	for _, l := range lines(stderr) {
		m := re.FindStringSubmatch(l)
		if m == nil {
			t.Errorf("line %q is not FILE:LINE: key.path: message", l)
			continue
		}
		n, _ := strconv.Atoi(m[1])
		got = append(got, at{n, m[2]})
	}
	want := []at{
		{2, "listeners[0].addr"},
		{5, "upstreams.app.targets[0]"},
		{9, "routes[0]"},
		{10, "routes[1].match.path"},
		{11, "routes[1].upstream"},
		{13, "timeouts.drain"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("problems (line, path) =\n%v\nwant\n%v\nstderr:\n%s", got, want, stderr)
	}
	if !slices.IsSortedFunc(got, func(a, b at) int { return a.line - b.line }) {
		t.Errorf("problems not sorted by line:\n%s", stderr)
	}
}

// TestCLIValidateWarnings: a valid config that likely does not do what
// its author meant (hash balancing keyed on a cookie) is still valid:
// validate prints a "warning: FILE:LINE: key.path: ..." line naming the
// key, then "FILE: ok", and exits 0.
func TestCLIValidateWarnings(t *testing.T) {
	needBinary(t)
	const cfg = `listeners: [{addr: "127.0.0.1:0"}]
upstreams:
  app:
    targets: [http://127.0.0.1:9001, http://127.0.0.1:9002]
    balance: {policy: hash, key: "cookie:session"}
routes:
  - {match: {path: /}, upstream: app}
`
	path := filepath.Join(t.TempDir(), "warn.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code := runWsgate(t, "validate", path)
	if code != 0 {
		t.Errorf("exit %d, want 0; stderr:\n%s", code, stderr)
	}
	out := lines(stdout)
	if len(out) != 2 {
		t.Fatalf("stdout has %d lines, want a warning and the ok line:\n%s", len(out), stdout)
	}
	prefix := "warning: " + path + ":5: upstreams.app.balance.key: "
	if !strings.HasPrefix(out[0], prefix) || !strings.Contains(out[0], `"session"`) {
		t.Errorf("warning line = %q, want it to start %q and name the cookie \"session\"", out[0], prefix)
	}
	if want := path + ": ok"; out[1] != want {
		t.Errorf("last line = %q, want %q", out[1], want)
	}
}

func TestCLIBadFlags(t *testing.T) {
	needBinary(t)
	for _, tc := range []struct {
		name string
		args []string
		want string // in stderr
	}{
		{"unknown flag", []string{"-no-such-flag"}, "flag provided but not defined"},
		{"no config", nil, "usage:"},
		{"stray argument", []string{"-config", examplePath, "extra"}, "usage:"},
		{"bad log format", []string{"-config", examplePath, "-log-format", "xml"}, "-log-format"},
		{"missing config file", []string{"-config", filepath.Join(t.TempDir(), "missing.yaml")}, "missing.yaml"},
		{"validate without file", []string{"validate"}, "usage:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := runWsgate(t, tc.args...)
			if code != 2 {
				t.Errorf("wsgate %s: exit %d, want 2", strings.Join(tc.args, " "), code)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr does not mention %q:\n%s", tc.want, stderr)
			}
		})
	}
}

// TestAddressInUse: a listener that cannot bind is a runtime failure:
// exit 1 with an error log naming the address.
func TestAddressInUse(t *testing.T) {
	needBinary(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	addr := taken.Addr().String()
	cfg := `listeners:
  - addr: 127.0.0.1:0
  - addr: ` + addr + `
routes:
  - match: {path: /}
    respond: {body: ok}
`
	path := filepath.Join(t.TempDir(), "inuse.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := runWsgate(t, "-config", path)
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	found := false
	for _, l := range lines(stderr) {
		var e map[string]any
		if json.Unmarshal([]byte(l), &e) != nil {
			continue
		}
		msg, _ := e["error"].(string)
		if e["level"] == "ERROR" && strings.Contains(msg, addr) && strings.Contains(msg, "address already in use") {
			found = true
		}
	}
	if !found {
		t.Errorf("no ERROR log line naming %s and \"address already in use\":\n%s", addr, stderr)
	}
}

// TestCLIConventions: the Go tools' conventions. -h, --help and help print
// the usage on stdout and exit 0, on every subcommand; version, -version
// and --version all print the version; a usage error says what was wrong
// on stderr (a stray config file gets a hint) and exits 2.
func TestCLIConventions(t *testing.T) {
	needBinary(t)
	for _, args := range [][]string{{"-h"}, {"--help"}, {"-help"}, {"help"}} {
		stdout, stderr, code := runWsgate(t, args...)
		if code != 0 || !strings.HasPrefix(stdout, "usage: wsgate -config FILE") || stderr != "" {
			t.Errorf("wsgate %s: exit %d, stdout %.40q, stderr %.80q; want 0 with the usage on stdout", strings.Join(args, " "), code, stdout, stderr)
		}
	}
	for _, sub := range []string{"validate", "schema", "healthcheck"} {
		for _, h := range []string{"-h", "--help"} {
			stdout, _, code := runWsgate(t, sub, h)
			if code != 0 || !strings.HasPrefix(stdout, "usage: wsgate "+sub) {
				t.Errorf("wsgate %s %s: exit %d, stdout %.60q; want 0 with %s's usage", sub, h, code, stdout, sub)
			}
		}
	}
	// wsgate healthcheck's usage errors exit 1, not 2: Docker's
	// HEALTHCHECK reserves 2.
	if stdout, stderr, code := runWsgate(t, "healthcheck", "a", "b"); code != 1 || !strings.Contains(stderr, `unexpected argument "b"`) || stdout != "" {
		t.Errorf("wsgate healthcheck a b: exit %d, stderr %q; want 1 naming the stray argument", code, stderr)
	}
	// wsgate schema prints the committed config.schema.json.
	if stdout, stderr, code := runWsgate(t, "schema"); code != 0 || stderr != "" {
		t.Errorf("wsgate schema: exit %d, stderr %q", code, stderr)
	} else if want, err := os.ReadFile(filepath.Join(moduleRoot, "config.schema.json")); err != nil {
		t.Error(err)
	} else if stdout != string(want) {
		t.Errorf("wsgate schema prints %d bytes that differ from config.schema.json (%d bytes)", len(stdout), len(want))
	}
	for _, args := range [][]string{{"version"}, {"-version"}, {"--version"}} {
		stdout, _, code := runWsgate(t, args...)
		if code != 0 || !regexp.MustCompile(`^wsgate \S`).MatchString(stdout) {
			t.Errorf("wsgate %s: exit %d, %q; want 0 and the version", strings.Join(args, " "), code, stdout)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{examplePath}, `unexpected argument "` + examplePath + `" (did you mean -config ` + examplePath + `?)`},
		{nil, "-config is required"},
		{[]string{"validate"}, "a config file is required"},
		{[]string{"validate", examplePath, "extra"}, `unexpected argument "extra"`},
		{[]string{"schema", "extra"}, `unexpected argument "extra"`},
	} {
		stdout, stderr, code := runWsgate(t, tc.args...)
		if code != 2 || !strings.Contains(stderr, tc.want) || stdout != "" {
			t.Errorf("wsgate %s: exit %d, stderr %q; want 2 saying %q", strings.Join(tc.args, " "), code, stderr, tc.want)
		}
	}
}
