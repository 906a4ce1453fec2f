package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/wsgate/wsgate/routes"
	"github.com/wsgate/wsgate/upstream"
)

//go:generate go test -run ^TestSchemaFiles$ -update

// SchemaID is the $id of [Schema]: the schema's name, not a URL anything
// is fetched from.
const SchemaID = "https://github.com/wsgate/wsgate/config.schema.json"

// Schema returns the JSON Schema (draft 2020-12) of the config file, as
// indented JSON: every key with its type, its accepted forms (durations,
// sizes, the string-or-mapping forms of targets and balance), its fixed
// values, its default and, as its description, the doc comment of its
// field. It describes the file after ${VAR} expansion. Unknown keys are
// rejected, as [Parse] rejects them; rules that tie keys together
// (duplicate routes, an upstream a route names, files that must exist)
// are checked by [Parse] only.
//
// config.schema.json at the root of the repository is its output.
func Schema() []byte {
	out, _, err := buildSchema(schemaComments)
	if err != nil {
		panic(err) // the types are fixed: TestSchemaFiles would fail first
	}
	return out
}

// jsonSchema is one JSON Schema object, its keywords in the order the
// file shows them.
type jsonSchema struct {
	Schema               string                 `json:"$schema,omitempty"`
	ID                   string                 `json:"$id,omitempty"`
	Title                string                 `json:"title,omitempty"`
	Ref                  string                 `json:"$ref,omitempty"`
	Description          string                 `json:"description,omitempty"`
	Type                 any                    `json:"type,omitempty"` // a name or a list of names
	Enum                 []any                  `json:"enum,omitempty"`
	Default              json.RawMessage        `json:"default,omitempty"`
	Examples             []any                  `json:"examples,omitempty"`
	Pattern              string                 `json:"pattern,omitempty"`
	MinLength            *int                   `json:"minLength,omitempty"`
	MaxLength            *int                   `json:"maxLength,omitempty"`
	Minimum              *float64               `json:"minimum,omitempty"`
	Maximum              *float64               `json:"maximum,omitempty"`
	Items                *jsonSchema            `json:"items,omitempty"`
	MinItems             *int                   `json:"minItems,omitempty"`
	UniqueItems          bool                   `json:"uniqueItems,omitempty"`
	Properties           *properties            `json:"properties,omitempty"`
	PropertyNames        *jsonSchema            `json:"propertyNames,omitempty"`
	AdditionalProperties any                    `json:"additionalProperties,omitempty"` // false or a schema
	Required             []string               `json:"required,omitempty"`
	DependentRequired    map[string][]string    `json:"dependentRequired,omitempty"`
	AnyOf                []*jsonSchema          `json:"anyOf,omitempty"`
	OneOf                []*jsonSchema          `json:"oneOf,omitempty"`
	Defs                 map[string]*jsonSchema `json:"$defs,omitempty"`
}

// properties are an object's keys in struct order.
type properties struct {
	names []string
	byKey map[string]*jsonSchema
}

func (p *properties) add(name string, s *jsonSchema) {
	if p.byKey == nil {
		p.byKey = map[string]*jsonSchema{}
	}
	p.names = append(p.names, name)
	p.byKey[name] = s
}

// MarshalJSON writes the properties in the order they were added.
func (p *properties) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, name := range p.names {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(name)
		v, err := json.Marshal(p.byKey[name])
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// fieldRule is what the schema says about one key beyond its Go type and
// doc comment. Defaults come from the default values [Parse] applies;
// TestSchemaDefaults checks them against what Parse fills in.
type fieldRule struct {
	required  bool
	nullable  bool // "key:" with no value turns the block on with its defaults
	def       any  // the default as written in YAML; nil for none
	enum      []any
	pattern   string
	min, max  *float64
	minItems  *int
	maxLength *int
	items     func(*jsonSchema) // edits the schema of a list's items
	edit      func(*jsonSchema) // any other edit
}

// Patterns shared by several keys.
const (
	tokenPattern  = "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$" // RFC 9110 token: method, header and cookie names
	hostPort      = "^(\\[[^\\]]*\\]|[^:\\[\\]]*):[0-9]{1,5}$"
	httpURL       = "^[hH][tT][tT][pP][sS]?://[^/?#]+"
	targetPattern = "^[hH][tT][tT][pP][sS]?://[^/?#@]+/?$"
	absPath       = "^/"
	statusList    = "^ *([1-5]xx|[0-9]+( *- *[0-9]+)?)( *, *([1-5]xx|[0-9]+( *- *[0-9]+)?))* *$"
	// A Go duration (time.ParseDuration) that is not negative.
	durationPattern = `^\+?(0|(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+)$`
	sizePattern     = "^[0-9]+(KiB|MiB|GiB|KB|MB|GB)?$"
)

func num(f float64) *float64 { return &f }
func count(n int) *int       { return &n }
func items(pattern string) func(*jsonSchema) {
	return func(s *jsonSchema) { s.Pattern = pattern }
}

// closeCodes is the schema of a close code wsgate may send.
func closeCodes(s *jsonSchema) {
	s.AnyOf = []*jsonSchema{
		{Enum: []any{1000, 1001, 1008, 1011, 1012, 1013}},
		{Minimum: num(3000), Maximum: num(4999)},
	}
}

// stringNames returns the names of the values of a type with a String
// method, from first to last.
func stringNames[T fmt.Stringer](vs ...T) []any {
	out := make([]any, len(vs))
	for i, v := range vs {
		out[i] = v.String()
	}
	return out
}

// fieldRules are keyed by Go type and field name, as in schemaComments.
var fieldRules = map[string]fieldRule{
	"Config.Listeners":      {required: true, minItems: count(1)},
	"Config.Admin":          {nullable: true},
	"Config.TrustedProxies": {items: items(`^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$`)},

	"Admin.Addr":                        {def: defaultAdminAddr, pattern: hostPort},
	"Admin.Token":                       {pattern: "^[!-~]*$"},
	"Admin.ReadyRequiresHealthyTargets": {def: false},

	"Listener.Addr":          {required: true, pattern: hostPort},
	"Listener.Builtin":       {def: "", enum: []any{"", BuiltinDemo}},
	"Listener.ProxyProtocol": {def: false},

	"ListenerTLS.Certificates": {required: true, minItems: count(1)},
	"ListenerTLS.MinVersion":   {def: defaultMinVersion, enum: []any{"1.2", "1.3"}},
	"CertPair.Cert":            {required: true},
	"CertPair.Key":             {required: true},

	"Upstream.Targets":         {required: true, minItems: count(1)},
	"Upstream.ConnectTimeout":  {def: defaultConnectTimeout},
	"Upstream.ResponseTimeout": {def: defaultResponseTimeout},
	"Upstream.MaxConnections":  {def: defaultMaxConnections, min: num(0)},
	"Upstream.Balance":         {def: defaultPolicy},
	"Upstream.Health":          {nullable: true},
	"Upstream.Passive":         {nullable: true},
	"Upstream.Retries":         {def: defaultRetries, min: num(0), max: num(maxRetries)},
	"Upstream.TryTimeout":      {def: defaultTryTimeout},
	"Upstream.RetryBodyLimit":  {def: Size(defaultRetryBodyLimit), max: num(maxRetryBodyLimit)},
	"Upstream.Resolve":         {def: false},
	"Upstream.ResolveEvery":    {def: defaultResolveEvery},
	"Upstream.OnTargetRemoved": {def: defaultOnChange, enum: changeActions},

	"Target.URL":    {required: true, pattern: targetPattern},
	"Target.Weight": {def: 1, min: num(1), max: num(upstream.MaxWeight)},

	"Balance.Policy": {def: defaultPolicy, enum: policies},
	"Balance.Key":    {def: defaultHashKey, pattern: "^(client_ip|(header|cookie):[!#$%&'*+.^_`|~0-9A-Za-z-]+|query:.+)$"},
	"Balance.Cookie": {def: defaultStickyCookie, pattern: tokenPattern},

	"Health.Path":                {pattern: absPath},
	"Health.Interval":            {def: defaultHealthInterval},
	"Health.Timeout":             {def: defaultHealthTimeout},
	"Health.ExpectStatus":        {def: defaultExpectStatus, pattern: statusList},
	"Health.HealthyAfter":        {def: defaultHealthyAfter, min: num(1)},
	"Health.UnhealthyAfter":      {def: defaultUnhealthyAfter, min: num(1)},
	"Health.Headers":             {edit: headerNames},
	"WebSocketCheck.Path":        {required: true, pattern: absPath},
	"WebSocketCheck.Subprotocol": {pattern: tokenPattern},

	"Passive.Failures":        {def: defaultPassiveFailures, min: num(1), max: num(maxPassiveFailures)},
	"Passive.Window":          {def: defaultPassiveWindow},
	"Passive.EjectFor":        {def: defaultEjectFor},
	"Passive.MaxEjectFor":     {def: defaultMaxEjectFor},
	"Passive.MaxEjectPercent": {def: defaultMaxEjectPercent, min: num(1), max: num(100)},
	"Passive.Count5xx":        {def: false},

	"UpstreamTLS.InsecureSkipVerify": {def: false},

	"Route.Match":       {required: true},
	"Route.StripPrefix": {def: false},

	"Match.Path":       {pattern: absPath},
	"Match.PathPrefix": {pattern: absPath},
	"Match.Methods":    {items: items(tokenPattern)},

	"Headers.Set":    {edit: headerNames},
	"Headers.Remove": {items: items(tokenPattern)},

	"WebSocket.Enabled":              {def: true},
	"WebSocket.Origins":              {items: items("^[A-Za-z][A-Za-z0-9+.-]*://[^/?#@]+$")},
	"WebSocket.MaxMessageSize":       {def: Size(defaultMaxMessageSize)},
	"WebSocket.IdleTimeout":          {def: defaultIdleTimeout},
	"WebSocket.HandshakeTimeout":     {def: defaultHandshakeTimeout},
	"WebSocket.OnChange":             {def: defaultOnChange, enum: changeActions},
	"WebSocket.OnChangeCode":         {def: defaultOnChangeCode, edit: closeCodes},
	"WebSocket.OnChangeReason":       {def: defaultOnChangeReason, maxLength: count(maxCloseReason)},
	"WebSocket.Subprotocols":         {items: items(tokenPattern), edit: func(s *jsonSchema) { s.UniqueItems = true }},
	"WebSocket.RequireSubprotocol":   {def: true},
	"WebSocket.MaxSessions":          {def: 0, min: num(0)},
	"WebSocket.MaxSessionsPerIP":     {def: 0, min: num(0)},
	"WebSocket.TCPUserTimeout":       {def: defaultTCPUserTimeout},
	"WebSocket.MaxMessagesPerSecond": {def: 0, min: num(0)},
	"WebSocket.Burst":                {min: num(0)},
	"WebSocket.RateLimitAction":      {def: "close", enum: []any{"close", "drop"}},
	"WebSocket.ValidateUTF8":         {def: true},
	"Ping.Interval":                  {def: defaultPingInterval},
	"Ping.Timeout":                   {def: defaultPingTimeout},

	"JWTAuth.JWKSRefresh":       {def: defaultJWKSRefresh},
	"JWTAuth.From":              {def: "header", pattern: "^(header|(header|cookie|query):[!#$%&'*+.^_`|~0-9A-Za-z-]+)$"},
	"JWTAuth.Algorithms":        {def: jwtAlgorithms, edit: func(s *jsonSchema) { s.Items.Enum = toAny(jwtAlgorithms) }},
	"JWTAuth.Leeway":            {def: time.Duration(0)},
	"JWTAuth.ClaimsToHeaders":   {edit: func(s *jsonSchema) { s.AdditionalProperties.(*jsonSchema).Pattern = tokenPattern }},
	"JWTAuth.ExpiryGrace":       {def: time.Duration(0)},
	"JWTAuth.ExpiryCloseCode":   {def: defaultExpiryCloseCode, edit: closeCodes},
	"JWTAuth.ExpiryCloseReason": {def: defaultExpiryReason, maxLength: count(maxCloseReason)},

	"ForwardAuth.URL":                 {required: true, pattern: httpURL},
	"ForwardAuth.Timeout":             {def: defaultAuthTimeout},
	"ForwardAuth.CopyRequestHeaders":  {def: defaultCopyRequestHeaders, items: items(tokenPattern)},
	"ForwardAuth.CopyResponseHeaders": {items: items(tokenPattern)},

	"RouteLimits.RequestsPerSecondPerIP": {def: 0, min: num(0)},
	"RouteLimits.Burst":                  {min: num(0)},

	"Respond.Status":  {def: defaultRespondStatus, min: num(100), max: num(599)},
	"Redirect.To":     {required: true, edit: func(s *jsonSchema) { s.MinLength = count(1) }},
	"Redirect.Status": {def: defaultRedirectStatus, enum: []any{301, 302, 303, 307, 308}},
	"Static.Root":     {required: true, edit: func(s *jsonSchema) { s.MinLength = count(1) }},

	"Limits.HeaderBytes": {def: Size(defaultLimits.HeaderBytes)},
	"Limits.RequestBody": {def: Size(defaultLimits.RequestBody)},

	"Timeouts.RequestHeader": {def: defaultTimeouts.RequestHeader},
	"Timeouts.RequestBody":   {def: defaultTimeouts.RequestBody},
	"Timeouts.Write":         {def: defaultTimeouts.Write},
	"Timeouts.Idle":          {def: defaultTimeouts.Idle},
	"Timeouts.Drain":         {def: defaultTimeouts.Drain},
	"Timeouts.ReloadDrain":   {def: defaultTimeouts.ReloadDrain},
	"Timeouts.ShutdownDelay": {def: defaultTimeouts.ShutdownDelay},
}

var (
	policies      = stringNames(upstream.RoundRobin, upstream.LeastConn, upstream.Random, upstream.Hash, upstream.Cookie)
	changeActions = stringNames(routes.Drain, routes.Keep, routes.Close)
)

// typeRules are what the schema says about a whole mapping: which keys
// go together. Keyed by Go type name.
var typeRules = map[string]func(*jsonSchema){
	"Match":  anyRequired("path", "path_prefix"),
	"Health": anyRequired("path", "websocket"),
	"Auth":   anyRequired("forward", "jwt"),
	"JWTAuth": func(s *jsonSchema) {
		s.AnyOf = []*jsonSchema{
			{Required: []string{"keys"}, Properties: props("keys", &jsonSchema{MinItems: count(1)})},
			{Required: []string{"jwks"}, Properties: props("jwks", &jsonSchema{MinLength: count(1)})},
		}
	},
	"Route": func(s *jsonSchema) {
		for _, k := range []string{"upstream", "respond", "redirect", "static"} {
			s.OneOf = append(s.OneOf, &jsonSchema{Required: []string{k}})
		}
	},
	"WebSocketCheck": func(s *jsonSchema) { s.DependentRequired = map[string][]string{"expect": {"send"}} },
}

func anyRequired(keys ...string) func(*jsonSchema) {
	return func(s *jsonSchema) {
		for _, k := range keys {
			s.AnyOf = append(s.AnyOf, &jsonSchema{Required: []string{k}})
		}
	}
}

func props(name string, s *jsonSchema) *properties {
	p := &properties{}
	p.add(name, s)
	return p
}

func headerNames(s *jsonSchema) { s.PropertyNames = &jsonSchema{Pattern: tokenPattern} }

func toAny[T any](vs []T) []any {
	out := make([]any, len(vs))
	for i, v := range vs {
		out[i] = v
	}
	return out
}

// schemaTypeNames maps the decoded types that are not the documented
// ones to the documented ones, whose comments they take.
var schemaTypeNames = map[reflect.Type]string{
	reflect.TypeFor[document]():  "Config",
	reflect.TypeFor[rawLimits](): "Limits",
}

// Descriptions of the value types that have no struct of their own.
const (
	durationDoc = "A duration: a number with a unit (ns, us, ms, s, m, h), or several, such as \"5s\", \"1m30s\" or \"1.5h\". A bare number is not a duration, except \"0\"."
	sizeDoc     = "A size in bytes: an integer, or a string with a binary unit (KiB, MiB, GiB) or a decimal one (KB, MB, GB), such as 512, \"64KiB\" or \"1MB\"."
)

// schemaBuilder reflects the config types into schemas.
type schemaBuilder struct {
	comments     map[string]string
	defs         map[string]*jsonSchema
	undocumented []string // fields without a comment
	err          error
}

// buildSchema returns the schema with the given comments (see
// schemaComments), as indented JSON with a final newline, and the fields
// that have no comment.
func buildSchema(comments map[string]string) (_ []byte, undocumented []string, _ error) {
	b := &schemaBuilder{comments: comments, defs: map[string]*jsonSchema{}}
	root := b.object(reflect.TypeFor[document]())
	root.Schema = "https://json-schema.org/draft/2020-12/schema"
	root.ID = SchemaID
	root.Title = "wsgate configuration"
	root.Description = "The YAML config file of wsgate, a WebSocket-aware reverse proxy. A zero or absent value means the default. docs/config.md describes every key."
	root.Defs = b.defs
	if b.err != nil {
		return nil, nil, b.err
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(root); err != nil {
		return nil, nil, err
	}
	return buf.Bytes(), b.undocumented, nil
}

func (b *schemaBuilder) fail(format string, args ...any) {
	if b.err == nil {
		b.err = fmt.Errorf("config schema: "+format, args...)
	}
}

// typeName is the documented name of a struct type.
func typeName(t reflect.Type) string {
	if n, ok := schemaTypeNames[t]; ok {
		return n
	}
	return t.Name()
}

// object returns the schema of a mapping decoded into struct t: its
// keys, none other allowed.
func (b *schemaBuilder) object(t reflect.Type) *jsonSchema {
	name := typeName(t)
	s := &jsonSchema{Type: "object", Properties: &properties{}, AdditionalProperties: false}
	for i := range t.NumField() {
		f := t.Field(i)
		key, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if !f.IsExported() || key == "-" {
			continue
		}
		if key == "" {
			b.fail("%s.%s has no yaml key", name, f.Name)
			continue
		}
		id := name + "." + f.Name
		p := b.value(f.Type)
		p.Description = b.comments[id]
		if p.Description == "" {
			b.undocumented = append(b.undocumented, id)
		}
		rule := fieldRules[id]
		if rule.required {
			s.Required = append(s.Required, key)
		}
		b.apply(id, p, rule)
		s.Properties.add(key, p)
	}
	if r := typeRules[name]; r != nil {
		r(s)
	}
	return s
}

// apply puts a field's rule on its schema p.
func (b *schemaBuilder) apply(id string, p *jsonSchema, rule fieldRule) {
	if rule.def != nil {
		def, err := json.Marshal(yamlValue(rule.def))
		if err != nil {
			b.fail("%s: default: %v", id, err)
		}
		p.Default = def
	}
	p.Enum = rule.enum
	p.Pattern = rule.pattern
	p.Minimum, p.Maximum = rule.min, rule.max
	if rule.minItems != nil {
		p.MinItems = rule.minItems
	}
	p.MaxLength = rule.maxLength
	if rule.items != nil {
		rule.items(p.Items)
	}
	if rule.edit != nil {
		rule.edit(p)
	}
	if p.Type == "string" && p.Enum == nil && !rule.required {
		// "key:" with no value, as ${VAR:-} leaves it, is an empty
		// string to the loader.
		p.Type = []string{"string", "null"}
	}
	if rule.nullable {
		// "key:" with no value: the block with its defaults. The
		// description and default stay with the property.
		inner := &jsonSchema{Ref: p.Ref}
		p.Ref = ""
		p.AnyOf = []*jsonSchema{inner, {Type: "null"}}
	}
}

// value returns the schema of a value decoded into t: a $ref for a named
// type, inline for the rest.
func (b *schemaBuilder) value(t reflect.Type) *jsonSchema {
	switch t {
	case reflect.TypeFor[time.Duration]():
		return b.ref("duration", func() *jsonSchema {
			return &jsonSchema{Type: "string", Description: durationDoc, Pattern: durationPattern}
		})
	case reflect.TypeFor[Size]():
		return b.ref("size", func() *jsonSchema {
			return &jsonSchema{Type: []string{"integer", "string"}, Description: sizeDoc, Minimum: num(0), Pattern: sizePattern}
		})
	case reflect.TypeFor[Hosts]():
		return b.ref("Hosts", func() *jsonSchema {
			return &jsonSchema{Type: []string{"string", "array"}, Description: b.comments["Hosts"], Items: &jsonSchema{Type: "string"}}
		})
	case reflect.TypeFor[Target]():
		return b.ref("Target", func() *jsonSchema {
			s := b.object(t)
			s.Type = []string{"string", "object"}
			s.Pattern = targetPattern // for the string form
			s.Description = b.comments["Target"]
			return s
		})
	case reflect.TypeFor[Balance]():
		return b.ref("Balance", func() *jsonSchema {
			return &jsonSchema{Description: b.comments["Balance"], AnyOf: []*jsonSchema{
				{Type: "string", Enum: policies},
				b.object(t),
			}}
		})
	}
	switch t.Kind() {
	case reflect.Pointer:
		return b.value(t.Elem())
	case reflect.Struct:
		return b.ref(typeName(t), func() *jsonSchema {
			s := b.object(t)
			s.Description = b.comments[typeName(t)]
			return s
		})
	case reflect.Slice:
		return &jsonSchema{Type: "array", Items: b.value(t.Elem())}
	case reflect.Map:
		if t.Key().Kind() != reflect.String {
			b.fail("map key %s", t.Key())
		}
		return &jsonSchema{Type: "object", AdditionalProperties: b.value(t.Elem())}
	case reflect.String:
		return &jsonSchema{Type: "string"}
	case reflect.Bool:
		return &jsonSchema{Type: "boolean"}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return &jsonSchema{Type: "integer"}
	case reflect.Float32, reflect.Float64:
		return &jsonSchema{Type: "number"}
	}
	b.fail("no schema for type %s", t)
	return &jsonSchema{}
}

// ref returns a reference to the definition name, made by def the first
// time.
func (b *schemaBuilder) ref(name string, def func() *jsonSchema) *jsonSchema {
	if _, ok := b.defs[name]; !ok {
		b.defs[name] = nil // a type that holds itself refers to itself
		b.defs[name] = def()
	}
	return &jsonSchema{Ref: "#/$defs/" + name}
}

// yamlValue returns v as the config file writes it: durations and sizes
// as strings ("30s", "64KiB").
func yamlValue(v any) any {
	switch v := v.(type) {
	case time.Duration:
		return formatDuration(v)
	case Size:
		return formatSize(int64(v))
	}
	return v
}

// formatDuration writes d as the docs do: whole seconds under two
// minutes ("60s", "0s"), otherwise as time.Duration.String without its
// zero units ("5m", "1h", "2m30s").
func formatDuration(d time.Duration) string {
	if d < 2*time.Minute && d%time.Second == 0 {
		return fmt.Sprintf("%ds", d/time.Second) // "60s", as the docs write it
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// formatSize writes n with the largest binary unit that divides it.
func formatSize(n int64) string {
	for _, u := range slices.Backward(sizeUnits[:3]) {
		if n != 0 && n%u.bytes == 0 {
			return fmt.Sprintf("%d%s", n/u.bytes, u.suffix)
		}
	}
	return fmt.Sprint(n)
}
