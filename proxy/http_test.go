package proxy

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/wsgate/wsgate/routes"
)

// httpClient returns a net/http client that talks to the proxy directly
// (no proxy from the environment) and closes its connections at cleanup.
func httpClient(t testing.TB) *http.Client {
	t.Helper()
	tr := &http.Transport{Proxy: nil, DisableCompression: true, MaxIdleConnsPerHost: 4}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{
		Transport: tr,
		Timeout:   2 * time.Minute,
		// Redirects are answers under test, not something to follow.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// do sends req and returns the response with its whole body.
func do(t testing.TB, c *http.Client, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", req.Method, req.URL, err)
	}
	return resp, string(b)
}

func newRequest(t testing.TB, method, url string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func TestHTTPForwardsEveryMethod(t *testing.T) {
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Method", r.Method)
		w.Header().Set("X-URI", r.RequestURI)
		w.Header().Set("Content-Length", strconv.Itoa(len("got ")+len(body)))
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, "got ")
		w.Write(body)
	}))
	p := startProxy(t, wsRoute(testUpstream(backend)))
	c := httpClient(t)

	for _, method := range []string{"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} {
		t.Run(method, func(t *testing.T) {
			resp, body := do(t, c, newRequest(t, method, "http://"+p.addr+"/a/b?x=1&y=2", strings.NewReader("payload-"+method)))
			if resp.StatusCode != http.StatusCreated {
				t.Fatalf("%s: status %d, want 201", method, resp.StatusCode)
			}
			if got := resp.Header.Get("X-Method"); got != method {
				t.Errorf("backend saw method %q, want %q", got, method)
			}
			if got := resp.Header.Get("X-URI"); got != "/a/b?x=1&y=2" {
				t.Errorf("backend saw URI %q, want %q", got, "/a/b?x=1&y=2")
			}
			if want := "got payload-" + method; body != want {
				t.Errorf("body = %q, want %q", body, want)
			}
		})
	}

	t.Run("HEAD", func(t *testing.T) {
		// A raw exchange: the HEAD answer must carry the backend's
		// Content-Length and no body bytes, so a GET right behind it on
		// the same connection parses cleanly.
		req := "HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /g HTTP/1.1\r\nHost: x\r\n\r\n"
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		head, err := http.ReadResponse(br, &http.Request{Method: "HEAD"})
		if err != nil {
			t.Fatal(err)
		}
		head.Body.Close()
		if head.StatusCode != http.StatusCreated || head.Header.Get("X-Method") != "HEAD" {
			t.Errorf("HEAD: status %d, X-Method %q; want 201 from a HEAD", head.StatusCode, head.Header.Get("X-Method"))
		}
		if got := head.Header.Get("Content-Length"); got != "4" {
			t.Errorf("HEAD: Content-Length = %q, want the backend's %q", got, "4")
		}
		get, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("GET after HEAD: %v (HEAD answer had body bytes?)", err)
		}
		b, _ := io.ReadAll(get.Body)
		if get.Header.Get("X-Method") != "GET" || string(b) != "got " {
			t.Errorf("GET after HEAD: X-Method %q body %q, want GET and %q", get.Header.Get("X-Method"), b, "got ")
		}
	})
}

// patternBlock is the repeating content of test bodies. Its length is
// prime, so a reordered or dropped buffer changes the hash.
var patternBlock = func() []byte {
	b := make([]byte, 65521)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}()

// patternReader yields n bytes of patternBlock repeated, without holding
// them in memory.
type patternReader struct{ off, n int64 }

func (r *patternReader) Read(p []byte) (int, error) {
	if r.off >= r.n {
		return 0, io.EOF
	}
	if rest := r.n - r.off; int64(len(p)) > rest {
		p = p[:rest]
	}
	n := 0
	for n < len(p) {
		n += copy(p[n:], patternBlock[(r.off+int64(n))%int64(len(patternBlock)):])
	}
	r.off += int64(n)
	return n, nil
}

var patternHashes sync.Map // int64 → string

// patternHash returns the hex SHA-256 of the first n pattern bytes.
func patternHash(n int64) string {
	if v, ok := patternHashes.Load(n); ok {
		return v.(string)
	}
	h := sha256.New()
	io.Copy(h, &patternReader{n: n})
	s := hex.EncodeToString(h.Sum(nil))
	patternHashes.Store(n, s)
	return s
}

// heapWatch samples the heap in use until stopped and reports the peak
// growth over the level at the start.
type heapWatch struct {
	stop, done chan struct{}
	base, peak uint64
	hwm        int64 // VmHWM at the start, KiB
}

func watchHeap() *heapWatch {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	w := &heapWatch{stop: make(chan struct{}), done: make(chan struct{}), base: m.HeapInuse, peak: m.HeapInuse, hwm: vmHWM()}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-tick.C:
				runtime.ReadMemStats(&m)
				w.peak = max(w.peak, m.HeapInuse)
			}
		}
	}()
	return w
}

// growth stops the watch and returns the peak heap growth in bytes and
// the growth of the process's peak RSS in bytes (-1 if unknown).
func (w *heapWatch) growth() (heap uint64, rss int64) {
	close(w.stop)
	<-w.done
	rss = -1
	if w.hwm >= 0 {
		rss = (vmHWM() - w.hwm) << 10
	}
	return w.peak - w.base, rss
}

// vmHWM returns the process's peak resident set size in KiB, or -1.
func vmHWM() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return -1
			}
			return n
		}
	}
	return -1
}

// bodyBackend hashes uploads (POST /upload answers "size hash framing")
// and generates downloads (GET /download?size=N[&chunked=1]).
func bodyBackend() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/upload":
			h := sha256.New()
			n, err := io.Copy(h, r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			framing := "length"
			if len(r.TransferEncoding) > 0 {
				framing = strings.Join(r.TransferEncoding, ",")
			}
			fmt.Fprintf(w, "%d %s %s %d", n, hex.EncodeToString(h.Sum(nil)), framing, r.ContentLength)
		case "/download":
			size, _ := strconv.ParseInt(r.URL.Query().Get("size"), 10, 64)
			if r.URL.Query().Get("chunked") == "" {
				w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
			}
			io.Copy(w, &patternReader{n: size})
		default:
			http.NotFound(w, r)
		}
	})
}

func TestHTTPStreamsLargeBodies(t *testing.T) {
	const (
		size      = 256 << 20
		maxGrowth = 64 << 20
	)
	if testing.Short() {
		t.Skip("moves 1 GiB through the proxy")
	}
	backend := startBackend(t, bodyBackend())
	p := startProxy(t, wsRoute(testUpstream(backend))) // MaxRequestBody 1 GiB
	c := httpClient(t)
	want := patternHash(size)

	check := func(t *testing.T, w *heapWatch) {
		heap, rss := w.growth()
		t.Logf("peak heap growth %d MiB, peak RSS growth %d MiB for a %d MiB body", heap>>20, rss>>20, size>>20)
		if heap > maxGrowth {
			t.Errorf("peak heap growth %d MiB, want < %d MiB: the body was buffered", heap>>20, maxGrowth>>20)
		}
	}
	for _, tc := range []struct {
		name    string
		chunked bool
	}{{"content-length", false}, {"chunked", true}} {
		t.Run("upload/"+tc.name, func(t *testing.T) {
			req := newRequest(t, "POST", "http://"+p.addr+"/upload", &patternReader{n: size})
			req.ContentLength = size
			wantFraming := fmt.Sprintf("length %d", size)
			if tc.chunked {
				req.ContentLength = -1
				wantFraming = "chunked -1"
			}
			w := watchHeap()
			resp, body := do(t, c, req)
			check(t, w)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d, body %q", resp.StatusCode, body)
			}
			if wantBody := fmt.Sprintf("%d %s %s", size, want, wantFraming); body != wantBody {
				t.Errorf("backend saw %q, want %q", body, wantBody)
			}
		})
		t.Run("download/"+tc.name, func(t *testing.T) {
			url := fmt.Sprintf("http://%s/download?size=%d", p.addr, size)
			if tc.chunked {
				url += "&chunked=1"
			}
			w := watchHeap()
			resp, err := c.Do(newRequest(t, "GET", url, nil))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			h := sha256.New()
			n, err := io.Copy(h, resp.Body)
			check(t, w)
			if err != nil {
				t.Fatalf("after %d bytes: %v", n, err)
			}
			if got := hex.EncodeToString(h.Sum(nil)); n != size || got != want {
				t.Errorf("got %d bytes hash %s, want %d bytes hash %s", n, got, size, want)
			}
			chunked := len(resp.TransferEncoding) > 0
			if chunked != tc.chunked || (!chunked && resp.ContentLength != size) {
				t.Errorf("framing: Transfer-Encoding %q Content-Length %d, want chunked=%v", resp.TransferEncoding, resp.ContentLength, tc.chunked)
			}
		})
	}
}

func TestHTTPChunkedFramingPreserved(t *testing.T) {
	backend := startBackend(t, bodyBackend())
	p := startProxy(t, wsRoute(testUpstream(backend)))

	// Chunked request (three chunks, a trailer-free end) → chunked upstream.
	req := "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
		"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"
	resp, body := rawStatus(t, p.addr, req)
	sum := sha256.Sum256([]byte("hello world"))
	if want := "11 " + hex.EncodeToString(sum[:]) + " chunked -1"; resp.StatusCode != 200 || body != want {
		t.Errorf("chunked upload: status %d, backend saw %q; want 200 and %q", resp.StatusCode, body, want)
	}

	// Chunked response (no Content-Length) → chunked to the client.
	resps, bodies, _ := rawExchange(t, p.addr, "GET /download?size=100000&chunked=1 HTTP/1.1\r\nHost: x\r\n\r\n", 1)
	if te := resps[0].TransferEncoding; len(te) != 1 || te[0] != "chunked" || resps[0].ContentLength != -1 {
		t.Errorf("chunked download: Transfer-Encoding %q, Content-Length %d; want chunked, none", te, resps[0].ContentLength)
	}
	if sum := sha256.Sum256([]byte(bodies[0])); len(bodies[0]) != 100000 || hex.EncodeToString(sum[:]) != patternHash(100000) {
		t.Errorf("chunked download: %d bytes with the wrong content", len(bodies[0]))
	}
}

func TestHTTPServerSentEventsOutliveWriteTimeout(t *testing.T) {
	const (
		writeTimeout = 300 * time.Millisecond
		every        = 200 * time.Millisecond
		events       = 8 // ~1.5 s: five times the write timeout
	)
	received := make(chan int, events)
	backendErr := make(chan error, 1)
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fl := w.(http.Flusher)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for i := range events {
			fmt.Fprintf(w, "id: %d\ndata: event %d\n\n", i, i)
			fl.Flush()
			// The next event waits for the client to have this one: an
			// event held back by the proxy fails here, not by timing.
			select {
			case got := <-received:
				if got != i {
					backendErr <- fmt.Errorf("client received event %d, want %d", got, i)
					return
				}
			case <-time.After(10 * time.Second):
				backendErr <- fmt.Errorf("event %d not received before event %d was due", i, i+1)
				return
			case <-r.Context().Done():
				return
			}
			if i < events-1 {
				<-tick.C
			}
		}
		backendErr <- nil
	}))
	p := startProxyWith(t, proxySetup{Server: ServerOptions{WriteTimeout: writeTimeout}}, wsRoute(testUpstream(backend)))

	start := time.Now()
	resp, err := httpClient(t).Get("http://" + p.addr + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("Content-Type = %q, want text/event-stream", ct)
	}
	br := bufio.NewReader(resp.Body)
	for i := range events {
		var data string
		for range 10 { // one event: a few lines, then a blank one
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("event %d after %v: %v", i, time.Since(start), err)
			}
			if line == "\n" {
				break
			}
			if v, ok := strings.CutPrefix(line, "data: "); ok {
				data = strings.TrimSpace(v)
			}
		}
		if want := fmt.Sprintf("event %d", i); data != want {
			t.Fatalf("event %d: data %q, want %q", i, data, want)
		}
		received <- i
	}
	if err := <-backendErr; err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		t.Errorf("after the last event: %q, %v; want a clean end", rest, err)
	}
	if d := time.Since(start); d < 3*writeTimeout {
		t.Errorf("stream lasted %v, want well past the %v write timeout", d, writeTimeout)
	}
}

func TestHTTPUpstreamRefused(t *testing.T) {
	p := startProxy(t, wsRoute(testUpstream(closedPort(t))))
	resp, body := do(t, httpClient(t), newRequest(t, "GET", "http://"+p.addr+"/", nil))
	// 502, not the 504 of a connect or response timeout: the refusal
	// itself was seen.
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("status %d, want 502", resp.StatusCode)
	}
	if len(body) > 64 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Errorf("body %q (%s), want a short plain text", body, resp.Header.Get("Content-Type"))
	}
}

func TestHTTPSkipsRefusedTarget(t *testing.T) {
	good := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	p := startProxy(t, wsRoute(testUpstream(closedPort(t), good)))
	c := httpClient(t)
	for i := range 6 { // round-robin starts on each target three times
		for _, method := range []string{"GET", "POST"} {
			resp, body := do(t, c, newRequest(t, method, "http://"+p.addr+"/", strings.NewReader("x")))
			if resp.StatusCode != 200 || body != "ok" {
				t.Fatalf("request %d %s: status %d body %q, want 200 from the second target", i, method, resp.StatusCode, body)
			}
		}
	}
}

// headOnlyBackend reads request heads and never answers; it returns the
// number of connections and of requests it has seen.
func headOnlyBackend(t *testing.T) (string, *atomic.Int64, *atomic.Int64) {
	var requests atomic.Int64
	addr, accepted := startTCPBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			if _, err := readRequestHead(br); err != nil {
				return
			}
			requests.Add(1)
		}
	})
	return addr, accepted, &requests
}

func TestHTTPResponseTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	for _, method := range []string{"GET", "HEAD", "PUT", "DELETE", "POST"} {
		t.Run(method, func(t *testing.T) {
			addr, accepted, requests := headOnlyBackend(t)
			up := testUpstream(addr)
			up.ResponseTimeout = timeout
			p := startProxy(t, wsRoute(up))

			start := time.Now()
			resp, _ := do(t, httpClient(t), newRequest(t, method, "http://"+p.addr+"/slow", nil))
			d := time.Since(start)
			if resp.StatusCode != http.StatusGatewayTimeout {
				t.Errorf("status %d, want 504", resp.StatusCode)
			}
			if d < timeout {
				t.Errorf("504 after %v, before the %v response timeout", d, timeout)
			}
			if n, r := accepted.Load(), requests.Load(); n != 1 || r != 1 {
				t.Errorf("backend saw %d connections and %d requests in %v, want one attempt", n, r, d)
			}
		})
	}
}

func TestHTTPUploadToStalledBackend(t *testing.T) {
	// The backend takes the head and never reads the body: once the
	// socket buffers fill, the upload stalls. That silence is bounded by
	// the response timeout too.
	const timeout = 300 * time.Millisecond
	stop := make(chan struct{})
	addr, accepted := startTCPBackend(t, func(c net.Conn) {
		if _, err := readRequestHead(bufio.NewReader(c)); err == nil {
			<-stop
		}
	})
	t.Cleanup(func() { close(stop) }) // runs before the backend's cleanup
	up := testUpstream(addr)
	up.ResponseTimeout = timeout
	p := startProxy(t, wsRoute(up))

	const size = 256 << 20 // far more than loopback socket buffers hold
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { c.Close(); <-done })
	go func() {
		defer close(done)
		if _, err := fmt.Fprintf(c, "PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", size); err == nil {
			io.Copy(c, &patternReader{n: size})
		}
	}()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer while the upload was stalled: %v", err)
	}
	if resp.StatusCode != http.StatusGatewayTimeout || !resp.Close {
		t.Errorf("status %d close %v, want 504 and Connection: close", resp.StatusCode, resp.Close)
	}
	if n := accepted.Load(); n != 1 {
		t.Errorf("backend saw %d connections, want 1", n)
	}
}

func TestHTTPGarbageResponse(t *testing.T) {
	addr, accepted := startTCPBackend(t, func(c net.Conn) {
		if _, err := readRequestHead(bufio.NewReader(c)); err == nil {
			io.WriteString(c, "HELLO\r\n\r\n")
		}
	})
	p := startProxy(t, wsRoute(testUpstream(addr)))
	resp, body := do(t, httpClient(t), newRequest(t, "GET", "http://"+p.addr+"/", nil))
	if resp.StatusCode != http.StatusBadGateway || strings.Contains(body, "HELLO") {
		t.Errorf("status %d body %q, want 502 without the garbage", resp.StatusCode, body)
	}
	if n := accepted.Load(); n != 1 {
		t.Errorf("backend saw %d connections, want 1", n)
	}
}

func TestHTTPTruncatedUpstreamBody(t *testing.T) {
	// A small body of known length is read before answering, so its
	// truncation is a 502 and nothing of it reaches the client.
	t.Run("small content-length", func(t *testing.T) {
		addr, _ := startTCPBackend(t, func(c net.Conn) {
			if _, err := readRequestHead(bufio.NewReader(c)); err == nil {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
			}
		})
		p := startProxy(t, wsRoute(testUpstream(addr)))
		resp, body := do(t, httpClient(t), newRequest(t, "GET", "http://"+p.addr+"/", nil))
		if resp.StatusCode != http.StatusBadGateway || strings.Contains(body, "0123456789") {
			t.Errorf("status %d body %q, want 502 without the partial body", resp.StatusCode, body)
		}
	})
	// Longer and chunked bodies stream: the truncation shows as a broken
	// response after the bytes that came.
	for _, tc := range []struct{ name, head string }{
		{"content-length", fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", smallBody+1)},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, _ := startTCPBackend(t, func(c net.Conn) {
				if _, err := readRequestHead(bufio.NewReader(c)); err == nil {
					io.WriteString(c, tc.head+"0123456789")
				}
			})
			p := startProxy(t, wsRoute(testUpstream(addr)))
			resp, err := httpClient(t).Get("http://" + p.addr + "/")
			if err != nil {
				return // the truncation is visible as a failed exchange
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err == nil {
				t.Fatalf("status %d with a complete %d-byte body %q, want a truncated response", resp.StatusCode, len(b), b)
			}
			if string(b) != "0123456789" {
				t.Errorf("got %q before the error, want the 10 bytes sent", b)
			}
			waitFor(t, "the upstream body error in the log", 5*time.Second, func() bool {
				return strings.Contains(p.logs.String(), "upstream body error")
			})
		})
	}
}

func TestHTTPClientGoneLogged499(t *testing.T) {
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(1<<30))
		buf := make([]byte, 32<<10)
		for range (1 << 30) / len(buf) { // ends when the proxy hangs up
			if _, err := w.Write(buf); err != nil {
				return
			}
		}
	}))
	p := startProxy(t, wsRoute(testUpstream(backend)))
	_, _, c := rawExchange(t, p.addr, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n", 0)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	waitFor(t, "status=499 in the access log", 10*time.Second, func() bool {
		return strings.Contains(p.logs.String(), "status=499")
	})
}

func TestHTTPResponseIsWsgatesOwn(t *testing.T) {
	// An HTTP/1.0 backend answer without Content-Type: the client gets an
	// HTTP/1.1 status line (RFC 9110 §6.2) on a connection that stays
	// open, and no Content-Type the backend did not send.
	addr, _ := startTCPBackend(t, func(c net.Conn) {
		if _, err := readRequestHead(bufio.NewReader(c)); err == nil {
			io.WriteString(c, "HTTP/1.0 200 OK\r\nContent-Length: 2\r\nX-Backend: 1\r\n\r\nok")
		}
	})
	p := startProxy(t, wsRoute(testUpstream(addr)))
	resps, bodies, c := rawExchange(t, p.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 1)
	resp := resps[0]
	if resp.Proto != "HTTP/1.1" || resp.Close {
		t.Errorf("client got %s with close=%v, want HTTP/1.1 keep-alive", resp.Proto, resp.Close)
	}
	if ct, ok := resp.Header["Content-Type"]; ok {
		t.Errorf("client got Content-Type %q the backend did not send", ct)
	}
	if bodies[0] != "ok" || resp.Header.Get("X-Backend") != "1" {
		t.Errorf("body %q X-Backend %q, want the backend's", bodies[0], resp.Header.Get("X-Backend"))
	}
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if _, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil {
		t.Errorf("second request on the connection: %v", err)
	}
}

func TestHTTPKeepAlivePooling(t *testing.T) {
	backend, accepted := startCountingBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "hello, world\n")
	}))
	p := startProxy(t, wsRoute(testUpstream(backend)))
	c := httpClient(t)
	for i := range 50 {
		method, body := "GET", io.Reader(nil)
		if i%2 == 1 {
			method, body = "POST", strings.NewReader("data")
		}
		resp, got := do(t, c, newRequest(t, method, "http://"+p.addr+"/", body))
		if resp.StatusCode != 200 || got != "hello, world\n" {
			t.Fatalf("request %d: status %d body %q", i, resp.StatusCode, got)
		}
	}
	if n := accepted.Load(); n > 2 {
		t.Errorf("50 sequential requests used %d upstream connections, want ≤ 2", n)
	}
}

// TestHTTPPoolReusesNewestConnection: after a burst has opened several
// upstream connections, sequential requests keep using the one used last
// (LIFO, like nginx's keepalive cache) instead of cycling through all of
// them, so the others can go idle and be closed.
func TestHTTPPoolReusesNewestConnection(t *testing.T) {
	const burst = 6
	var (
		mu      sync.Mutex
		remotes []string
		arrived = make(chan struct{}, burst)
		release = make(chan struct{})
	)
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/burst" {
			arrived <- struct{}{}
			<-release
		} else {
			mu.Lock()
			remotes = append(remotes, r.RemoteAddr)
			mu.Unlock()
		}
		io.WriteString(w, "ok")
	}))
	p := startProxy(t, wsRoute(testUpstream(backend)))
	c := httpClient(t)
	errs := make(chan error, burst)
	for range burst {
		go func() {
			resp, err := c.Get("http://" + p.addr + "/burst")
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			errs <- err
		}()
	}
	for range burst { // every request holds its own upstream connection
		select {
		case <-arrived:
		case <-time.After(10 * time.Second):
			t.Fatal("the burst's requests did not all reach the backend")
		}
	}
	close(release)
	for range burst {
		if err := <-errs; err != nil {
			t.Fatalf("burst request: %v", err)
		}
	}
	for i := range 20 {
		resp, body := do(t, c, newRequest(t, "GET", "http://"+p.addr+"/seq", nil))
		if resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: status %d body %q", i, resp.StatusCode, body)
		}
	}
	seen := map[string]bool{}
	for _, r := range remotes {
		seen[r] = true
	}
	if len(remotes) != 20 || len(seen) != 1 {
		t.Errorf("20 sequential requests after a burst of %d used %d upstream connections, want 1 (the newest)", burst, len(seen))
	}
}

func TestHTTPNoRoute(t *testing.T) {
	r := wsRoute(testUpstream(closedPort(t)))
	r.PathPrefix = "/api"
	p := startProxy(t, r)
	resp, body := do(t, httpClient(t), newRequest(t, "GET", "http://"+p.addr+"/other", nil))
	if resp.StatusCode != http.StatusNotFound || body != "no route\n" {
		t.Errorf("status %d body %q, want 404 %q", resp.StatusCode, body, "no route\n")
	}
}

func TestBuiltinRespond(t *testing.T) {
	p := startProxy(t, &routes.Route{
		Name: "teapot", Path: "/tea",
		Respond:         &routes.Respond{Status: http.StatusTeapot, Body: "short and stout"},
		ResponseHeaders: routes.HeaderOps{Set: []routes.Header{{Name: "X-Brew", Value: "green"}}},
	})
	resp, body := do(t, httpClient(t), newRequest(t, "GET", "http://"+p.addr+"/tea", nil))
	if resp.StatusCode != http.StatusTeapot || body != "short and stout" {
		t.Errorf("status %d body %q, want 418 %q", resp.StatusCode, body, "short and stout")
	}
	if got := resp.Header.Get("X-Brew"); got != "green" {
		t.Errorf("X-Brew = %q, want the route's response header %q", got, "green")
	}
}

func TestBuiltinRedirect(t *testing.T) {
	for _, status := range []int{301, 302, 303, 307, 308} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			p := startProxy(t, &routes.Route{
				Name: "moved", PathPrefix: "/old",
				Redirect: &routes.Redirect{To: "https://example.com/new", Status: status},
			})
			resp, _ := do(t, httpClient(t), newRequest(t, "GET", "http://"+p.addr+"/old/x", nil))
			if resp.StatusCode != status || resp.Header.Get("Location") != "https://example.com/new" {
				t.Errorf("status %d Location %q, want %d %q", resp.StatusCode, resp.Header.Get("Location"), status, "https://example.com/new")
			}
		})
	}
}

func TestBuiltinStatic(t *testing.T) {
	root := t.TempDir()
	for name, content := range map[string]string{
		"a.txt":             "file a",
		"index.html":        "<h1>root</h1>",
		"sub/index.html":    "<h1>sub</h1>",
		"static/b.txt":      "unstripped b",
		"sub/deeper/c.json": `{"c":1}`,
	} {
		path := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := startProxy(t,
		&routes.Route{Name: "stripped", PathPrefix: "/files/", StripPrefix: true, Static: &routes.Static{Root: root},
			ResponseHeaders: routes.HeaderOps{Set: []routes.Header{{Name: "Cache-Control", Value: "no-store"}}}},
		&routes.Route{Name: "unstripped", PathPrefix: "/static", Static: &routes.Static{Root: root}},
	)
	c := httpClient(t)
	for _, tc := range []struct {
		path, body string
		status     int
	}{
		{"/files/a.txt", "file a", 200},
		{"/files/", "<h1>root</h1>", 200},
		{"/files/sub/", "<h1>sub</h1>", 200},
		{"/files/sub/deeper/c.json", `{"c":1}`, 200},
		{"/files/missing.txt", "not found\n", 404},
		{"/files/sub/../a.txt", "file a", 200},                 // routed on the normalised path
		{"/files/%2e%2e/%2e%2e/etc/passwd", "no route\n", 404}, // normalised to /etc/passwd: no route
		{"/static/b.txt", "unstripped b", 200},
		{"/static/a.txt", "not found\n", 404},
	} {
		resp, body := do(t, c, newRequest(t, "GET", "http://"+p.addr+tc.path, nil))
		if resp.StatusCode != tc.status || body != tc.body {
			t.Errorf("GET %s = %d %q, want %d %q", tc.path, resp.StatusCode, body, tc.status, tc.body)
		}
		if tc.body != "no route\n" && strings.HasPrefix(tc.path, "/files/") && resp.Header.Get("Cache-Control") != "no-store" {
			t.Errorf("GET %s: Cache-Control %q, want the route's %q", tc.path, resp.Header.Get("Cache-Control"), "no-store")
		}
	}
}

func TestRouteHeaderOps(t *testing.T) {
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Seen-Set", strings.Join(r.Header.Values("X-Api-Version"), ","))
		w.Header().Set("X-Seen-Removed", strings.Join(r.Header.Values("X-Debug"), ","))
		w.Header().Set("Server", "backend/1.0")
		w.Header().Add("X-Powered-By", "php")
		w.Header().Set("X-Keep", "yes")
	}))
	r := wsRoute(testUpstream(backend))
	r.RequestHeaders = routes.HeaderOps{
		Set:    []routes.Header{{Name: "X-Api-Version", Value: "2"}},
		Remove: []string{"x-debug"},
	}
	r.ResponseHeaders = routes.HeaderOps{
		Set:    []routes.Header{{Name: "Strict-Transport-Security", Value: "max-age=60"}},
		Remove: []string{"x-powered-by"},
	}
	p := startProxy(t, r)
	req := newRequest(t, "GET", "http://"+p.addr+"/", nil)
	req.Header["X-Api-Version"] = []string{"1", "0"} // replaced: no stale line survives
	req.Header["X-Debug"] = []string{"a", "b"}
	resp, _ := do(t, httpClient(t), req)
	for name, want := range map[string]string{
		"X-Seen-Set":                "2",
		"X-Seen-Removed":            "",
		"Strict-Transport-Security": "max-age=60",
		"X-Powered-By":              "",
		"X-Keep":                    "yes",
	} {
		if got := strings.Join(resp.Header.Values(name), ","); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
}

// BenchmarkHTTPProxy measures one small request through the proxy: a
// fasthttp client → wsgate → a fasthttp backend answering 13 bytes.
func BenchmarkHTTPProxy(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	backend := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		ctx.SetBodyString("hello, world\n")
	}}
	go backend.Serve(ln)
	b.Cleanup(func() { backend.Shutdown() })

	up := testUpstream(ln.Addr().String())
	p := startProxyWith(b, proxySetup{NoAccessLog: true}, wsRoute(up))

	c := &fasthttp.HostClient{Addr: p.addr, MaxConns: 1}
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://" + p.addr + "/bench")
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Do(req, resp); err != nil {
			b.Fatal(err)
		}
		if resp.StatusCode() != 200 || len(resp.Body()) != 13 {
			b.Fatalf("status %d body %q", resp.StatusCode(), resp.Body())
		}
	}
}

// TestUpstreamPath checks the request target a backend receives: the
// client's raw path (percent-encoding kept), strip_prefix on the raw path
// or, when the prefix was encoded, on the normalised one, and a Host
// set by the route.
func TestUpstreamPath(t *testing.T) {
	seen := make(chan [2]string, 1)
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- [2]string{r.RequestURI, r.Host}
	}))
	plain := wsRoute(testUpstream(backend))
	strip := wsRoute(testUpstream(backend))
	strip.PathPrefix, strip.StripPrefix = "/api", true
	host := wsRoute(testUpstream(backend))
	host.PathPrefix = "/host"
	host.RequestHeaders.Set = []routes.Header{{Name: "Host", Value: "internal.example"}}
	p := startProxy(t, plain, strip, host)
	for _, tc := range []struct{ target, wantURI, wantHost string }{
		{"/a%20b%3Fc%23d?q=1", "/a%20b%3Fc%23d?q=1", "x"},
		{"/a%2Fb", "/a%2Fb", "x"},
		{"/api/v1/x%20y?z", "/v1/x%20y?z", "x"},
		{"/api", "/", "x"},
		{"/ap%69/v1", "/v1", "x"},
		{"/apix", "/apix", "x"},
		{"/host/p", "/host/p", "internal.example"},
	} {
		resp, _ := rawStatus(t, p.addr, "GET "+tc.target+" HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: status %d", tc.target, resp.StatusCode)
		}
		got := <-seen
		if got[0] != tc.wantURI || got[1] != tc.wantHost {
			t.Errorf("GET %s: backend saw %q Host %q, want %q Host %q", tc.target, got[0], got[1], tc.wantURI, tc.wantHost)
		}
	}
}

// stepReader returns its reads in turn, then io.EOF.
type stepReader []struct {
	b   string
	err error
}

func (r *stepReader) Read(p []byte) (int, error) {
	if len(*r) == 0 {
		return 0, io.EOF
	}
	s := (*r)[0]
	*r = (*r)[1:]
	return copy(p, s.b), s.err
}

// shortWriter takes at most max bytes per Write, without an error.
type shortWriter struct {
	strings.Builder
	max int
}

func (w *shortWriter) Write(p []byte) (int, error) {
	if len(p) > w.max {
		p = p[:w.max]
	}
	return w.Builder.Write(p)
}

func TestCopyBody(t *testing.T) {
	boom := fmt.Errorf("boom")
	for _, tc := range []struct {
		name    string
		r       stepReader
		max     int
		want    string
		wantErr error
	}{
		{"bytes with EOF", stepReader{{"ab", nil}, {"cd", io.EOF}}, 100, "abcd", nil},
		{"empty reads", stepReader{{"", nil}, {"ab", nil}, {"", nil}}, 100, "ab", nil},
		{"read error after bytes", stepReader{{"ab", nil}, {"cd", boom}}, 100, "abcd", boom},
		{"short write", stepReader{{"abcd", nil}}, 3, "abc", io.ErrShortWrite},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &shortWriter{max: tc.max}
			n, err := copyBody(w, &tc.r)
			if err != tc.wantErr || w.String() != tc.want || n != int64(len(tc.want)) {
				t.Errorf("copyBody = %d, %v; wrote %q; want %d, %v, %q", n, err, w.String(), len(tc.want), tc.wantErr, tc.want)
			}
		})
	}
}

// TestBodiesWriteThemselves: fasthttp hands streamed bodies of both
// directions to their WriteTo (its own copy of a known-length body goes
// through net.TCPConn.ReadFrom, around rawTCPConn's raw writes).
func TestBodiesWriteThemselves(t *testing.T) {
	for _, b := range []any{&responseBody{}, &requestBody{}} {
		if bwt, ok := b.(fasthttp.BodyWriterTo); !ok || !bwt.SupportsBodyWriteTo() {
			t.Errorf("%T is not a fasthttp.BodyWriterTo", b)
		}
	}
}
