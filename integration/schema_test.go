package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"gopkg.in/yaml.v3"
)

var (
	schemaOnce sync.Once
	schema     *jsonschema.Schema
	schemaErr  error
)

// configSchema compiles the committed config.schema.json once.
func configSchema() (*jsonschema.Schema, error) {
	schemaOnce.Do(func() {
		f, err := os.Open(filepath.Join(moduleRoot, "config.schema.json"))
		if err != nil {
			schemaErr = err
			return
		}
		defer f.Close()
		doc, err := jsonschema.UnmarshalJSON(f)
		if err != nil {
			schemaErr = err
			return
		}
		c := jsonschema.NewCompiler()
		const id = "config.schema.json"
		if schemaErr = c.AddResource(id, doc); schemaErr != nil {
			return
		}
		schema, schemaErr = c.Compile(id)
	})
	return schema, schemaErr
}

// reVar is a ${VAR} or ${VAR:-default} reference in a config file.
var reVar = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}`)

// checkConfigSchema validates a config file wsgate has just started on
// (so the loader accepted it) against config.schema.json: every config
// the integration tests run must be one an editor's schema check would
// pass. env is the process's extra environment (KEY=VALUE), which the
// file's ${VAR} references expand from, as wsgate does.
func checkConfigSchema(t *testing.T, path string, env []string) {
	t.Helper()
	if err := validateConfigSchema(path, env); err != nil {
		t.Errorf("wsgate runs it, but config.schema.json rejects it: %v", err)
	}
}

// validateConfigSchema is checkConfigSchema's check.
func validateConfigSchema(path string, env []string) error {
	s, err := configSchema()
	if err != nil {
		return fmt.Errorf("config.schema.json: %w", err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	vars := map[string]string{}
	for _, kv := range append(os.Environ(), env...) {
		if k, v, ok := strings.Cut(kv, "="); ok {
			vars[k] = v
		}
	}
	data = bytes.ReplaceAll(data, []byte("$$"), []byte("\x00"))
	data = reVar.ReplaceAllFunc(data, func(m []byte) []byte {
		sub := reVar.FindSubmatch(m)
		if v := vars[string(sub[1])]; v != "" || sub[2] == nil {
			return []byte(v)
		}
		return sub[2]
	})
	data = bytes.ReplaceAll(data, []byte("\x00"), []byte("$"))
	var v any
	if err := yaml.Unmarshal(data, &v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	j, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("%s: as JSON: %w", path, err)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(j))
	if err != nil {
		return err
	}
	if err := s.Validate(inst); err != nil {
		return fmt.Errorf("%s: %w\n%s", path, err, data)
	}
	return nil
}

// TestConfigSchemaCheck: the check every started gateway's config goes
// through passes a good config, with its variables expanded, and fails
// one the schema rejects (a misspelt key).
func TestConfigSchemaCheck(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const base = "listeners: [{addr: \"127.0.0.1:${PORT:-0}\"}]\nupstreams: {app: {targets: [\"http://127.0.0.1:9\"]}}\n"
	good := write("good.yaml", base+"routes: [{match: {path_prefix: /}, upstream: app, websocket: {idle_timeout: ${IDLE}}}]\n")
	if err := validateConfigSchema(good, []string{"IDLE=30s"}); err != nil {
		t.Errorf("a good config: %v", err)
	}
	bad := write("bad.yaml", base+"routes: [{match: {path_prefix: /}, upstream: app, websocket: {idle_timout: 30s}}]\n")
	if err := validateConfigSchema(bad, nil); err == nil || !strings.Contains(err.Error(), "idle_timout") {
		t.Errorf("a misspelt key: %v, want an error naming idle_timout", err)
	}
}
