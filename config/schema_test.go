package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/doc/comment"
	"go/format"
	"go/parser"
	"go/token"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"gopkg.in/yaml.v3"
)

const (
	schemaFile   = "../config.schema.json"
	commentsFile = "schema_comments_gen.go"
)

// schemaSources are the files whose doc comments describe the config
// keys.
var schemaSources = []string{"config.go", "values.go"}

// TestSchemaFiles fails when schema_comments_gen.go or
// config.schema.json is stale. To regenerate both:
//
//	go test ./config -run '^TestSchemaFiles$' -update
//
// (or go generate ./config).
func TestSchemaFiles(t *testing.T) {
	comments, err := extractComments(schemaSources...)
	if err != nil {
		t.Fatal(err)
	}
	gen, err := commentsSource(comments)
	if err != nil {
		t.Fatal(err)
	}
	schema, undocumented, err := buildSchema(comments)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range undocumented {
		t.Errorf("%s has no doc comment: every key needs one, it is the key's description in the schema", id)
	}
	if *update {
		for name, data := range map[string][]byte{commentsFile: gen, schemaFile: schema} {
			if err := os.WriteFile(name, data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return
	}
	const regen = "run go test ./config -run '^TestSchemaFiles$' -update"
	for name, want := range map[string][]byte{commentsFile: gen, schemaFile: schema} {
		got, err := os.ReadFile(name)
		if err != nil {
			t.Fatalf("%v (%s)", err, regen)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: %s", name, regen)
		}
	}
	if got := Schema(); !bytes.Equal(got, schema) {
		t.Errorf("Schema() differs from the schema built from the doc comments: %s", regen)
	}
}

// proseNames are field names that are also words of the comments
// ("WebSocket sessions", "TLS handshake"): they become keys only as a
// comment's first word.
var proseNames = map[string]bool{"WebSocket": true, "TLS": true, "URL": true, "JWT": true, "JWKS": true, "CA": true}

// extractComments reads the doc comments of the struct types in files
// and of their fields, keyed "Type" and "Type.Field", as plain text with
// one line a paragraph. Go field names in a comment become YAML keys:
// "ResolveEvery" → "resolve_every", "Match.PathPrefix" →
// "match.path_prefix".
func extractComments(files ...string) (map[string]string, error) {
	fset := token.NewFileSet()
	type field struct {
		key  string // YAML key
		typ  string // name of the field's struct type, if any
		doc  string
		name string
	}
	structs := map[string][]field{} // type → fields
	typeDocs := map[string]string{}
	for _, file := range files {
		f, err := parser.ParseFile(fset, file, nil, parser.ParseComments)
		if err != nil {
			return nil, err
		}
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.TYPE {
				continue
			}
			for _, spec := range gd.Specs {
				ts := spec.(*ast.TypeSpec)
				if !ts.Name.IsExported() {
					continue
				}
				doc := ts.Doc
				if doc == nil && len(gd.Specs) == 1 {
					doc = gd.Doc
				}
				if doc != nil {
					typeDocs[ts.Name.Name] = doc.Text()
				}
				st, ok := ts.Type.(*ast.StructType)
				if !ok {
					continue
				}
				var fs []field
				for _, fl := range st.Fields.List {
					key := ""
					if fl.Tag != nil {
						tag := strings.Trim(fl.Tag.Value, "`")
						if m := regexp.MustCompile(`yaml:"([^",]*)`).FindStringSubmatch(tag); m != nil {
							key = m[1]
						}
					}
					typ := fl.Type
					for {
						switch x := typ.(type) {
						case *ast.StarExpr:
							typ = x.X
							continue
						case *ast.ArrayType:
							typ = x.Elt
							continue
						case *ast.MapType:
							typ = x.Value
							continue
						}
						break
					}
					tname := ""
					if id, ok := typ.(*ast.Ident); ok {
						tname = id.Name
					}
					for _, n := range fl.Names {
						if !n.IsExported() || key == "" || key == "-" {
							continue
						}
						fs = append(fs, field{key: key, typ: tname, doc: fl.Doc.Text(), name: n.Name})
					}
				}
				structs[ts.Name.Name] = fs
			}
		}
	}

	// keyPath turns a Go field path, such as "Match.PathPrefix", into
	// YAML keys within struct typ; ok is false if some part is not a
	// field with a key.
	keyPath := func(typ, path string) (string, bool) {
		var keys []string
		for part := range strings.SplitSeq(path, ".") {
			i := slices.IndexFunc(structs[typ], func(f field) bool { return f.name == part })
			if i < 0 {
				return "", false
			}
			keys = append(keys, structs[typ][i].key)
			typ = structs[typ][i].typ
		}
		return strings.Join(keys, "."), true
	}
	goNames := regexp.MustCompile(`\b[A-Z][A-Za-z0-9]*(\.[A-Z][A-Za-z0-9]*)*\b`)
	render := func(typ, text string) string {
		p := comment.Parser{
			// Doc links ([routes.Table], [Size]) print as their text.
			LookupPackage: func(name string) (string, bool) { return name, true },
			LookupSym:     func(recv, name string) bool { return true },
		}
		pr := &comment.Printer{TextWidth: -1}
		out := strings.TrimSpace(string(pr.Text(p.Parse(text))))
		var b strings.Builder
		last := 0
		for _, loc := range goNames.FindAllStringIndex(out, -1) {
			m := out[loc[0]:loc[1]]
			k, ok := keyPath(typ, m)
			if !ok || (loc[0] > 0 && proseNames[m]) {
				continue
			}
			b.WriteString(out[last:loc[0]])
			b.WriteString(k)
			last = loc[1]
		}
		b.WriteString(out[last:])
		return b.String()
	}
	out := map[string]string{}
	for typ, doc := range typeDocs {
		out[typ] = render(typ, doc)
	}
	for typ, fs := range structs {
		for _, f := range fs {
			if f.doc != "" {
				out[typ+"."+f.name] = render(typ, f.doc)
			}
		}
	}
	return out, nil
}

// commentsSource returns the Go source of schema_comments_gen.go.
func commentsSource(comments map[string]string) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("// Code generated by go test ./config -run '^TestSchemaFiles$' -update; DO NOT EDIT.\n\n")
	b.WriteString("package config\n\n")
	b.WriteString("// schemaComments are the doc comments of the config types and their\n")
	b.WriteString("// fields (from " + strings.Join(schemaSources, " and ") + "), keyed \"Type\" and \"Type.Field\":\n")
	b.WriteString("// the descriptions in [Schema].\n")
	b.WriteString("var schemaComments = map[string]string{\n")
	keys := make([]string, 0, len(comments))
	for k := range comments {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "\t%q: %q,\n", k, comments[k])
	}
	b.WriteString("}\n")
	return format.Source(b.Bytes())
}

// compileSchema compiles [Schema] with a JSON Schema validator of its
// own (santhosh-tekuri/jsonschema, which implements draft 2020-12).
func compileSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(Schema()))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource(SchemaID, doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile(SchemaID)
	if err != nil {
		t.Fatalf("compile config.schema.json: %v", err)
	}
	return s
}

// yamlInstance decodes YAML (after ${VAR} expansion from the
// environment) into a JSON value the validator takes.
func yamlInstance(t *testing.T, data []byte) (any, error) {
	t.Helper()
	p := &problems{file: "x.yaml", loc: newLocator(nil)}
	data = expand(p, data, os.LookupEnv)
	if err := p.err(); err != nil {
		return nil, err
	}
	var v any
	if err := yaml.Unmarshal(data, &v); err != nil {
		return nil, err
	}
	return jsonInstance(t, v)
}

// jsonInstance converts what yaml.v3 decodes into any (map[string]any,
// or map[any]any for other keys; int; time.Time) into a JSON value.
func jsonInstance(t *testing.T, v any) (any, error) {
	t.Helper()
	js, err := json.Marshal(jsonKeys(v))
	if err != nil {
		return nil, err
	}
	return jsonschema.UnmarshalJSON(bytes.NewReader(js))
}

func jsonKeys(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			v[k] = jsonKeys(x)
		}
	case map[any]any:
		m := make(map[string]any, len(v))
		for k, x := range v {
			m[fmt.Sprint(k)] = jsonKeys(x)
		}
		return m
	case []any:
		for i, x := range v {
			v[i] = jsonKeys(x)
		}
	}
	return v
}
