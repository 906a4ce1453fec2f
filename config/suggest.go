package config

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
)

// yamlKey returns the key yaml.v3 decodes struct field f from: its tag's
// name, else its name in lower case; inline for a field tagged ",inline"
// (its own fields are keys of the mapping); ok false for an unexported
// field or one tagged "-".
func yamlKey(f reflect.StructField) (name string, inline, ok bool) {
	name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if !f.IsExported() || name == "-" {
		return "", false, false
	}
	if slices.Contains(strings.Split(opts, ","), "inline") {
		return "", true, true
	}
	if name == "" {
		name = strings.ToLower(f.Name)
	}
	return name, false, true
}

// knownKeys returns the YAML keys of struct type t (through pointers) in
// field order, as the decoder matches them: from the yaml tags, through
// ",inline" fields, skipping unexported fields and yaml:"-". It is nil if
// t is not a struct. Suggestions come from here rather than from a list,
// so that they follow the structs.
func knownKeys(t reflect.Type) []string {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Kind() != reflect.Struct {
		return nil
	}
	var keys []string
	for i := range t.NumField() {
		f := t.Field(i)
		name, inline, ok := yamlKey(f)
		switch {
		case !ok:
		case inline:
			keys = append(keys, knownKeys(f.Type)...)
		default:
			keys = append(keys, name)
		}
	}
	return keys
}

// unknownKeyError is the error for key in a mapping decoded into t: it
// suggests the known key the user most likely meant.
func unknownKeyError(key string, t reflect.Type) error {
	if s := suggestKey(key, knownKeys(t)); s != "" {
		return fmt.Errorf("unknown key %q (did you mean %q?)", key, s)
	}
	return fmt.Errorf("unknown key %q", key)
}

// suggestKey returns the key of known that key is most likely a misspelling
// of, or "". The same words in another style (idleTimeout, idle-timeout,
// IDLE_TIMEOUT for idle_timeout) always match; otherwise the Damerau–
// Levenshtein distance must be at most 2, or 1 for keys of up to 4
// characters, where 2 edits make most words into most others. Ties go to
// the first key in field order.
func suggestKey(key string, known []string) string {
	limit := 2
	if len([]rune(key)) <= 4 {
		limit = 1
	}
	best, bestDist := "", limit+1
	for _, k := range known {
		if k == key {
			continue // not unknown: nothing to suggest
		}
		if squash(k) == squash(key) {
			return k
		}
		d := min(editDistance(strings.ToLower(key), k), editDistance(squash(key), squash(k)))
		if d < bestDist && d < len([]rune(k)) {
			best, bestDist = k, d
		}
	}
	return best
}

// squash lower-cases s and drops word separators: idle_timeout,
// idleTimeout and idle-timeout all become idletimeout.
func squash(s string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case '_', '-', ' ', '.':
			return -1
		}
		return r
	}, strings.ToLower(s))
}

// editDistance returns the optimal-string-alignment Damerau–Levenshtein
// distance between a and b: insertions, deletions, substitutions and
// swaps of two adjacent characters each cost 1.
func editDistance(a, b string) int {
	s, t := []rune(a), []rune(b)
	// Three rows of the dynamic-programming table: two back, one back,
	// this one.
	prev2 := make([]int, len(t)+1)
	prev := make([]int, len(t)+1)
	cur := make([]int, len(t)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(s); i++ {
		cur[0] = i
		for j := 1; j <= len(t); j++ {
			cost := 1
			if s[i-1] == t[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && s[i-1] == t[j-2] && s[i-2] == t[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(t)]
}
