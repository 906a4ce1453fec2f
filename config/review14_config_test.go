package config

import (
	"strings"
	"testing"
)

// TestReview14NullKeyNoPhantomEntry: yaml.v3 drops a map entry whose key
// resolves to null ("null", "~", "Null", "NULL") without an error (a null
// does not decode into a string key). keepPlaces (load.go) then finds the
// key's node without a map entry, takes it for a rejected value, and puts
// a zero Upstream back under the key's text, "null" or "~", without
// rejecting it; validation then reports `upstreams.null.targets: at least
// one target is required` on an upstream whose targets are right there.
// The map branch of keepPlaces should only refill entries whose path
// p.rejected holds (as the list branch does).
func TestReview14NullKeyNoPhantomEntry(t *testing.T) {
	for _, key := range []string{"null", "~"} {
		_, err := Parse("c.yaml", []byte(`listeners:
  - addr: 127.0.0.1:0
upstreams:
  `+key+`:
    targets: [http://127.0.0.1:1]
  app:
    targets: [http://127.0.0.1:2]
routes:
  - match: {path_prefix: /}
    upstream: app
`))
		if err != nil && strings.Contains(err.Error(), "at least one target is required") {
			t.Errorf("key %q: %v (the upstream has a target)", key, err)
		}
	}
}

// TestReview14AliasInBlockScalarNotBlamed: for "unknown anchor 'foo'",
// explainSyntax (syntax.go) looks for the first line with an unquoted
// "*foo" and blames it, without skipping block scalars, and with a
// prefix match ("*foo" also matches "*foobar"). A respond body written
// as a literal block whose line starts with "*foo…" (a Markdown list
// item) is reported as a YAML error and "repaired" by quoting a line of
// the body.
func TestReview14AliasInBlockScalarNotBlamed(t *testing.T) {
	_, err := Parse("c.yaml", []byte(`listeners:
  - addr: 127.0.0.1:0
routes:
  - respond:
      status: 200
      body: |
        *foo bar
    match: {path_prefix: /, host: *foo}
`))
	if err == nil {
		t.Fatal("no error")
	}
	if strings.Contains(err.Error(), "c.yaml:7:") {
		t.Errorf("line 7 is the body of a literal block scalar, not an alias:\n%v", err)
	}
}
