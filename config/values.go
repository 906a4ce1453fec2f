package config

import (
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
