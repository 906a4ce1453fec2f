package config

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// schemaProbe sets only what a config must set, and the blocks whose
// presence turns on keys with defaults of their own. Every other key
// of its types is left to its default.
const schemaProbe = `
listeners:
  - addr: 127.0.0.1:0
    tls: {certificates: [{cert: probe.pem, key: probe-key.pem}]}
upstreams:
  hashed:
    targets: [http://127.0.0.1:9001]
    balance: {policy: hash}
    health: {path: /healthz, websocket: {path: /ws}}
    passive: {}
  sticky:
    targets: [{url: https://127.0.0.1:9002}]
    balance: {policy: cookie}
    tls: {}
  plain:
    targets: [http://127.0.0.1:9003]
routes:
  - match: {path: /a}
    upstream: hashed
    websocket: {ping: {}}
    auth: {forward: {url: http://127.0.0.1:9100/auth}, jwt: {jwks: https://issuer.example/jwks.json}}
  - {match: {path: /r}, redirect: {to: /}}
  - {match: {path: /s}, respond: {}}
  - {match: {path: /t}, static: {root: .}}
admin: {}
`

// schemaDerived are keys whose default is another key's value, or made
// from the key's place: they have no default in the schema.
var schemaDerived = []string{
	"Route.Name",           // "routes[N]"
	"Route.MaxRequestBody", // limits.request_body
}

// schemaConditional are keys whose default applies with one value of
// another key only (balance.key with policy hash, balance.cookie with
// cookie).
var schemaConditional = []string{"Balance.Key", "Balance.Cookie"}

// TestSchemaDefaults checks that the default of every key in the schema
// is what Parse fills in when the key is left out, and that every key
// Parse fills in has its default in the schema.
func TestSchemaDefaults(t *testing.T) {
	dir := t.TempDir()
	writeCert(t, dir, "probe", "probe.example", nil, nil)
	cfg, err := Parse(filepath.Join(dir, "wsgate.yaml"), []byte(schemaProbe))
	if err != nil {
		t.Fatal(err)
	}
	var probe any
	if err := yaml.Unmarshal([]byte(schemaProbe), &probe); err != nil {
		t.Fatal(err)
	}
	type object struct {
		Properties map[string]map[string]any
		AnyOf      []object
	}
	var schema struct {
		object
		Defs map[string]object `json:"$defs"`
	}
	if err := json.Unmarshal(Schema(), &schema); err != nil {
		t.Fatal(err)
	}
	propsOf := func(name string) map[string]map[string]any {
		if name == "Config" {
			return schema.Properties
		}
		d := schema.Defs[name]
		if d.Properties != nil {
			return d.Properties
		}
		for _, alt := range d.AnyOf { // Balance: a name or a mapping
			if alt.Properties != nil {
				return alt.Properties
			}
		}
		return d.Properties
	}
	checked := map[string]bool{}
	// walk checks the loaded value v, which the probe wrote as in.
	var walk func(v reflect.Value, in any)
	walk = func(v reflect.Value, in any) {
		switch v.Kind() {
		case reflect.Pointer:
			if !v.IsNil() {
				walk(v.Elem(), in)
			}
			return
		case reflect.Slice:
			list, _ := in.([]any)
			for i := range min(v.Len(), len(list)) {
				walk(v.Index(i), list[i])
			}
			return
		case reflect.Map:
			m, _ := in.(map[string]any)
			for _, k := range v.MapKeys() {
				walk(v.MapIndex(k), m[k.String()])
			}
			return
		case reflect.Struct:
		default:
			return
		}
		name := typeName(v.Type())
		props := propsOf(name)
		given, _ := in.(map[string]any)
		if s, ok := in.(string); ok { // the scalar form of Target and Balance
			given = map[string]any{"url": s, "policy": s}
		}
		for i := range v.NumField() {
			f := v.Type().Field(i)
			key, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if !f.IsExported() || key == "-" {
				continue
			}
			id := name + "." + f.Name
			fv := v.Field(i)
			in, set := given[key]
			walk(fv, in)
			if set || slices.Contains(schemaDerived, id) {
				continue
			}
			def, hasDef := props[key]["default"]
			switch {
			case hasDef && fv.IsZero() && slices.Contains(schemaConditional, id):
				// Not this block's policy.
			case hasDef:
				checked[id] = true
				if !sameDefault(fv, def) {
					t.Errorf("%s: schema default %v, Parse fills in %v", id, def, fv)
				}
			case fv.Kind() == reflect.Struct:
				// A mapping of its own: its keys are checked.
			case !fv.IsZero():
				t.Errorf("%s: Parse fills in %v, the schema has no default", id, fv)
			}
		}
	}
	walk(reflect.ValueOf(cfg), probe)
	for id, r := range fieldRules {
		if r.def != nil && !checked[id] {
			t.Errorf("%s: default not checked: leave the key out of a block of schemaProbe", id)
		}
	}
}

// sameDefault reports whether the loaded value v is the schema default
// def (a JSON value as the YAML file would write it).
func sameDefault(v reflect.Value, def any) bool {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return false
		}
		v = v.Elem()
	}
	if b, ok := v.Interface().(Balance); ok {
		return b.Policy == def
	}
	switch x := v.Interface().(type) {
	case time.Duration:
		s, _ := def.(string)
		d, err := time.ParseDuration(s)
		return err == nil && d == x
	case Size:
		return sameSize(int64(x), def)
	case int64: // limits: sizes compiled to byte counts
		return sameSize(x, def)
	}
	switch v.Kind() {
	case reflect.Int:
		f, ok := def.(float64)
		return ok && f == float64(v.Int())
	case reflect.Float64:
		f, ok := def.(float64)
		return ok && f == v.Float()
	case reflect.Slice:
		list, ok := def.([]any)
		if !ok || len(list) != v.Len() {
			return false
		}
		for i := range list {
			if list[i] != v.Index(i).Interface() {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(v.Interface(), def)
}

func sameSize(n int64, def any) bool {
	switch d := def.(type) {
	case float64:
		return float64(n) == d
	case string:
		m, err := parseSize(d)
		return err == nil && m == n
	}
	return false
}

// schemaMisses are the invalid testdata configs that the schema cannot
// reject, and why: rules between keys, or between a key and the world.
var schemaMisses = map[string]string{
	"admin_public.yaml":     "a non-loopback admin.addr needs admin.token: a rule between two keys",
	"duplicate_route.yaml":  "two routes that take the same requests: a rule between list items",
	"unknown_upstream.yaml": "a route naming an upstream that does not exist: a reference",
}

// schemaCannotCatch are more configs Parse rejects and the schema
// accepts, one for each kind of rule it cannot express. They keep this
// list honest: if the schema learns one, the test says so.
var schemaCannotCatch = []struct{ name, why, yaml string }{
	{"strip_prefix without path_prefix", "a key in another mapping (match)",
		`routes: [{match: {path: /a}, upstream: app, strip_prefix: true}]`},
	{"key with the wrong policy", "a key allowed only with some value of another",
		`upstreams: {app: {targets: [http://127.0.0.1:9001], balance: {policy: round_robin, key: client_ip}}}`},
	{"tls without an https target", "a key allowed only with some value in a list",
		`upstreams: {app: {targets: [http://127.0.0.1:9001], tls: {server_name: x}}}`},
	{"health timeout over interval", "a comparison of two durations",
		`upstreams: {app: {targets: [http://127.0.0.1:9001], health: {path: /h, interval: 1s, timeout: 2s}}}`},
	{"duplicate listener address", "uniqueness by a normalised value",
		`listeners: [{addr: "127.0.0.1:8080"}, {addr: "127.0.0.1:8080"}]`},
	{"admin on a listener's address", "overlap of two addresses",
		"listeners: [{addr: \"127.0.0.1:8080\"}]\nadmin: {addr: \"127.0.0.1:8080\"}"},
	{"proxy_protocol without trusted_proxies", "a key that needs another top-level key",
		`listeners: [{addr: "127.0.0.1:8080", proxy_protocol: true}]`},
	{"burst without a rate", "a key that needs a non-zero value of another",
		`routes: [{match: {path: /a}, upstream: app, limits: {burst: 5}}]`},
	{"missing static root", "the file system",
		`routes: [{match: {path: /a}, static: {root: does-not-exist}}]`},
	{"size over the limit in a string", "a range on a size written with a unit",
		`upstreams: {app: {targets: [http://127.0.0.1:9001], retry_body_limit: 1GiB}}`},
	{"ping interval under 100ms", "a range on a duration",
		`routes: [{match: {path: /a}, upstream: app, websocket: {ping: {interval: 10ms}}}]`},
	{"wildcard in the middle of a host", "host pattern syntax",
		`routes: [{match: {path: /a, host: "a.*.example.com"}, upstream: app}]`},
	{"IPv4 address out of range", "IP address syntax beyond its characters",
		`trusted_proxies: ["300.1.1.1"]`},
}

// schemaTestEnv sets the environment TestGolden loads testdata with.
func schemaTestEnv(t *testing.T) {
	t.Setenv("WSGATE_TEST_PORT", "9001")
	t.Setenv("WSGATE_TEST_EMPTY", "")
	unsetenv(t, "WSGATE_TEST_HOST")
	unsetenv(t, "WSGATE_TEST_UNSET")
	unsetenv(t, "WSGATE_ADMIN_TOKEN")
}

// deployEnv is the environment the configs under deploy/ expect.
var deployEnv = map[string]string{"WSGATE_ADMIN_TOKEN": "0123456789abcdef0123456789abcdef"}

// TestSchemaValidates validates config files against the schema: every
// config the loader accepts must pass it, and the testdata configs the
// loader rejects must fail it too, but for those in schemaMisses.
func TestSchemaValidates(t *testing.T) {
	schemaTestEnv(t)
	s := compileSchema(t)
	validate := func(data []byte) error {
		inst, err := yamlInstance(t, data)
		if err != nil {
			return err // not YAML, or a missing variable: rejected before the schema
		}
		return s.Validate(inst)
	}

	valid := []string{"../config.example.yaml"}
	valid = append(valid, configsIn(t, "../deploy", "../integration")...)
	files, err := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	nValid, nInvalid := 0, 0
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		_, loadErr := Load(file)
		schemaErr := validate(data)
		base := filepath.Base(file)
		why, miss := schemaMisses[base]
		switch {
		case loadErr == nil:
			nValid++
			if schemaErr != nil {
				t.Errorf("%s loads, but fails the schema: %v", file, schemaErr)
			}
		case miss:
			nInvalid++
			if schemaErr != nil {
				t.Errorf("%s fails the schema now (%v): remove it from schemaMisses (%s)", file, schemaErr, why)
			}
		default:
			nInvalid++
			if schemaErr == nil {
				t.Errorf("%s does not load (%v), but passes the schema: fix the schema, or add it to schemaMisses", file, loadErr)
			}
		}
	}
	if nValid == 0 || nInvalid == 0 {
		t.Errorf("testdata: %d valid and %d invalid configs, want some of each", nValid, nInvalid)
	}
	for k, v := range deployEnv {
		t.Setenv(k, v)
	}
	for _, file := range valid {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range configDocs(t, file, data) {
			if err := validate(doc); err != nil {
				t.Errorf("%s fails the schema: %v", file, err)
			}
		}
	}

	// The example as the admin API shows it (GET /api/config) is itself
	// a config file.
	cfg, err := Load("../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	inst, err := jsonInstance(t, cfg.Redacted())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Validate(inst); err != nil {
		t.Errorf("config.example.yaml, Redacted(): %v", err)
	}

	const head = "listeners: [{addr: \"127.0.0.1:0\"}]\nupstreams: {app: {targets: [\"http://127.0.0.1:9001\"]}}\n"
	for _, tt := range schemaCannotCatch {
		doc := tt.yaml + "\n"
		for _, key := range []string{"listeners", "upstreams", "routes"} {
			if !strings.Contains(tt.yaml, key+":") {
				doc += strings.Join(slices.DeleteFunc(strings.SplitAfter(head, "\n"), func(l string) bool { return !strings.HasPrefix(l, key+":") }), "")
			}
		}
		if !strings.Contains(doc, "routes:") {
			doc += "routes: [{match: {path: /}, upstream: app}]\n"
		}
		if _, err := Parse(filepath.Join(t.TempDir(), "c.yaml"), []byte(doc)); err == nil {
			t.Errorf("%s: Parse accepts\n%s", tt.name, doc)
		}
		if err := validate([]byte(doc)); err != nil {
			t.Errorf("%s (%s): the schema rejects it now (%v); drop it from schemaCannotCatch", tt.name, tt.why, err)
		}
	}
}

// configsIn returns the wsgate config files below dirs: YAML files with
// a top-level listeners key, Kubernetes ConfigMaps holding one, and
// every wsgate.yaml.
func configsIn(t *testing.T, dirs ...string) []string {
	t.Helper()
	var out []string
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			if ext := filepath.Ext(path); ext != ".yaml" && ext != ".yml" {
				return nil
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if d.Name() == "wsgate.yaml" || len(configDocs(t, path, data)) > 0 {
				out = append(out, path)
			}
			return nil
		})
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	return out
}

// configDocs returns the wsgate configs in a YAML file: the file itself
// when it has a top-level listeners key, or the data entries of a
// Kubernetes ConfigMap (one YAML document of several) that have one.
func configDocs(t *testing.T, file string, data []byte) [][]byte {
	t.Helper()
	var out [][]byte
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	for {
		var doc map[string]any
		if err := dec.Decode(&doc); err != nil {
			break // io.EOF, or not a mapping: not a config
		}
		if _, ok := doc["listeners"]; ok {
			out = append(out, data)
			break
		}
		if doc["kind"] != "ConfigMap" {
			continue
		}
		entries, _ := doc["data"].(map[string]any)
		for _, v := range entries {
			if s, ok := v.(string); ok && strings.Contains(s, "listeners:") {
				out = append(out, []byte(s))
			}
		}
	}
	if filepath.Base(file) == "wsgate.yaml" && len(out) == 0 {
		t.Errorf("%s: neither a config (no listeners key) nor a ConfigMap holding one", file)
	}
	return out
}
