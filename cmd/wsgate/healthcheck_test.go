package main

import (
	"bytes"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHealthcheck(t *testing.T) {
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/healthz":
			if r.Header.Get("User-Agent") != "wsgate-healthcheck" {
				http.Error(w, "bad user agent", http.StatusBadRequest)
				return
			}
			w.Write([]byte("ok\n"))
		case "/readyz":
			http.Error(w, "draining", http.StatusServiceUnavailable)
		case "/moved":
			http.Redirect(w, r, "/healthz", http.StatusFound)
		case "/slow":
			<-block
		}
	}))
	defer srv.Close()
	defer close(block) // before srv.Close, which waits for /slow
	tls := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer tls.Close()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedURL := "http://" + closed.Addr().String() + "/healthz"
	closed.Close()

	t.Setenv(healthcheckEnv, "")
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stdout string // substring
		stderr string // substring
	}{
		{"2xx", []string{srv.URL + "/healthz"}, 0, "", ""},
		{"503", []string{srv.URL + "/readyz"}, 1, "", `503 Service Unavailable "draining\n"`},
		{"redirect is not healthy", []string{srv.URL + "/moved"}, 1, "", "302 Found"},
		{"refused", []string{closedURL}, 1, "", "connection refused"},
		{"timeout", []string{"-timeout", "100ms", srv.URL + "/slow"}, 1, "", "deadline exceeded"},
		{"https unverified", []string{tls.URL}, 1, "", "certificate"},
		{"https -insecure", []string{"-insecure", tls.URL}, 0, "", ""},
		{"two URLs", []string{srv.URL, srv.URL}, 1, "", `unexpected argument "` + srv.URL + `"`},
		{"not a URL", []string{"127.0.0.1:9901/healthz"}, 1, "", "is not an http or https URL"},
		{"ftp", []string{"ftp://127.0.0.1/"}, 1, "", "is not an http or https URL"},
		{"bad flag", []string{"-nope", srv.URL}, 1, "", "flag provided but not defined: -nope"},
		{"-h", []string{"-h"}, 0, "usage: wsgate healthcheck", ""},
		{"--help", []string{"--help"}, 0, "usage: wsgate healthcheck", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(append([]string{"healthcheck"}, tc.args...), &stdout, &stderr)
			if code != tc.code {
				t.Errorf("exit %d, want %d; stderr %q", code, tc.code, stderr.String())
			}
			if !strings.Contains(stdout.String(), tc.stdout) || (tc.stdout == "" && stdout.Len() > 0) {
				t.Errorf("stdout %q, want %q", stdout.String(), tc.stdout)
			}
			if !strings.Contains(stderr.String(), tc.stderr) || (tc.stderr == "" && stderr.Len() > 0) {
				t.Errorf("stderr %q, want %q", stderr.String(), tc.stderr)
			}
		})
	}
}

// TestHealthcheckEnv: without a URL, $WSGATE_HEALTHCHECK_URL is checked.
func TestHealthcheckEnv(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/up" {
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	for _, tc := range []struct {
		env  string
		code int
	}{
		{srv.URL + "/up", 0},
		{srv.URL + "/down", 1},
		{"not a url", 1},
	} {
		t.Setenv(healthcheckEnv, tc.env)
		var stdout, stderr bytes.Buffer
		if code := run([]string{"healthcheck"}, &stdout, &stderr); code != tc.code {
			t.Errorf("%s=%s: exit %d, want %d; stderr %q", healthcheckEnv, tc.env, code, tc.code, stderr.String())
		}
	}
}
