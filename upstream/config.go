package upstream

import (
	"crypto/tls"
	"net"
	"time"
)

// Config is the compiled configuration of one upstream. The config
// package builds it; it is immutable once a [Set] uses it.
type Config struct {
	// Name is the key of the upstream in the YAML upstreams map.
	Name string
	// Targets are the backend servers, in file order.
	Targets []TargetConfig
	// TLS is the client configuration for https targets; nil when every
	// target is plain http.
	TLS *tls.Config
	// ConnectTimeout bounds the TCP connect to a target.
	ConnectTimeout time.Duration
	// ResponseTimeout bounds the wait for the response head, and each
	// later silence while reading the response body.
	ResponseTimeout time.Duration
	// MaxConnections caps pooled HTTP connections per target.
	MaxConnections int
}

// TargetConfig is one backend server as written in the config.
type TargetConfig struct {
	// Scheme is "http" or "https".
	Scheme string
	// Host is the lower-case host name or IP address, without brackets.
	Host string
	// Port is the port, with the scheme's default filled in.
	Port string
}

// Addr returns host:port.
func (c TargetConfig) Addr() string { return net.JoinHostPort(c.Host, c.Port) }

// URL returns scheme://host:port, the target's identity.
func (c TargetConfig) URL() string { return c.Scheme + "://" + c.Addr() }
