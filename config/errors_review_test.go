package config

import (
	"reflect"
	"slices"
	"strings"
	"testing"
)

// The configs below share this head; {{...}} marks where each differs.
const reviewHead = `listeners:
  - addr: 127.0.0.1:0
upstreams:
  app:
    targets: [http://127.0.0.1:9001]
`

// TestParseErrorsOnce checks that a problem is reported once, in wsgate's
// words, with its line and key path, and causes no other errors (issue
// 14, §6).
func TestParseErrorsOnce(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want string
	}{
		// A broken section still defines its name for references.
		{"duplicate key in upstream", `listeners:
  - addr: 127.0.0.1:0
upstreams:
  app:
    targets: [http://127.0.0.1:9001]
    targets: [http://127.0.0.1:9002]
routes:
  - match: {path_prefix: /}
    upstream: app
  - match: {path_prefix: /b}
    upstream: app
`, `config.yaml:6: upstreams.app: duplicate key "targets" (first defined at line 5)`},
		{"upstream of the wrong type", reviewHead + `  web: [http://127.0.0.1:9002]
routes:
  - match: {path_prefix: /}
    upstream: web
`, `config.yaml:6: upstreams.web: invalid value: got a list (want a mapping)`},
		{"duplicate upstream name", reviewHead + `  app:
    targets: [http://127.0.0.1:9002]
routes:
  - match: {path_prefix: /}
    upstream: app
`, `config.yaml:6: upstreams: duplicate key "app" (first defined at line 4)`},
		// A list item the decoder drops keeps its place: the errors of
		// the items after it keep their index, and are not hidden.
		{"duplicate key in route", reviewHead + `routes:
  - match: {path_prefix: /}
    upstream: app
    upstream: app
  - match: {path_prefix: /b}
    upstream: nope
`, `config.yaml:9: routes[0]: duplicate key "upstream" (first defined at line 8)
config.yaml:11: routes[1].upstream: unknown upstream "nope"`},
		{"target of the wrong type", `listeners:
  - addr: 127.0.0.1:0
upstreams:
  app:
    targets: [[x], http://127.0.0.1:9001, http://127.0.0.1:9001]
routes:
  - {match: {path_prefix: /}, upstream: app}
`, `config.yaml:5: upstreams.app.targets[0]: invalid target: got a list (want a URL such as "http://127.0.0.1:9001", or {url, weight})
config.yaml:5: upstreams.app.targets[2]: duplicate target "http://127.0.0.1:9001" (first at targets[1])`},
		{"listener of the wrong type", `listeners:
  - 127.0.0.1:0
  - addr: 127.0.0.1
`, `config.yaml:2: listeners[0]: invalid value "127.0.0.1:0" (want a mapping)
config.yaml:3: listeners[1].addr: invalid address "127.0.0.1" (want host:port)`},

		// YAML syntax, in wsgate's words.
		{"tab", "listeners:\n  - addr: 127.0.0.1:0\nupstreams:\n\tapp:\n    targets: [http://127.0.0.1:9001]\n",
			`config.yaml:4: a tab character indents this line; YAML indents with spaces only`},
		{"tabs", "listeners:\n  - addr: 127.0.0.1:0\nupstreams:\n  app:\n    targets: [http://127.0.0.1:9001]\n\tmax_connections: 5\n\tretries: 2\n",
			`config.yaml:6: a tab character indents this line; YAML indents with spaces only (1 more line below starts with a tab)`},
		{"tab after spaces", reviewHead + "  \tmax_connections: 5\n",
			`config.yaml:6: a tab character indents this line; YAML indents with spaces only`},
		{"wildcard host", reviewHead + `routes:
  - match: {path_prefix: /, host: *.example.com}
    upstream: app
`, `config.yaml:7: routes[0].match.host: *.example.com must be quoted ("*.example.com"): a leading * starts a YAML alias`},
		{"wildcard hosts, block list", reviewHead + `routes:
  - match:
      path_prefix: /
      host:
        - a.example.com
        - *.example.com
    upstream: app
`, `config.yaml:11: routes[0].match.host[1]: *.example.com must be quoted ("*.example.com"): a leading * starts a YAML alias`},
		{"wildcard hosts, all at once", reviewHead + `routes:
  - match: {path: /a, host: [a.com, *.a.com]}
    upstream: app
  - match: {path: /b, host: *b}
    upstream: app
`, `config.yaml:7: routes[0].match.host[1]: *.a.com must be quoted ("*.a.com"): a leading * starts a YAML alias
config.yaml:9: routes[1].match.host: *b must be quoted ("*b"): a leading * starts a YAML alias, and there is no anchor &b`},
		{"star", reviewHead + "routes:\n  - match: {path: /, methods: *}\n    upstream: app\n",
			`config.yaml:7: routes[0].match.methods: * must be quoted ("*"): a leading * starts a YAML alias`},
		{"at sign", reviewHead + "routes:\n  - match: {path: /}\n    respond: {body: @home}\n",
			`config.yaml:8: routes[0].respond.body: @home must be quoted ("@home"): YAML reserves a leading @`},
		{"backtick", reviewHead + "routes:\n  - match: {path: /}\n    respond:\n      body: `hi`\n",
			"config.yaml:9: routes[0].respond.body: `hi` must be quoted (\"`hi`\"): YAML reserves a leading `"},
		{"unclosed double quote", "listeners:\n  - addr: \"127.0.0.1:0\nupstreams: {}\n",
			`config.yaml:2: listeners[0].addr: the " that opens this value is never closed`},
		{"unclosed single quote", "listeners:\n  - addr: '127.0.0.1:0\n",
			`config.yaml:2: listeners[0].addr: the ' that opens this value is never closed`},
		{"colon in value", reviewHead + "routes:\n  - match: {path: /}\n    respond:\n      body: note: closed\n",
			`config.yaml:9: routes[0].respond.body: note: closed must be quoted ("note: closed"): a ": " inside it starts a mapping`},
		{"no space after colon", reviewHead + "routes:\n  - match:\n      path:/a\n        methods: [GET]\n",
			`config.yaml:8: path: a space must follow the colon ("path: /a")`},
		{"no space after colon, a string", "listeners:\n  - addr:127.0.0.1:0\n",
			`config.yaml:2: listeners[0]: invalid value "addr:127.0.0.1:0" (want a mapping; a space must follow the colon: "addr: 127.0.0.1:0")`},
		{"indented under a value", reviewHead + "     max_connections: 5\n",
			`config.yaml:6: max_connections: indented more than line 5 (targets), which has its value on its line`},
		{"indented under a scalar", reviewHead + "    retries: 2\n      max_connections: 5\n",
			`config.yaml:7: max_connections: indented more than line 6 (retries), which has its value on its line`},
		{"indented between blocks", reviewHead + "   max_connections: 5\n",
			`config.yaml:6: max_connections: indented less than line 5 but more than line 4: line it up with one of them`},
		{"unclosed list", "listeners:\n  - addr: 127.0.0.1:0\nupstreams:\n  app:\n    targets: [http://127.0.0.1:9001\n",
			`config.yaml:5: targets: the [ that opens this list is never closed`},
		{"unclosed mapping", "listeners:\n  - {addr: 127.0.0.1:0\nupstreams: {}\n",
			`config.yaml:2: listeners: the { that opens this mapping is never closed`},
		// Anything else keeps yaml.v3's words, without its "yaml: ".
		{"fallback", reviewHead + "routes: [x] y\n",
			`config.yaml:6: did not find expected key`},

		// Did you mean: from the structs' yaml tags, also in other
		// styles, and in types with their own UnmarshalYAML.
		{"did you mean", reviewHead + `routes:
  - match: {path_prefix: /}
    upstream: app
    websocket:
      idle_timout: 5s
      idleTimeout: 5s
      idle-timeout: 5s
      IDLE_TIMEOUT: 5s
      enabeld: true
      xyz: 1
    upstrem: app
    balance: x
`, `config.yaml:10: routes[0].websocket: unknown key "idle_timout" (did you mean "idle_timeout"?)
config.yaml:11: routes[0].websocket: unknown key "idleTimeout" (did you mean "idle_timeout"?)
config.yaml:12: routes[0].websocket: unknown key "idle-timeout" (did you mean "idle_timeout"?)
config.yaml:13: routes[0].websocket: unknown key "IDLE_TIMEOUT" (did you mean "idle_timeout"?)
config.yaml:14: routes[0].websocket: unknown key "enabeld" (did you mean "enabled"?)
config.yaml:15: routes[0].websocket: unknown key "xyz"
config.yaml:16: routes[0]: unknown key "upstrem" (did you mean "upstream"?)
config.yaml:17: routes[0]: unknown key "balance"`},
		{"did you mean, custom types", `listeners:
  - addr: 127.0.0.1:0
upstreams:
  app:
    targets: [{ulr: http://127.0.0.1:9001}]
    balance: {polcy: random}
routes:
  - {match: {path_prefix: /}, upstream: app}
`, `config.yaml:5: upstreams.app.targets[0]: unknown key "ulr" (did you mean "url"?)
config.yaml:5: upstreams.app.targets[0]: required (a URL such as "http://127.0.0.1:9001")
config.yaml:6: upstreams.app.balance: unknown key "polcy" (did you mean "policy"?)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("config.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatalf("Parse = nil error, want\n%s", tc.want)
			}
			if got := err.Error(); got != tc.want {
				t.Errorf("Parse error =\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

// TestSyntaxErrorsStop checks that a problem found after a repaired one
// is not reported if it has no repair itself: it may be the effect of a
// wrong guess.
func TestSyntaxErrorsStop(t *testing.T) {
	_, err := Parse("config.yaml", []byte(reviewHead+"routes:\n  - match: {path: /, host: *.a.com}\n     upstream: app\n"))
	want := `config.yaml:7: host: *.a.com must be quoted ("*.a.com"): a leading * starts a YAML alias`
	if err == nil || err.Error() != want {
		t.Errorf("Parse error = %v, want %s", err, want)
	}
}

func TestSuggestKey(t *testing.T) {
	known := []string{"enabled", "origins", "idle_timeout", "handshake_timeout", "ping", "url", "key"}
	for _, tc := range []struct{ key, want string }{
		{"idle_timout", "idle_timeout"},
		{"idle_tiemout", "idle_timeout"}, // a swap is one edit
		{"idleTimeout", "idle_timeout"},
		{"idle-timeout", "idle_timeout"},
		{"IdleTimeout", "idle_timeout"},
		{"origin", "origins"},
		{"orgins", "origins"},
		{"pign", "ping"},  // short: one swap
		{"pang", "ping"},  // short: one edit
		{"pong", "ping"},  // short: one edit
		{"pongs", "ping"}, // two edits
		{"pin", "ping"},   // short: one edit
		{"ulr", "url"},    // a swap
		{"usr", ""},       // short: url is two edits away
		{"kye", "key"},    // a swap
		{"k", ""},         // one edit, but of a one-letter key
		{"timeout", ""},   // idle_timeout is five edits away
		{"enabled", ""},   // known: nothing to suggest
		{"handshake", ""}, // a prefix is not a typo
		{"xyz_abc_def", ""},
	} {
		if got := suggestKey(tc.key, known); got != tc.want {
			t.Errorf("suggestKey(%q) = %q, want %q", tc.key, got, tc.want)
		}
	}
}

func TestEditDistance(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"", "", 0}, {"", "abc", 3}, {"abc", "abc", 0}, {"abc", "acb", 1},
		{"kitten", "sitting", 3}, {"ca", "abc", 3}, {"héllo", "hello", 1},
	} {
		if got := editDistance(tc.a, tc.b); got != tc.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
		if got := editDistance(tc.b, tc.a); got != tc.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tc.b, tc.a, got, tc.want)
		}
	}
}

// TestKnownKeys checks that the keys come from the yaml tags, so that
// suggestions follow the structs.
func TestKnownKeys(t *testing.T) {
	type inner struct {
		C string `yaml:"c"`
	}
	type outer struct {
		A      string `yaml:"a_key,omitempty"`
		B      int
		Skip   string `yaml:"-"`
		hidden string
		In     inner `yaml:",inline"`
	}
	_ = outer{}.hidden
	if got, want := knownKeys(reflect.TypeFor[*outer]()), []string{"a_key", "b", "c"}; !slices.Equal(got, want) {
		t.Errorf("knownKeys(outer) = %q, want %q", got, want)
	}
	if got := knownKeys(reflect.TypeFor[string]()); got != nil {
		t.Errorf("knownKeys(string) = %q, want nil", got)
	}
	// Every key of the documented config is one the decoder knows.
	for _, typ := range []reflect.Type{reflect.TypeFor[document](), reflect.TypeFor[Route](), reflect.TypeFor[WebSocket](), reflect.TypeFor[Upstream]()} {
		keys := knownKeys(typ)
		if len(keys) == 0 {
			t.Errorf("knownKeys(%v) is empty", typ)
		}
		for _, k := range keys {
			if k != strings.ToLower(k) {
				t.Errorf("knownKeys(%v) has %q, not snake case", typ, k)
			}
		}
	}
}
