package config

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"

	"github.com/wsgate/wsgate/routes"
)

// jwtAlgorithms are the signing algorithms auth.jwt accepts: the
// asymmetric ones (a proxy holding an HMAC secret could mint tokens).
var jwtAlgorithms = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// jwt checks an auth.jwt block and reads its keys: every PEM file must
// hold a public key (or a certificate) wsgate can verify with, and a JWKS
// file must be a JWK Set.
func (v *validator) jwt(path string, j *JWTAuth) *routes.JWT {
	out := &routes.JWT{Issuer: j.Issuer, Audience: j.Audience, Leeway: j.Leeway, ExpiryGrace: j.ExpiryGrace}
	if len(j.Keys) == 0 && j.JWKS == "" {
		v.atf(path, "needs keys or jwks")
	}
	for i, name := range j.Keys {
		kpath := fmt.Sprintf("%s.keys[%d]", path, i)
		j.Keys[i] = v.abs(name)
		keys, err := readPublicKeys(j.Keys[i], name)
		if err != nil {
			v.atf(kpath, "%v", err)
			continue
		}
		out.Keys = append(out.Keys, keys...)
		out.KeyFiles = append(out.KeyFiles, j.Keys[i])
	}
	if j.JWKS != "" {
		if strings.Contains(j.JWKS, "://") {
			u, err := url.Parse(j.JWKS)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				v.atf(path+".jwks", "invalid URL %q (want a file, or an http:// or https:// URL)", j.JWKS)
			}
			out.JWKSURL = j.JWKS
		} else {
			name := j.JWKS
			j.JWKS = v.abs(name)
			raw, err := readJWKS(j.JWKS, name)
			if err != nil {
				v.atf(path+".jwks", "%v", err)
			}
			out.JWKS, out.JWKSFile = raw, j.JWKS
		}
	}
	v.duration(path+".jwks_refresh", &j.JWKSRefresh, defaultJWKSRefresh)
	out.JWKSRefresh = j.JWKSRefresh
	if j.Leeway < 0 {
		v.atf(path+".leeway", "duration %q must not be negative", j.Leeway.String())
	}
	if j.ExpiryGrace < 0 {
		v.atf(path+".expiry_grace", "duration %q must not be negative", j.ExpiryGrace.String())
	}
	if j.From == "" {
		j.From = "header"
	}
	switch kind, name, _ := strings.Cut(j.From, ":"); {
	case j.From == "header":
		out.FromKind, out.FromName = "header", "Authorization"
	case (kind == "header" || kind == "cookie" || kind == "query") && name != "" && isToken(name):
		out.FromKind, out.FromName = kind, name
		if kind == "header" {
			out.FromName = http.CanonicalHeaderKey(name)
		}
	default:
		v.atf(path+".from", "invalid source %q (want header, header:NAME, cookie:NAME or query:NAME)", j.From)
	}
	if len(j.Algorithms) == 0 {
		j.Algorithms = jwtAlgorithms
	}
	for i, a := range j.Algorithms {
		if !slices.Contains(jwtAlgorithms, a) {
			v.atf(fmt.Sprintf("%s.algorithms[%d]", path, i), "unsupported algorithm %q (want one of %s)", a, strings.Join(jwtAlgorithms, ", "))
		}
	}
	out.Algorithms = j.Algorithms
	for _, claim := range slices.Sorted(maps.Keys(j.ClaimsToHeaders)) {
		h := j.ClaimsToHeaders[claim]
		if claim == "" || !isToken(h) {
			v.atf(path+".claims_to_headers."+claim, "invalid header name %q", h)
			continue
		}
		out.ClaimsToHeaders = append(out.ClaimsToHeaders, routes.ClaimHeader{Claim: claim, Header: http.CanonicalHeaderKey(h)})
	}
	v.closeCode(path+".expiry_close_code", &j.ExpiryCloseCode, defaultExpiryCloseCode,
		path+".expiry_close_reason", &j.ExpiryCloseReason, defaultExpiryReason)
	out.ExpiryCode, out.ExpiryReason = uint16(j.ExpiryCloseCode), *j.ExpiryCloseReason
	return out
}

// readPublicKeys reads the public keys of a PEM file: PUBLIC KEY, RSA
// PUBLIC KEY and CERTIFICATE blocks.
// Errors name the file as the config wrote it (shown).
func readPublicKeys(file, shown string) ([]crypto.PublicKey, error) {
	name := shown
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", name, errors.Unwrap(err))
	}
	var keys []crypto.PublicKey
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		var k crypto.PublicKey
		switch b.Type {
		case "PUBLIC KEY":
			k, err = x509.ParsePKIXPublicKey(b.Bytes)
		case "RSA PUBLIC KEY":
			k, err = x509.ParsePKCS1PublicKey(b.Bytes)
		case "CERTIFICATE":
			var c *x509.Certificate
			if c, err = x509.ParseCertificate(b.Bytes); err == nil {
				k = c.PublicKey
			}
		default:
			if strings.Contains(b.Type, "PRIVATE") {
				return nil, fmt.Errorf("%s: holds a private key; give wsgate the public key only", name)
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %s block: %v", name, b.Type, err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s: no PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE block", name)
	}
	return keys, nil
}

// readJWKS reads a JWK Set file: a JSON object with a keys array.
func readJWKS(file, shown string) ([]byte, error) {
	name := shown
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", name, errors.Unwrap(err))
	}
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("%s: not a JWK Set: %v", name, err)
	}
	if len(set.Keys) == 0 {
		return nil, fmt.Errorf("%s: a JWK Set without keys", name)
	}
	return data, nil
}
