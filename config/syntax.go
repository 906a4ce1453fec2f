package config

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// A syntaxProblem is a YAML syntax error in wsgate's words.
type syntaxProblem struct {
	line int
	col  int    // 0-based byte column of the value or key it is about, or -1
	key  string // the key it is about, as written on its line, if known
	msg  string
	// fix returns the file with a likely repair of the problem, so that
	// parsing can go on to find the next one and the key path; nil if
	// there is none worth trying.
	fix func(data []byte) []byte
}

// syntaxErrors records the YAML syntax error err in data, and those after
// it that are as clear: the common ones (an unquoted "*.example.com", an
// unclosed quote) have a likely repair, and parsing is tried again with
// it, so that one run reports all of them, each with its key path. It
// stops at the first problem without a repair.
func (p *problems) syntaxErrors(err error, data []byte) {
	var found []syntaxProblem
	var loc *locator
	seen := map[[2]int]bool{}
	for range 50 { // each round repairs one problem: bound the work
		sp := explainSyntax(err, data)
		if seen[[2]int{sp.line, sp.col}] {
			break // the repair did not help
		}
		seen[[2]int{sp.line, sp.col}] = true
		found = append(found, sp)
		if sp.fix == nil {
			break
		}
		data = sp.fix(data)
		var root yaml.Node
		if err = yaml.Unmarshal(data, &root); err == nil {
			loc = newLocator(&root)
			break
		}
		if sp := explainSyntax(err, data); sp.fix == nil {
			// Report only the repaired problems: what comes next may be
			// an effect of a repair that guessed wrong.
			break
		}
	}
	for _, sp := range found {
		path := loc.pathAt(sp.line, sp.col)
		msg := sp.msg
		if path == "" && sp.key != "" {
			msg = sp.key + ": " + msg
		}
		p.add(path, sp.line, errors.New(msg))
	}
}

// pathAt returns the key path of the value, or of the key, that starts at
// line and 0-based column col, or "".
func (l *locator) pathAt(line, col int) string {
	if l == nil || col < 0 {
		return ""
	}
	for _, pl := range l.nodes[line] {
		if pl.node.Line == line && pl.node.Column == col+1 ||
			pl.key != nil && pl.key.Line == line && pl.key.Column == col+1 {
			return pl.path
		}
	}
	return ""
}

// explainSyntax turns an error of the YAML parser into a syntaxProblem.
func explainSyntax(err error, data []byte) syntaxProblem {
	msg, line := strings.TrimPrefix(err.Error(), "yaml: "), 1
	if m := reLine.FindStringSubmatch(msg); m != nil {
		line, msg = atoi(m[1]), m[2]
		if parserProblems[msg] {
			line++
		}
	}
	lines := strings.Split(string(data), "\n")
	line = max(1, min(line, len(lines)))
	text := func(n int) string {
		if n < 1 || n > len(lines) {
			return ""
		}
		return strings.TrimSuffix(lines[n-1], "\r")
	}
	sp := syntaxProblem{line: line, col: -1, msg: msg}

	switch {
	case reAnchor.MatchString(msg):
		// "*name" where no "&name" is: the message has no line, so find
		// the first unquoted use.
		name := reAnchor.FindStringSubmatch(msg)[1]
		inScalar := blockScalarLines(lines)
		for n := 1; n <= len(lines); n++ {
			if inScalar[n-1] {
				continue // "*name" in a "|" or ">" block is text
			}
			if col, _ := valueStart(text(n), "*"); col >= 0 && isAlias(text(n)[col+1:], name) {
				return mustQuote(lines, n, col, fmt.Sprintf("a leading * starts a YAML alias, and there is no anchor &%s", name))
			}
		}
		if i := bytes.Index(data, []byte("*"+name)); i >= 0 {
			sp.line = 1 + bytes.Count(data[:i], []byte("\n"))
		}

	case msg == "found character that cannot start any token" || strings.HasPrefix(msg, "found a tab character"):
		// yaml.v3 places a tab on its line or the one before.
		for _, n := range []int{line, line + 1} {
			if hasIndentTab(text(n)) {
				return tabProblem(lines, n)
			}
		}
		if col, _ := valueStart(text(line), "@`%"); col >= 0 {
			c := text(line)[col : col+1]
			reason := "YAML reserves a leading " + c
			if c == "%" {
				reason = "a leading % starts a YAML directive"
			}
			return mustQuote(lines, line, col, reason)
		}
		for n := line; n <= len(lines); n++ {
			if hasIndentTab(text(n)) {
				return tabProblem(lines, n)
			}
		}

	case msg == "did not find expected alphabetic or numeric character":
		// An alias or an anchor with no name: "*.example.com", "*".
		if col, _ := valueStart(text(line), "*&"); col >= 0 {
			reason := "a leading * starts a YAML alias"
			if text(line)[col] == '&' {
				reason = "a leading & starts a YAML anchor"
			}
			return mustQuote(lines, line, col, reason)
		}

	case msg == "found unexpected end of stream":
		// The line is that of the opening quote.
		if col := openQuote(text(line)); col >= 0 {
			q := text(line)[col : col+1]
			sp.col, sp.key = col, lineKey(lines, line, col)
			sp.msg = fmt.Sprintf("the %s that opens this value is never closed", q)
			sp.fix = func(data []byte) []byte {
				return editLine(data, line, func(s string) string { return strings.TrimRight(s, " \t") + q })
			}
			return sp
		}

	case msg == "mapping values are not allowed in this context":
		return mappingValues(lines, line, sp)

	case msg == "did not find expected ',' or ']'", msg == "did not find expected ',' or '}'":
		// The line is that of the opening bracket.
		open, closing, what := "[", "]", "list"
		if strings.HasSuffix(msg, "'}'") {
			open, closing, what = "{", "}", "mapping"
		}
		if col := strings.Index(text(line), open); col >= 0 &&
			strings.Count(text(line), open) > strings.Count(text(line), closing) {
			sp.col, sp.key = col, lineKey(lines, line, col)
			sp.msg = fmt.Sprintf("the %s that opens this %s is never closed", open, what)
			return sp
		}
		sp.msg = fmt.Sprintf("expected %q or %q in this %s", ",", closing, what)

	case msg == "did not find expected key", msg == "did not find expected '-' indicator":
		// The parser's line is that of the enclosing block, or earlier:
		// look for the first line whose indentation fits no block.
		if n, above, outer := badDedent(lines); n >= line-1 && n > 0 {
			sp.line, sp.key = n, lineKey(lines, n, indentOf(text(n)))
			sp.msg = fmt.Sprintf("indented less than line %d but more than line %d: line it up with one of them", above, outer)
			return sp
		}
		// Or a key indented under a value in brackets or quotes.
		for _, n := range []int{line, line + 1} {
			if n <= len(lines) && isContent(text(n)) {
				if over, ok := overIndented(lines, n, sp); ok {
					return over
				}
			}
		}
	}
	return sp
}

// mustQuote is the problem of a plain value at line and col that YAML
// does not take as it is, such as *.example.com.
func mustQuote(lines []string, line, col int, reason string) syntaxProblem {
	s := strings.TrimSuffix(lines[line-1], "\r")
	_, flow := valueStart(s, s[col:col+1])
	end := valueEnd(s, col, flow)
	v := s[col:end]
	return syntaxProblem{
		line: line, col: col, key: lineKey(lines, line, col),
		msg: fmt.Sprintf("%s must be quoted (%q): %s", v, v, reason),
		fix: func(data []byte) []byte {
			return editLine(data, line, func(s string) string {
				return s[:col] + "'" + strings.ReplaceAll(v, "'", "''") + "'" + s[end:]
			})
		},
	}
}

// mappingValues explains "mapping values are not allowed in this context":
// a ": " in a plain value, a key indented under a key that has a value
// on its line, or a missing space after a colon on the line before.
func mappingValues(lines []string, line int, sp syntaxProblem) syntaxProblem {
	s := strings.TrimSuffix(lines[line-1], "\r")
	if m := reKeyValue.FindStringSubmatchIndex(s); m != nil {
		col := m[4]
		if !strings.ContainsAny(s[col:col+1], `"'[{`) {
			end := valueEnd(s, col, false)
			if strings.Contains(s[col:end]+" ", ": ") {
				return mustQuote(lines, line, col, `a ": " inside it starts a mapping`)
			}
		}
	}
	prev := prevContent(lines, line)
	if prev == 0 || indentOf(lines[prev-1]) >= indentOf(s) {
		return sp
	}
	ps := strings.TrimSuffix(lines[prev-1], "\r")
	if m := reNoSpace.FindStringSubmatchIndex(ps); m != nil {
		col, colon := m[2], m[3]
		return syntaxProblem{
			line: prev, col: col, key: ps[col:colon],
			msg: fmt.Sprintf("a space must follow the colon (%q)", ps[col:colon+1]+" "+strings.TrimSpace(ps[colon+1:])),
			fix: func(data []byte) []byte {
				return editLine(data, prev, func(s string) string { return s[:colon+1] + " " + s[colon+1:] })
			},
		}
	}
	if over, ok := overIndented(lines, line, sp); ok {
		return over
	}
	return sp
}

// overIndented explains a line indented more than the line above it when
// that one's key has its value on its line, so that nothing can go
// under it.
func overIndented(lines []string, line int, sp syntaxProblem) (syntaxProblem, bool) {
	s := strings.TrimSuffix(lines[line-1], "\r")
	prev := prevContent(lines, line)
	if prev == 0 || indentOf(lines[prev-1]) >= indentOf(s) {
		return sp, false
	}
	m := reKeyValue.FindStringSubmatch(lines[prev-1])
	if m == nil || m[2] == "|" || m[2] == ">" {
		return sp, false
	}
	sp.line, sp.key = line, lineKey(lines, line, indentOf(s))
	sp.msg = fmt.Sprintf("indented more than line %d (%s), which has its value on its line", prev, m[1])
	return sp, true
}

var (
	// A key and the start of its value: "  - name: value".
	reKeyValue = regexp.MustCompile(`^\s*(?:-\s+)?([^\s:#'"{}\[\],][^:#]*?):\s+(\S)`)
	// A key with no space after its colon: "  targets:[a]", not "- http://a".
	reNoSpace = regexp.MustCompile(`^\s*(?:-\s+)?([A-Za-z_][\w.-]*):(?:[^\s:/]|/[^/])`)
	// A key at the start of a line's content.
	reStartKey = regexp.MustCompile(`^([^\s:#'"{}\[\],-][^:#]*?):(?:\s|$)`)
	// A key, on a line or in a flow mapping: the last one before a value.
	reLineKey = regexp.MustCompile(`([\w.-]+)["']?\s*:(?:\s|$)`)
)

// tabProblem is the problem of the tab that indents line.
func tabProblem(lines []string, line int) syntaxProblem {
	msg := "a tab character indents this line; YAML indents with spaces only"
	more := 0
	for _, s := range lines[line:] {
		if hasIndentTab(s) {
			more++
		}
	}
	switch {
	case more == 1:
		msg += " (1 more line below starts with a tab)"
	case more > 1:
		msg += fmt.Sprintf(" (%d more lines below start with a tab)", more)
	}
	return syntaxProblem{line: line, col: -1, msg: msg}
}

// hasIndentTab reports whether s has a tab in its indentation.
func hasIndentTab(s string) bool {
	return strings.ContainsRune(s[:len(s)-len(strings.TrimLeft(s, " \t"))], '\t')
}

// indentOf returns the number of leading spaces of s.
func indentOf(s string) int {
	return len(s) - len(strings.TrimLeft(s, " "))
}

// isContent reports whether s is neither blank nor a comment.
func isContent(s string) bool {
	t := strings.TrimSpace(s)
	return t != "" && t[0] != '#'
}

// prevContent returns the number of the last content line before line, or 0.
func prevContent(lines []string, line int) int {
	for n := line - 1; n >= 1; n-- {
		if isContent(lines[n-1]) {
			return n
		}
	}
	return 0
}

// valueStart returns the column of the first character of s that is one
// of chars and starts a plain value (at the start of the line, after
// "- ", ": ", or in a flow collection after "[", "{" or ","), outside
// quotes and comments, or -1. flow reports whether it is inside [ ] or
// { } on the line.
func valueStart(s, chars string) (col int, flow bool) {
	depth := 0
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		if quote != 0 {
			if c == quote {
				quote = 0
			}
			continue
		}
		start := tokenStart(s, i, depth > 0)
		switch {
		case c == '#' && (i == 0 || s[i-1] == ' ' || s[i-1] == '\t'):
			return -1, false
		case strings.IndexByte(chars, c) >= 0 && start:
			return i, depth > 0
		case (c == '"' || c == '\'') && start:
			quote = c
		case (c == '[' || c == '{') && (start || depth > 0):
			depth++
		case (c == ']' || c == '}') && depth > 0:
			depth--
		}
	}
	return -1, false
}

// tokenStart reports whether a value can start at s[i].
func tokenStart(s string, i int, flow bool) bool {
	j := i - 1
	for j >= 0 && (s[j] == ' ' || s[j] == '\t') {
		j--
	}
	switch {
	case j < 0:
		return true
	case s[j] == ':' || s[j] == '-' || s[j] == '?':
		return j < i-1 // "key: value", "- item"
	case s[j] == '[' || s[j] == '{' || s[j] == ',':
		return flow || s[j] != ','
	}
	return false
}

// valueEnd returns where the plain value at s[col:] ends: at a comment,
// the end of the line, or in a flow collection at ",", "]" or "}".
func valueEnd(s string, col int, flow bool) int {
	end := len(s)
	if i := strings.Index(s[col:], " #"); i >= 0 {
		end = col + i
	}
	if flow {
		if i := strings.IndexAny(s[col:end], ",]}"); i >= 0 {
			end = col + i
		}
	}
	return len(strings.TrimRight(s[:end], " \t"))
}

// openQuote returns the column of a quote on s that starts a value and is
// not closed on the line, or -1.
func openQuote(s string) int {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c == '"' || c == '\'') && tokenStart(s, i, true) {
			j := i + 1
			for j < len(s) {
				if s[j] == '\\' && c == '"' {
					j += 2
					continue
				}
				if s[j] == c {
					if c == '\'' && j+1 < len(s) && s[j+1] == '\'' { // '' is a quote
						j += 2
						continue
					}
					break
				}
				j++
			}
			if j >= len(s) {
				return i
			}
			i = j
		}
	}
	return -1
}

// lineKey returns the key that the value at line and col belongs to: the
// last key before it on the line, or for a "- item" the key of the list
// above it. It is "" if there is none.
func lineKey(lines []string, line, col int) string {
	s := strings.TrimSuffix(lines[line-1], "\r")
	if col > len(s) {
		col = len(s)
	}
	if m := reLineKey.FindAllStringSubmatch(s[:col], -1); m != nil {
		return m[len(m)-1][1]
	}
	if m := reStartKey.FindStringSubmatch(s[col:]); m != nil && col == indentOf(s) {
		return m[1] // a key at the start of the line
	}
	if !strings.HasPrefix(strings.TrimSpace(s), "-") {
		return ""
	}
	ind := indentOf(s)
	for n := line - 1; n >= 1; n-- {
		t := strings.TrimSuffix(lines[n-1], "\r")
		if !isContent(t) || indentOf(t) > ind || strings.HasPrefix(strings.TrimSpace(t), "-") {
			continue
		}
		t = strings.TrimSpace(t)
		if i := strings.Index(t, " #"); i >= 0 {
			t = strings.TrimSpace(t[:i])
		}
		if k, ok := strings.CutSuffix(t, ":"); ok {
			return strings.Trim(k, `"'`)
		}
		return ""
	}
	return ""
}

// badDedent returns the first line whose indentation is less than that of
// the content line above it (above) and matches no enclosing block: it is
// more than that of the nearest line with less (outer). It returns 0 if
// there is none. Lines of block scalars ("|", ">") are skipped.
func badDedent(lines []string) (line, above, outer int) {
	type level struct{ indent, line int }
	var stack []level
	scalar := -1 // indentation of the key of a block scalar being skipped
	for i, s := range lines {
		s = strings.TrimSuffix(s, "\r")
		if !isContent(s) || hasIndentTab(s) {
			continue
		}
		ind := indentOf(s)
		if scalar >= 0 {
			if ind > scalar {
				continue
			}
			scalar = -1
		}
		for len(stack) > 0 && stack[len(stack)-1].indent > ind {
			top := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if len(stack) == 0 || stack[len(stack)-1].indent < ind {
				o := 0
				if len(stack) > 0 {
					o = stack[len(stack)-1].line
				}
				if o == 0 {
					return 0, 0, 0 // less than the first line: not this problem
				}
				return i + 1, lastAt(lines, i+1, top.indent), o
			}
		}
		if len(stack) == 0 || stack[len(stack)-1].indent < ind {
			stack = append(stack, level{ind, i + 1})
		}
		t := strings.TrimSpace(s)
		if j := strings.Index(t, " #"); j >= 0 {
			t = strings.TrimSpace(t[:j])
		}
		if reBlockScalar.MatchString(t) {
			scalar = ind
		}
	}
	return 0, 0, 0
}

// blockScalarLines reports, for each line, whether it is inside the body
// of a block scalar ("|", ">").
func blockScalarLines(lines []string) []bool {
	in := make([]bool, len(lines))
	scalar := -1 // indentation of the key of the block scalar
	for i, s := range lines {
		s = strings.TrimSuffix(s, "\r")
		if !isContent(s) {
			in[i] = scalar >= 0
			continue
		}
		ind := indentOf(s)
		if scalar >= 0 {
			if ind > scalar {
				in[i] = true
				continue
			}
			scalar = -1
		}
		t := strings.TrimSpace(s)
		if j := strings.Index(t, " #"); j >= 0 {
			t = strings.TrimSpace(t[:j])
		}
		if reBlockScalar.MatchString(t) {
			scalar = ind
		}
	}
	return in
}

// isAlias reports whether s, what follows a "*", is the alias name and
// nothing more of a name: "foo" in "foo", "foo ", "foo]", not "foobar".
func isAlias(s, name string) bool {
	rest, ok := strings.CutPrefix(s, name)
	return ok && (rest == "" || strings.ContainsRune(" \t,[]{}", rune(rest[0])))
}

var reBlockScalar = regexp.MustCompile(`(?:^|[:\-]\s+)[|>][-+0-9]*$`)

// lastAt returns the last content line before line indented by indent.
func lastAt(lines []string, line, indent int) int {
	for n := line - 1; n >= 1; n-- {
		if isContent(lines[n-1]) && indentOf(lines[n-1]) == indent {
			return n
		}
	}
	return line - 1
}

// editLine returns data with line (1-based) replaced by edit(line).
func editLine(data []byte, line int, edit func(string) string) []byte {
	lines := strings.SplitAfter(string(data), "\n")
	if line < 1 || line > len(lines) {
		return data
	}
	s := lines[line-1]
	body := strings.TrimRight(s, "\r\n")
	lines[line-1] = edit(body) + s[len(body):]
	return []byte(strings.Join(lines, ""))
}
