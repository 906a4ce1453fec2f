package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// Load reads the config file at path and parses it with [Parse]. Relative
// file paths in the config resolve against the file's directory.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data)
}

// Parse parses, validates and compiles a config. name is used in error
// messages, and relative file paths in the config (certificates, keys, CA,
// static roots) resolve against filepath.Dir(name). The error, if any,
// joins one [*FieldError] per problem, sorted by line.
func Parse(name string, data []byte) (*Config, error) {
	dir, err := filepath.Abs(filepath.Dir(name))
	if err != nil {
		return nil, fmt.Errorf("config %q: %w", name, err)
	}
	p := &problems{file: name, last: lastLine(data), loc: newLocator(nil)}

	data = expand(p, data, os.LookupEnv)
	if err := p.err(); err != nil {
		return nil, err // the YAML would be wrong where a variable is missing
	}

	// Decode twice: into a node tree, whose lines place validation errors,
	// and strictly into the structs. Node.Decode drops KnownFields, so the
	// strict decode must start from the bytes.
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		p.syntaxErrors(err, data)
		return nil, p.err()
	}
	p.loc = newLocator(&root)

	var doc document
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if stopped := strictDecode(p, dec, &doc); stopped {
		return nil, p.err()
	}
	if len(root.Content) > 0 {
		keepPlaces(p, "", root.Content[0], reflect.ValueOf(&doc).Elem())
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case errors.Is(err, io.EOF):
	case err != nil:
		p.syntaxError(err, data)
	default:
		p.add("", next.Line, errors.New("only one YAML document is allowed"))
	}

	v := &validator{problems: &problems{file: name, last: p.last, loc: p.loc}, dir: dir}
	cfg := v.config(&doc)
	for _, e := range v.errs {
		// A value the decoder rejected is left zero: a validation error
		// on it would be a second, misleading one.
		if !p.nearRejected(e.Path) {
			p.errs = append(p.errs, e)
		}
	}
	if err := p.err(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// strictDecode decodes the first document into doc, recording type errors
// and unknown keys. It reports whether decoding stopped before the end, in
// which case doc is not worth validating.
func strictDecode(p *problems, dec *yaml.Decoder, doc *document) (stopped bool) {
	err := dec.Decode(doc)
	var te *yaml.TypeError
	switch {
	case err == nil, errors.Is(err, io.EOF): // an empty file is an empty config
		return false
	case errors.As(err, &te):
		for _, msg := range te.Errors {
			p.decodeError(msg)
		}
		return false
	default:
		p.decodeError(err.Error())
		return true
	}
}

// keepPlaces puts a zero value back where the strict decode dropped a
// rejected one, so that one error does not cause others: yaml.v3 leaves out
// a list item or a map entry it could not decode (a duplicate key in it, a
// wrong type), which would shift the indexes of the items after it, and
// make an upstream's name unknown to the routes that use it. The zero
// values are rejected, so validation says nothing about them (see
// nearRejected). n is the node decoded into v; aliases and types with
// their own UnmarshalYAML are left as they are.
func keepPlaces(p *problems, path string, n *yaml.Node, v reflect.Value) {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return
		}
		v = v.Elem()
	}
	if reflect.PointerTo(v.Type()).Implements(unmarshalerType) {
		return
	}
	switch {
	case n.Kind == yaml.MappingNode && v.Kind() == reflect.Struct:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			if f, ok := fieldByKey(v, k.Value); ok {
				keepPlaces(p, joinPath(path, k.Value), n.Content[i+1], f)
			}
		}
	case n.Kind == yaml.MappingNode && v.Kind() == reflect.Map && v.Type().Key().Kind() == reflect.String:
		elem := v.Type().Elem()
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			if k.Kind != yaml.ScalarNode || k.Tag == "!!merge" {
				continue
			}
			key := reflect.ValueOf(k.Value).Convert(v.Type().Key())
			e := v.MapIndex(key)
			if !e.IsValid() {
				// Dropped: refill only an entry the decoder rejected. A
				// key that resolves to null ("null", "~") is dropped too,
				// without an error: it is not a rejected entry.
				if !p.nearRejected(joinPath(path, k.Value)) {
					continue
				}
				if v.IsNil() {
					v.Set(reflect.MakeMap(v.Type()))
				}
				e = reflect.New(elem).Elem()
				if elem.Kind() == reflect.Pointer {
					e = reflect.New(elem.Elem())
				}
			}
			// A map value cannot be changed in place: work on a copy.
			c := reflect.New(elem).Elem()
			c.Set(e)
			keepPlaces(p, joinPath(path, k.Value), n.Content[i+1], c)
			v.SetMapIndex(key, c)
		}
	case n.Kind == yaml.SequenceNode && v.Kind() == reflect.Slice:
		if missing := len(n.Content) - v.Len(); missing > 0 {
			// The dropped items are the rejected ones; if the count does
			// not add up, leave the list as it is rather than guess.
			var dropped []int
			for i := range n.Content {
				if p.rejected[fmt.Sprintf("%s[%d]", path, i)] {
					dropped = append(dropped, i)
				}
			}
			if len(dropped) == missing {
				s := reflect.MakeSlice(v.Type(), 0, len(n.Content))
				for i, j := 0, 0; i < len(n.Content); i++ {
					if slices.Contains(dropped, i) {
						s = reflect.Append(s, reflect.Zero(v.Type().Elem()))
					} else {
						s = reflect.Append(s, v.Index(j))
						j++
					}
				}
				v.Set(s)
			}
		}
		for i := range min(len(n.Content), v.Len()) {
			keepPlaces(p, fmt.Sprintf("%s[%d]", path, i), n.Content[i], v.Index(i))
		}
	}
}

var unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()

// fieldByKey returns the field of struct v that the YAML key decodes into.
func fieldByKey(v reflect.Value, key string) (reflect.Value, bool) {
	t := v.Type()
	for i := range t.NumField() {
		name, inline, ok := yamlKey(t.Field(i))
		switch {
		case !ok:
		case inline:
			if fv := reflect.Indirect(v.Field(i)); fv.Kind() == reflect.Struct {
				if x, ok := fieldByKey(fv, key); ok {
					return x, true
				}
			}
		case name == key:
			return v.Field(i), true
		}
	}
	return reflect.Value{}, false
}

// joinPath returns the key path of key in the mapping at path.
func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// document is the shape of the YAML file. It is Config without the
// compiled fields, and with sizes in Limits that accept units.
type document struct {
	Listeners      []Listener           `yaml:"listeners"`
	Upstreams      map[string]*Upstream `yaml:"upstreams"`
	Routes         []Route              `yaml:"routes"`
	Limits         rawLimits            `yaml:"limits"`
	Timeouts       Timeouts             `yaml:"timeouts"`
	TrustedProxies []string             `yaml:"trusted_proxies"`
	Admin          *Admin               `yaml:"admin"`
}

// rawLimits is [Limits] as written in YAML.
type rawLimits struct {
	HeaderBytes Size `yaml:"header_bytes"`
	RequestBody Size `yaml:"request_body"`
}

// expand replaces ${VAR} and ${VAR:-default} with values from lookup and
// $$ with $, recording a problem for each unset variable. It works line by
// line and never adds or removes a line, so YAML line numbers stay true.
// Comment lines are copied as they are.
func expand(p *problems, data []byte, lookup func(string) (string, bool)) []byte {
	if !bytes.Contains(data, []byte("$")) {
		return data
	}
	lines := strings.SplitAfter(string(data), "\n")
	var out strings.Builder
	out.Grow(len(data))
	for i, line := range lines {
		if strings.HasPrefix(strings.TrimLeft(line, " \t"), "#") {
			out.WriteString(line)
			continue
		}
		for {
			j := strings.IndexByte(line, '$')
			if j < 0 || j+1 == len(line) {
				break
			}
			out.WriteString(line[:j])
			rest := line[j+1:]
			switch rest[0] {
			case '$':
				out.WriteByte('$')
				line = rest[1:]
			case '{':
				end := strings.IndexByte(rest, '}')
				if end < 0 {
					p.add("", i+1, errors.New(`unterminated "${"`))
					end = len(rest) - 1
				} else {
					out.WriteString(expandVar(p, i+1, rest[1:end], lookup))
				}
				line = rest[end+1:]
			default:
				out.WriteByte('$')
				line = rest
			}
		}
		out.WriteString(line)
	}
	return []byte(out.String())
}

// expandVar returns the value of one ${...} reference on line.
func expandVar(p *problems, line int, ref string, lookup func(string) (string, bool)) string {
	name, def, hasDef := strings.Cut(ref, ":-")
	if !isVarName(name) {
		p.add("", line, fmt.Errorf("invalid variable name %q in %q", name, "${"+ref+"}"))
		return ""
	}
	val, ok := lookup(name)
	switch {
	case hasDef && val == "":
		val = def
	case !ok:
		p.add("", line, fmt.Errorf("environment variable %q is not set (write ${%s:-default} for a default)", name, name))
		return ""
	}
	if strings.ContainsAny(val, "\r\n") {
		// A line break would shift every later line and could add keys.
		p.add("", line, fmt.Errorf("environment variable %q contains a line break", name))
		return ""
	}
	return val
}

func isVarName(s string) bool {
	for i, c := range s {
		if c != '_' && (c < 'A' || c > 'Z') && (c < 'a' || c > 'z') && (i == 0 || c < '0' || c > '9') {
			return false
		}
	}
	return s != ""
}
