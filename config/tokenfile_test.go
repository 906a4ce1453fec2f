package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAdminTokenFile: admin.token_file reads the token from a file next
// to the config (white space around it dropped), and is an error when it
// is missing, empty, or set with token.
func TestAdminTokenFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	const head = "listeners: [{addr: \"127.0.0.1:0\"}]\nroutes: [{match: {path: /}, respond: {status: 200}}]\n"
	write("token", "  0123456789abcdef0123456789abcdef\n")
	write("empty", " \n")
	for _, tc := range []struct {
		admin string
		want  string // an error containing this; "" = loads
	}{
		{`{addr: ":0", token_file: token}`, ""},
		{`{addr: ":0", token_file: missing}`, `admin.token_file: token file "missing":`},
		{`{addr: ":0", token_file: empty}`, `admin.token_file: token file`},
		{`{addr: ":0", token: "0123456789abcdef", token_file: token}`, "admin.token_file: set token or token_file, not both"},
	} {
		path := filepath.Join(dir, "c.yaml")
		write("c.yaml", head+"admin: "+tc.admin+"\n")
		cfg, err := Load(path)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("admin %s: %v", tc.admin, err)
		case tc.want == "":
			if cfg.Admin.Token != "0123456789abcdef0123456789abcdef" {
				t.Errorf("admin %s: token %q, want the file's, trimmed", tc.admin, cfg.Admin.Token)
			}
			if cfg.Admin.TokenFile != filepath.Join(dir, "token") {
				t.Errorf("admin %s: token_file %q, want it absolute", tc.admin, cfg.Admin.TokenFile)
			}
		case err == nil || !strings.Contains(err.Error(), tc.want):
			t.Errorf("admin %s: %v, want an error containing %q", tc.admin, err, tc.want)
		case strings.Contains(err.Error(), "0123456789abcdef"):
			t.Errorf("admin %s: the error shows the token: %v", tc.admin, err)
		}
	}
}
