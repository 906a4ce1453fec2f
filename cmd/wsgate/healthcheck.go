package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"time"
)

const healthcheckUsage = `usage: wsgate healthcheck [-timeout 5s] [-insecure] [URL]

GETs URL (http or https) and exits 0 on a 2xx answer, 1 otherwise (a bad
flag or URL too: Docker reserves exit code 2), with the reason on stderr. Without URL it GETs $WSGATE_HEALTHCHECK_URL, else
the admin listener's default http://127.0.0.1:9901/healthz. It is the
image's Docker HEALTHCHECK, in an image that has no curl:

  HEALTHCHECK CMD ["/usr/local/bin/wsgate", "healthcheck"]

flags:
  -timeout D   give up after D (default 5s)
  -insecure    do not verify an https URL's certificate
`

// healthcheckEnv names the URL `wsgate healthcheck` GETs when given none.
const healthcheckEnv = "WSGATE_HEALTHCHECK_URL"

// defaultHealthcheckURL is the admin listener's /healthz at its default
// address.
const defaultHealthcheckURL = "http://127.0.0.1:9901/healthz"

// healthcheck is `wsgate healthcheck [URL]`. Every failure exits 1, a
// usage error too: Docker's HEALTHCHECK reserves 2.
func healthcheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("wsgate healthcheck", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	timeout := fs.Duration("timeout", 5*time.Second, "")
	insecure := fs.Bool("insecure", false, "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, healthcheckUsage)
			return 0
		}
		fmt.Fprintf(stderr, "wsgate healthcheck: %v\n\n%s", err, healthcheckUsage)
		return 1
	}
	target := fs.Arg(0)
	switch {
	case fs.NArg() > 1:
		fmt.Fprintf(stderr, "wsgate healthcheck: unexpected argument %q (one URL)\n\n%s", fs.Arg(1), healthcheckUsage)
		return 1
	case target != "":
	case os.Getenv(healthcheckEnv) != "":
		target = os.Getenv(healthcheckEnv)
	default:
		target = defaultHealthcheckURL
	}
	u, err := url.Parse(target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		fmt.Fprintf(stderr, "wsgate healthcheck: %q is not an http or https URL\n", target)
		return 1
	}
	if *timeout <= 0 {
		fmt.Fprintf(stderr, "wsgate healthcheck: -timeout must be positive\n")
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		fmt.Fprintf(stderr, "wsgate healthcheck: %v\n", err)
		return 1
	}
	req.Header.Set("User-Agent", "wsgate-healthcheck")
	tr := &http.Transport{
		Proxy:             nil, // a health check never goes through HTTP_PROXY
		DisableKeepAlives: true,
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: *insecure},
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{
		Transport: tr,
		// A redirect is not healthy: the URL is wrong.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}).Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "wsgate healthcheck: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		fmt.Fprintf(stderr, "wsgate healthcheck: %s: %s %q\n", u.Redacted(), resp.Status, body)
		return 1
	}
	return 0
}
