// Package tls owns the server side of TLS termination: it loads
// certificate/key pairs from PEM files, picks one per handshake by SNI,
// and reloads them without a restart. [Load] returns a [Store];
// [Store.Config] is the *crypto/tls.Config handed to the listener, and
// [Store.Reload], or [Store.Prepare] and its commit, swap the certificates
// under it, so new handshakes see the new set while established
// connections are untouched. Watching the files is the caller's (wsgate's
// config reload watches them with the config).
//
// SNI selection: an exact DNS name beats a one-label wildcard
// ("*.example.com" matches "a.example.com", not "a.b.example.com" or
// "example.com"); among equals the earlier pair wins; no SNI, an IP
// address or no match gets the first pair, the default.
//
// The package imports only the standard library (crypto/tls as stdtls);
// it knows nothing about YAML, flags or fasthttp.
package tls
