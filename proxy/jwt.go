package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"github.com/valyala/fasthttp"

	"github.com/wsgate/wsgate/routes"
)

// jwtAuth verifies a route's JSON Web Tokens with golang-jwt (the Go
// ecosystem's standard verifier) and keys from PEM files, a JWK Set file
// or a JWK Set URL that keyfunc refreshes in the background.
type jwtAuth struct {
	cfg    *routes.JWT
	parser *jwt.Parser
	static []jwt.VerificationKey
	sets   []keyfunc.Keyfunc // the JWKS file's, the URL's
}

// newJWTAuth prepares the verification of cfg; a JWKS URL is fetched
// through h's shared fetcher for it.
func (h *Handler) newJWTAuth(cfg *routes.JWT) *jwtAuth {
	opts := []jwt.ParserOption{jwt.WithValidMethods(cfg.Algorithms), jwt.WithLeeway(cfg.Leeway)}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	a := &jwtAuth{cfg: cfg, parser: jwt.NewParser(opts...)}
	for _, k := range cfg.Keys {
		a.static = append(a.static, k)
	}
	if len(cfg.JWKS) > 0 {
		if kf, err := keyfunc.NewJWKSetJSON(cfg.JWKS); err == nil {
			a.sets = append(a.sets, kf)
		} else {
			h.log.Error("jwks unusable", "file", cfg.JWKSFile, "error", err.Error())
		}
	}
	if cfg.JWKSURL != "" {
		a.sets = append(a.sets, h.jwksFor(cfg.JWKSURL, cfg.JWKSRefresh))
	}
	return a
}

// keyfunc gives golang-jwt the keys a token may be verified with: the
// JWK Sets' key named by its kid, or else every key.
func (a *jwtAuth) keyfunc(t *jwt.Token) (any, error) {
	keys := append([]jwt.VerificationKey(nil), a.static...)
	_, hasKID := t.Header["kid"]
	for _, kf := range a.sets {
		if hasKID {
			if k, err := kf.Keyfunc(t); err == nil {
				return k, nil
			}
			continue
		}
		if set, err := kf.VerificationKeySet(context.Background()); err == nil {
			keys = append(keys, set.Keys...)
		}
	}
	if len(keys) == 0 {
		return nil, errors.New("no key to verify the token with")
	}
	return jwt.VerificationKeySet{Keys: keys}, nil
}

// jwksFetcher is one JWK Set URL, fetched in the background; it lives as
// long as some route of the current config uses it.
type jwksFetcher struct {
	kf      keyfunc.Keyfunc
	refresh time.Duration
	cancel  context.CancelFunc
	used    bool // guarded by the handler's jwksMu: a route of the last snapshot uses it
}

// jwksFor returns the fetcher of url, starting it if needed. Its first
// fetch happens in the background: until it lands, tokens that need it
// are refused (401), never let through.
func (h *Handler) jwksFor(u string, refresh time.Duration) keyfunc.Keyfunc {
	h.jwksMu.Lock()
	defer h.jwksMu.Unlock()
	if f := h.jwks[u]; f != nil && f.refresh == refresh {
		f.used = true
		return f.kf
	}
	ctx, cancel := context.WithCancel(context.Background())
	noErr := true
	log := h.log
	kf, err := keyfunc.NewDefaultOverrideCtx(ctx, []string{u}, keyfunc.Override{
		RefreshInterval:           refresh,
		HTTPTimeout:               10 * time.Second,
		NoErrorReturnFirstHTTPReq: &noErr,
		RefreshErrorHandlerFunc: func(u string) func(context.Context, error) {
			return func(_ context.Context, err error) {
				log.Warn("jwks fetch failed", "url", u, "error", err.Error())
			}
		},
	})
	if err != nil {
		// Only a malformed URL gets here; config checked it.
		log.Error("jwks unusable", "url", u, "error", err.Error())
		cancel()
		kf, _ = keyfunc.NewJWKSetJSON(json.RawMessage(`{"keys":[]}`))
	}
	if old := h.jwks[u]; old != nil {
		old.cancel()
	}
	h.jwks[u] = &jwksFetcher{kf: kf, refresh: refresh, cancel: cancel, used: true}
	return kf
}

// pruneJWKS stops the fetchers no route of the current config uses; the
// snapshot that was just made marked the ones it uses.
func (h *Handler) pruneJWKS() {
	h.jwksMu.Lock()
	defer h.jwksMu.Unlock()
	for u, f := range h.jwks {
		if !f.used {
			f.cancel()
			delete(h.jwks, u)
			continue
		}
		f.used = false
	}
}

// tokenError is why a request's token was refused.
type tokenError struct {
	reason int    // index in AuthReasons
	desc   string // for the client and the log
}

// verifyJWT checks the token of the request in ctx. On success it sets
// the claims_to_headers headers (never the client's own values of them),
// removes a token that came in the query from the URI forwarded and
// logged, and returns the token's exp (zero if it has none). On failure
// ctx holds a 401 with WWW-Authenticate (RFC 6750 §3).
func (h *Handler) verifyJWT(ctx *fasthttp.RequestCtx, sn *snapshot, r *routes.Route, a *jwtAuth) (time.Time, bool) {
	for _, ch := range a.cfg.ClaimsToHeaders {
		ctx.Request.Header.Del(ch.Header)
	}
	raw := a.token(ctx)
	var te *tokenError
	var claims jwt.MapClaims
	if raw == "" {
		te = &tokenError{authJWTMissing, "token required"}
	} else {
		claims = jwt.MapClaims{}
		if _, err := a.parser.ParseWithClaims(raw, claims, a.keyfunc); err != nil {
			te = tokenErrorOf(err)
		}
	}
	if a.cfg.FromKind == "query" {
		stripQueryArg(ctx, a.cfg.FromName)
	}
	if te != nil {
		sn.stats[r].authRejected[te.reason].Add(1)
		plainError(ctx, fasthttp.StatusUnauthorized, te.desc)
		challenge := `Bearer realm="wsgate"`
		if te.reason != authJWTMissing {
			challenge += `, error="invalid_token", error_description="` + te.desc + `"`
		}
		ctx.Response.Header.Set("WWW-Authenticate", challenge)
		return time.Time{}, false
	}
	for _, ch := range a.cfg.ClaimsToHeaders {
		if v, ok := claimString(claims[ch.Claim]); ok {
			ctx.Request.Header.Set(ch.Header, v)
		}
	}
	var exp time.Time
	if e, err := claims.GetExpirationTime(); err == nil && e != nil {
		exp = e.Time
	}
	return exp, true
}

// token returns the request's token from where the route says, "" if
// there is none.
func (a *jwtAuth) token(ctx *fasthttp.RequestCtx) string {
	switch a.cfg.FromKind {
	case "cookie":
		return string(ctx.Request.Header.Cookie(a.cfg.FromName))
	case "query":
		return string(ctx.QueryArgs().Peek(a.cfg.FromName))
	}
	v := strings.TrimSpace(string(ctx.Request.Header.Peek(a.cfg.FromName)))
	if scheme, tok, ok := strings.Cut(v, " "); ok && strings.EqualFold(scheme, "Bearer") {
		return strings.TrimSpace(tok)
	}
	if a.cfg.FromName == "Authorization" {
		return "" // another scheme: no bearer token
	}
	return v
}

// tokenErrorOf names why golang-jwt refused a token.
func tokenErrorOf(err error) *tokenError {
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return &tokenError{authJWTExpired, "token expired"}
	case errors.Is(err, jwt.ErrTokenMalformed):
		return &tokenError{authJWTInvalid, "malformed token"}
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return &tokenError{authJWTInvalid, "bad signature"}
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return &tokenError{authJWTInvalid, "no key for the token"}
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return &tokenError{authJWTInvalid, "wrong audience"}
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return &tokenError{authJWTInvalid, "wrong issuer"}
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return &tokenError{authJWTInvalid, "token not valid yet"}
	}
	return &tokenError{authJWTInvalid, "invalid token"}
}

// claimString renders a claim as a header value: strings as they are,
// numbers and booleans as JSON writes them, lists of strings joined by
// ", ", anything else as JSON.
func claimString(v any) (string, bool) {
	switch v := v.(type) {
	case nil:
		return "", false
	case string:
		return v, true
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64), true
	case bool:
		return strconv.FormatBool(v), true
	case []any:
		parts := make([]string, 0, len(v))
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				b, _ := json.Marshal(v)
				return string(b), true
			}
			parts = append(parts, s)
		}
		return strings.Join(parts, ", "), true
	}
	b, err := json.Marshal(v)
	return string(b), err == nil
}

// stripQueryArg removes every name=… element from the request's query:
// from the URI sent upstream and from the one logged. Other elements keep
// their encoding.
func stripQueryArg(ctx *fasthttp.RequestCtx, name string) {
	qs := ctx.URI().QueryString()
	if len(qs) == 0 {
		return
	}
	var out []byte
	removed := false
	for elem := range bytes.SplitSeq(qs, []byte("&")) {
		key, _, _ := bytes.Cut(elem, []byte("="))
		if k, err := url.QueryUnescape(string(key)); err == nil && k == name {
			removed = true
			continue
		}
		if len(out) > 0 {
			out = append(out, '&')
		}
		out = append(out, elem...)
	}
	if !removed {
		return
	}
	ctx.URI().SetQueryStringBytes(out)
	uri := ctx.Request.Header.RequestURI()
	if i := bytes.IndexByte(uri, '?'); i >= 0 {
		nu := append([]byte(nil), uri[:i]...)
		if len(out) > 0 {
			nu = append(append(nu, '?'), out...)
		}
		ctx.Request.Header.SetRequestURIBytes(nu)
	}
}
