package config

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// FieldError is one problem at a position in a config file. [Load] and
// [Parse] return every problem found, as FieldErrors joined with
// [errors.Join] and sorted by line.
type FieldError struct {
	File string // the name given to Parse, or the path given to Load
	Path string // key path like "routes[2].match.path"; empty for the file as a whole
	Line int    // 1-based
	Err  error
}

// Error formats the problem as one line: "FILE:LINE: PATH: message".
func (e *FieldError) Error() string {
	msg := "invalid"
	if e.Err != nil {
		msg = e.Err.Error()
	}
	s := fmt.Sprintf("%s:%d: %s: %s", e.File, e.Line, e.Path, msg)
	if e.Path == "" {
		s = fmt.Sprintf("%s:%d: %s", e.File, e.Line, msg)
	}
	// One line per problem, whatever a key or a wrapped error holds.
	return oneLine.Replace(s)
}

var oneLine = strings.NewReplacer("\r", `\r`, "\n", `\n`)

// Unwrap returns the underlying error.
func (e *FieldError) Unwrap() error { return e.Err }

// problems collects the FieldErrors of one file.
type problems struct {
	file string
	last int // last line of the file: no problem is placed after it
	loc  *locator
	errs []*FieldError
	// Key paths of values the decoder rejected, and of their ancestors.
	rejected, holdsRejected map[string]bool
	reported                map[*placed]bool // nodes named by a type error
}

// at records a problem on a key path; the line is the path's, or that of
// its nearest ancestor present in the file.
func (p *problems) at(path string, err error) {
	p.add(path, p.loc.line(path), err)
}

// atf is at with a formatted message.
func (p *problems) atf(path, format string, args ...any) {
	p.at(path, fmt.Errorf(format, args...))
}

// err returns the problems sorted by line, or nil.
func (p *problems) err() error {
	if len(p.errs) == 0 {
		return nil
	}
	slices.SortStableFunc(p.errs, func(a, b *FieldError) int { return cmp.Compare(a.Line, b.Line) })
	var errs []error
	seen := map[string]bool{} // an alias repeats the problems of its anchor
	for _, e := range p.errs {
		if s := e.Error(); !seen[s] {
			seen[s] = true
			errs = append(errs, e)
		}
	}
	return errors.Join(errs...)
}

// lastLine returns the number of the last line of data.
func lastLine(data []byte) int {
	n := bytes.Count(data, []byte("\n"))
	if !bytes.HasSuffix(data, []byte("\n")) {
		n++
	}
	return n
}

// locator finds key paths and lines in the YAML node tree.
type locator struct {
	lines map[string]int          // key path → line of its key, or of the list item
	nodes map[int][]*placed       // line → value nodes on it, or whose key is, in document order
	types map[string]reflect.Type // key path → Go type the strict decode puts it into
}

// placed is a value node and where it sits in the tree.
type placed struct {
	node   *yaml.Node
	path   string     // key path of the node
	key    *yaml.Node // mapping key of the node; nil for list items and the root
	parent string     // key path of the enclosing mapping or list
	goType string     // Go type the strict decode puts the node into, as in its messages
}

func newLocator(doc *yaml.Node) *locator {
	l := &locator{lines: map[string]int{}, nodes: map[int][]*placed{}, types: map[string]reflect.Type{}}
	if doc != nil && doc.Kind == yaml.DocumentNode && len(doc.Content) > 0 {
		l.walk(doc.Content[0], "", nil, "", reflect.TypeFor[document]())
	}
	return l
}

// walk records n and its descendants; t is the Go type the strict decode
// puts n into, nil if none. It does not follow aliases: their paths are not
// in the file, and following them could take exponential time.
func (l *locator) walk(n *yaml.Node, path string, key *yaml.Node, parent string, t reflect.Type) {
	line := n.Line
	if key != nil {
		line = key.Line
	}
	if _, dup := l.lines[path]; !dup {
		l.lines[path] = line
	}
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem() // the decoder names the pointed-to type
	}
	pl := &placed{node: n, path: path, key: key, parent: parent}
	if t != nil {
		pl.goType = t.String()
		if _, dup := l.types[path]; !dup {
			l.types[path] = t
		}
	}
	l.nodes[n.Line] = append(l.nodes[n.Line], pl)
	if key != nil && key.Line != n.Line {
		l.nodes[key.Line] = append(l.nodes[key.Line], pl)
	}
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			child := k.Value
			if path != "" {
				child = path + "." + k.Value
			}
			l.walk(n.Content[i+1], child, k, path, valueType(t, k.Value))
		}
	case yaml.SequenceNode:
		var elem reflect.Type
		if t != nil && t.Kind() == reflect.Slice {
			elem = t.Elem()
		}
		for i, item := range n.Content {
			l.walk(item, fmt.Sprintf("%s[%d]", path, i), nil, path, elem)
		}
	}
}

// valueType returns the Go type of the value at key in a mapping decoded
// into t, or nil.
func valueType(t reflect.Type, key string) reflect.Type {
	switch {
	case t == nil:
	case t.Kind() == reflect.Map:
		return t.Elem()
	case t.Kind() == reflect.Struct:
		for i := range t.NumField() {
			if name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ","); name == key {
				return t.Field(i).Type
			}
		}
	}
	return nil
}

// line returns the line of path, or of its nearest ancestor in the file.
func (l *locator) line(path string) int {
	for {
		if n, ok := l.lines[path]; ok && n > 0 {
			return n
		}
		if path == "" {
			return 1
		}
		path = parentPath(path)
	}
}

// parentPath returns the key path holding path: "a.b[2]" → "a.b" → "a" → "".
func parentPath(path string) string {
	i := strings.LastIndexAny(path, ".[")
	if i < 0 {
		return ""
	}
	return path[:i]
}

// has reports whether path is in the file.
func (l *locator) has(path string) bool {
	_, ok := l.lines[path]
	return ok
}

// The messages of a strict decode, in *yaml.TypeError.Errors.
var (
	reAt      = regexp.MustCompile(`(?s)^line (\d+): column (\d+): (.*)$`) // from typeError
	reUnknown = regexp.MustCompile(`(?s)^line (\d+): field (.*?) not found in type `)
	reDupKey  = regexp.MustCompile(`(?s)^line (\d+): mapping key (".*") already defined at line (\d+)$`)
	reType    = regexp.MustCompile("(?s)^line (\\d+): cannot unmarshal (\\S+)(?: `(.*)`)? into (.+)$")
	reLine    = regexp.MustCompile(`(?s)^(?:yaml: )?line (\d+): (.*)$`)
)

// decodeError turns one message of a strict decode into a FieldError with
// a key path and a message in house style.
func (p *problems) decodeError(msg string) {
	if m := reAt.FindStringSubmatch(msg); m != nil {
		line, col := atoi(m[1]), atoi(m[2])
		path := ""
		for _, pl := range p.loc.nodes[line] {
			if pl.node.Line == line && pl.node.Column == col {
				path = pl.path
				p.reject(path)
			}
		}
		p.add(path, line, errors.New(m[3]))
		return
	}
	if m := reUnknown.FindStringSubmatch(msg); m != nil {
		line := atoi(m[1])
		parent := p.keyParent(line, m[2])
		p.add(parent, line, p.unknownKey(parent, m[2]))
		return
	}
	if m := reDupKey.FindStringSubmatch(msg); m != nil {
		line := atoi(m[1])
		key, _ := strconv.Unquote(m[2])
		parent := p.keyParent(line, key)
		p.reject(parent) // the decoder skips a mapping with a duplicate key
		p.add(parent, line, fmt.Errorf("duplicate key %q (first defined at line %s)", key, m[3]))
		return
	}
	if m := reType.FindStringSubmatch(msg); m != nil {
		line := atoi(m[1])
		if pl := p.typeErrorNode(line, m[2], m[3], m[4]); pl != nil {
			noun, want := describeType(m[4])
			if n := pl.node; want == "a mapping" && n.Kind == yaml.ScalarNode && n.Style == 0 {
				if k := reNoSpace.FindStringSubmatchIndex(n.Value); k != nil {
					// "addr:127.0.0.1:0" is a string, not a key and a value.
					first, _, _ := strings.Cut(n.Value, " ")
					want += fmt.Sprintf("; a space must follow the colon: %q", first[:k[3]+1]+" "+first[k[3]+1:])
				}
			}
			p.reject(pl.path)
			p.add(pl.path, line, errors.New(badValue(pl.node, noun, want)))
			return
		}
	}
	if m := reLine.FindStringSubmatch(msg); m != nil {
		p.add("", atoi(m[1]), errors.New(m[2]))
		return
	}
	p.add("", 1, errors.New(strings.TrimPrefix(msg, "yaml: ")))
}

// parserProblems are the messages of yaml.v3's parser, as opposed to its
// scanner. In v3.0.1 the parser's line numbers count from 0.
var parserProblems = map[string]bool{
	"did not find expected <stream-start>":   true,
	"did not find expected <document start>": true,
	"did not find expected node content":     true,
	"did not find expected key":              true,
	"did not find expected '-' indicator":    true,
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"found undefined tag handle":             true,
	"found duplicate %TAG directive":         true,
	"found duplicate %YAML directive":        true,
	"found incompatible YAML document":       true,
}

var reAnchor = regexp.MustCompile(`^unknown anchor '(.*)' referenced$`)

// syntaxError records a YAML syntax error in data, such as one in a
// second document, without looking for more (see syntaxErrors).
func (p *problems) syntaxError(err error, data []byte) {
	sp := explainSyntax(err, data)
	msg := sp.msg
	if sp.key != "" {
		msg = sp.key + ": " + msg
	}
	p.add("", sp.line, errors.New(msg))
}

// add records a problem at a known line.
func (p *problems) add(path string, line int, err error) {
	if p.last > 0 && line > p.last {
		// yaml.v3 places the end of the input, and a value it stands
		// for, after the last line.
		line = p.last
	}
	if line < 1 {
		line = 1
	}
	p.errs = append(p.errs, &FieldError{File: p.file, Path: path, Line: line, Err: err})
}

// reject notes that the value at path was rejected and left zero.
func (p *problems) reject(path string) {
	if p.rejected == nil {
		p.rejected, p.holdsRejected = map[string]bool{}, map[string]bool{}
	}
	p.rejected[path] = true
	for q := path; q != ""; {
		q = parentPath(q)
		p.holdsRejected[q] = true
	}
}

// nearRejected reports whether path is, holds or is inside a rejected
// value: a validation error there would likely repeat a decode error
// ("routes[0]: needs one of upstream..." when the upstream was a list).
func (p *problems) nearRejected(path string) bool {
	if p.rejected[path] || p.holdsRejected[path] {
		return true
	}
	for q := path; q != ""; {
		q = parentPath(q)
		if p.rejected[q] {
			return true
		}
	}
	return false
}

// unknownKey is the error for a key that the mapping at path does not
// know, with a suggestion from the keys it does.
func (p *problems) unknownKey(path, key string) error {
	return unknownKeyError(key, p.loc.types[path])
}

// keyParent returns the path of the mapping holding key at line.
func (p *problems) keyParent(line int, key string) string {
	for _, pl := range p.loc.nodes[line] {
		if pl.key != nil && pl.key.Line == line && pl.key.Value == key {
			return pl.parent
		}
	}
	return ""
}

// typeErrorNode finds the node a "cannot unmarshal TAG `VALUE` into
// GOTYPE" message is about. On its line, it is the first node of that kind
// and value, and of that Go type, not yet reported: the decoder reports in
// document order, and one line can hold several values in flow style. The
// decoder cuts long values to "1234567...".
func (p *problems) typeErrorNode(line int, tag, value, goType string) *placed {
	var fallback *placed
	for _, pl := range p.loc.nodes[line] {
		n := pl.node
		if n.Line != line || p.reported[pl] {
			continue
		}
		switch {
		case tag == "!!seq" && n.Kind == yaml.SequenceNode, tag == "!!map" && n.Kind == yaml.MappingNode:
		case tag != "!!seq" && tag != "!!map" && n.Kind == yaml.ScalarNode:
			if short, cut := strings.CutSuffix(value, "..."); n.Value != value && !(cut && strings.HasPrefix(n.Value, short)) {
				continue
			}
		default:
			continue
		}
		if pl.goType == goType {
			fallback = pl
			break
		}
		if fallback == nil {
			fallback = pl
		}
	}
	if fallback != nil {
		if p.reported == nil {
			p.reported = map[*placed]bool{}
		}
		p.reported[fallback] = true
	}
	return fallback
}

// describeType names what a Go type wants in YAML, for a type error.
func describeType(goType string) (noun, want string) {
	t := strings.TrimLeft(goType, "*")
	switch {
	case t == "time.Duration":
		return "duration", `a string like "5s" or "1m30s"`
	case strings.HasPrefix(t, "[]"):
		return "value", "a list"
	case strings.HasPrefix(t, "map["), strings.HasPrefix(t, "config."):
		return "value", "a mapping"
	case t == "string":
		return "value", "a string"
	case t == "bool":
		return "value", "true or false"
	case strings.HasPrefix(t, "int"), strings.HasPrefix(t, "uint"):
		return "value", "an integer"
	}
	return "value", "a " + t
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}
