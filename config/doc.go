// Package config turns a YAML file into a validated [Config] with a compiled
// [routes.Table]. It is the only package that imports gopkg.in/yaml.v3, and
// the only one that knows about file paths inside the configuration.
//
// Loading goes: read → expand ${VAR} → strict decode → defaults → validate
// (collecting every problem) → compile. [Load] and [Parse] report all
// problems at once, each as a [*FieldError] naming file, line and key path:
//
//	config.yaml:9: routes[0]: unknown key "tiemout"
//	config.yaml:14: upstreams.chat.targets[1]: unsupported scheme "htp" (want http or https)
//
// The doc comment of each field states its default; config.example.yaml at
// the root of the repository lists every key with that default.
//
// Environment variables are expanded in the raw text before YAML parsing:
// ${VAR} is the value of VAR (an error if it is unset), ${VAR:-default} is
// the default when VAR is unset or empty, and $$ is a literal $. Lines whose
// first non-blank character is # are comments and are left alone.
package config
