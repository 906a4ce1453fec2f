package config

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Size is a byte count. In YAML it is an integer (bytes) or a string: a
// number alone or with a binary unit (KiB, MiB, GiB) or a decimal one (KB,
// MB, GB), such as "512", "64KiB" or "1MB".
type Size int64

const sizeWant = "bytes, or a number with KiB, MiB, GiB, KB, MB or GB"

var sizeUnits = []struct {
	suffix string
	bytes  int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9},
}

// UnmarshalYAML parses a size.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!str") {
		return typeError(n, badValue(n, "size", sizeWant))
	}
	v, err := parseSize(n.Value)
	if err != nil {
		return typeError(n, err.Error())
	}
	*s = Size(v)
	return nil
}

func parseSize(s string) (int64, error) {
	num, unit := s, int64(1)
	for _, u := range sizeUnits {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			num, unit = n, u.bytes
			break
		}
	}
	if strings.HasPrefix(num, "-") {
		return 0, fmt.Errorf("size %q must not be negative", s)
	}
	if num == "" || strings.Trim(num, "0123456789") != "" {
		return 0, fmt.Errorf("invalid size %q (want %s)", s, sizeWant)
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n > math.MaxInt64/unit {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return n * unit, nil
}

// Hosts is a list of host patterns; in YAML a string or a list of strings.
type Hosts []string

// UnmarshalYAML accepts one host or a list of hosts.
func (h *Hosts) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	switch n.Kind {
	case yaml.ScalarNode:
		*h = Hosts{n.Value}
		return nil
	case yaml.SequenceNode:
		var list []string
		err := n.Decode(&list) // a *yaml.TypeError, so decoding goes on
		*h = list
		return err
	}
	return typeError(n, badValue(n, "host", "a host or a list of hosts"))
}

// typeError reports a bad value at n. The decoder collects a
// *yaml.TypeError and goes on, where any other error would stop it; the
// position lets the error be placed on its key path later.
func typeError(n *yaml.Node, msg string) error {
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: column %d: %s", n.Line, n.Column, msg)}}
}

// badValue says that n is not a valid noun ("size", "value") and what is.
func badValue(n *yaml.Node, noun, want string) string {
	switch n.Kind {
	case yaml.ScalarNode:
		return fmt.Sprintf("invalid %s %q (want %s)", noun, n.Value, want)
	case yaml.SequenceNode:
		return fmt.Sprintf("invalid %s: got a list (want %s)", noun, want)
	case yaml.MappingNode:
		return fmt.Sprintf("invalid %s: got a mapping (want %s)", noun, want)
	}
	return fmt.Sprintf("invalid %s (want %s)", noun, want)
}

// UnmarshalYAML accepts a target URL, or a mapping {url, weight}.
func (t *Target) UnmarshalYAML(n *yaml.Node) error {
	return scalarOrFields(n, &t.URL, &t.unknown, map[string]any{"url": &t.URL, "weight": &t.Weight},
		"target", "a URL such as \"http://127.0.0.1:9001\", or {url, weight}")
}

// UnmarshalYAML accepts a policy name, or a mapping {policy, key, cookie,
// secret}.
func (b *Balance) UnmarshalYAML(n *yaml.Node) error {
	return scalarOrFields(n, &b.Policy, &b.unknown,
		map[string]any{"policy": &b.Policy, "key": &b.Key, "cookie": &b.Cookie, "secret": &b.Secret},
		"balance", "a policy name, or {policy, key, cookie, secret}")
}

// scalarOrFields decodes a string into *scalar, or a mapping into fields
// (see decodeFields); anything else is a type error naming noun and want.
func scalarOrFields(n *yaml.Node, scalar *string, unknown *[]*yaml.Node, fields map[string]any, noun, want string) error {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	switch {
	case n.Kind == yaml.ScalarNode && n.Tag == "!!str":
		*scalar = n.Value
		return nil
	case n.Kind == yaml.MappingNode:
		return decodeFields(n, unknown, fields)
	}
	return typeError(n, badValue(n, noun, want))
}

// decodeFields decodes a mapping into the given fields by key, for types
// that also accept a scalar. Node.Decode would drop the decoder's strict
// KnownFields, so keys are matched here: unknown ones are kept in
// *unknown for validation to report with their line, a repeated one is an
// error, and type errors come back as one *yaml.TypeError so that
// decoding goes on.
func decodeFields(n *yaml.Node, unknown *[]*yaml.Node, fields map[string]any) error {
	var msgs []string
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if line, dup := seen[k.Value]; dup {
			msgs = append(msgs, fmt.Sprintf("line %d: column %d: duplicate key %q (first defined at line %d)", v.Line, v.Column, k.Value, line))
			continue
		}
		seen[k.Value] = k.Line
		f, ok := fields[k.Value]
		if !ok {
			*unknown = append(*unknown, k)
			continue
		}
		if err := v.Decode(f); err != nil {
			var te *yaml.TypeError
			if errors.As(err, &te) {
				msgs = append(msgs, te.Errors...)
				continue
			}
			msgs = append(msgs, fmt.Sprintf("line %d: column %d: %v", v.Line, v.Column, err))
		}
	}
	if len(msgs) > 0 {
		return &yaml.TypeError{Errors: msgs}
	}
	return nil
}
