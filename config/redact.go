package config

import (
	"fmt"
	"reflect"
	"strings"
	"time"
)

// RedactedValue is what stands in for a secret in [Config.Redacted].
const RedactedValue = "[redacted]"

// Redacted returns the config as loaded, defaults filled in, as a value
// for encoding/json (maps, lists, strings, numbers and bools): what the
// admin API's GET /api/config shows. Its keys are the YAML keys of the
// file (listeners, upstreams, routes, limits, timeouts, trusted_proxies,
// admin); durations are Go duration strings ("30s"), sizes byte counts,
// file paths absolute. Absent optional blocks, and empty strings, lists
// and mappings that stand for their default, are left out. The JSON is
// itself a config file, which loads on the same machine to the same view.
//
// Secrets read [RedactedValue]: admin.token, an upstream's
// balance.secret, and the value of every header the config sets (health
// check headers, request_headers.set, response_headers.set) whose name
// contains, in any case, auth, cookie, token, secret, key, password,
// passwd, credential, session or signature. Certificate, key and CA file
// paths are not secrets and are kept: the config never holds the files'
// contents.
//
// The result shares nothing with c.
func (c *Config) Redacted() any {
	if c == nil {
		return nil
	}
	v, _ := redact(reflect.ValueOf(c).Elem(), "")
	return v
}

// The redact struct tag marks what [Config.Redacted] hides: "secret" a
// string value, "headers" the values of a header map whose names are
// credentials.
const (
	redactSecret  = "secret"
	redactHeaders = "headers"
)

var durationType = reflect.TypeFor[time.Duration]()

// redact returns v as plain JSON values, walking the fields that have a
// YAML key; tag is v's redact tag. It reports false for a value to leave
// out.
func redact(v reflect.Value, tag string) (any, bool) {
	if v.Type() == durationType {
		return time.Duration(v.Int()).String(), true
	}
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return nil, false
		}
		x, ok := redact(v.Elem(), tag)
		if !ok {
			// Set, but empty: on_change_reason: "" is an empty reason,
			// not the default one.
			switch v.Elem().Kind() {
			case reflect.String:
				return "", true
			case reflect.Struct:
				return map[string]any{}, true
			}
		}
		return x, ok
	case reflect.Struct:
		out := map[string]any{}
		redactFields(v, out)
		return out, len(out) > 0
	case reflect.Map:
		if v.Len() == 0 {
			return nil, false
		}
		out := make(map[string]any, v.Len())
		for it := v.MapRange(); it.Next(); {
			name := fmt.Sprint(it.Key().Interface())
			if tag == redactHeaders && isSecretHeader(name) {
				out[name] = RedactedValue
				continue
			}
			if x, ok := redact(it.Value(), ""); ok {
				out[name] = x
			}
		}
		return out, true
	case reflect.Slice, reflect.Array:
		if v.Len() == 0 {
			return nil, false
		}
		out := make([]any, 0, v.Len())
		for i := range v.Len() {
			x, _ := redact(v.Index(i), tag)
			out = append(out, x) // a nil item keeps its place
		}
		return out, true
	case reflect.String:
		if v.Len() == 0 {
			return nil, false
		}
		if tag == redactSecret {
			return RedactedValue, true
		}
		return v.String(), true
	case reflect.Bool:
		return v.Bool(), true
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return v.Int(), true
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return v.Uint(), true
	case reflect.Float32, reflect.Float64:
		return v.Float(), true
	}
	return nil, false // funcs, channels: nothing a config file holds
}

// redactFields adds the fields of struct v to out under their YAML names,
// skipping unexported fields and those tagged yaml:"-".
func redactFields(v reflect.Value, out map[string]any) {
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		name, inline, ok := yamlKey(f)
		switch {
		case !ok:
		case inline:
			if fv := reflect.Indirect(v.Field(i)); fv.Kind() == reflect.Struct {
				redactFields(fv, out)
			}
		default:
			if x, ok := redact(v.Field(i), f.Tag.Get("redact")); ok {
				out[name] = x
			}
		}
	}
}

// secretHeaderWords are the parts of a header name that make its value a
// credential, compared without case: Authorization, Proxy-Authorization,
// Cookie, Set-Cookie, X-Api-Key, X-Auth-Token, X-Client-Secret, ….
var secretHeaderWords = []string{"auth", "cookie", "token", "secret", "key", "password", "passwd", "credential", "session", "signature"}

// isSecretHeader reports whether a header named name carries a credential.
func isSecretHeader(name string) bool {
	name = strings.ToLower(name)
	for _, w := range secretHeaderWords {
		if strings.Contains(name, w) {
			return true
		}
	}
	return false
}
