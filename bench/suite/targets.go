//go:build linux

package main

import (
	"bytes"
	"embed"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"text/template"
	"time"
)

//go:embed templates/*.tmpl
var templatesFS embed.FS

var allTargets = []string{"wsgate", "nginx", "haproxy", "caddy", "direct"}

// baseTarget is wsgate built from another commit (run.sh --base REV), for
// an A/B comparison in one run; only -only names it.
const baseTarget = "wsgate-base"

// refs are the reference proxies the targets of issue 3 §2 compare against.
var refs = []string{"nginx", "haproxy", "caddy"}

// session is one target running in front of a fresh backend.
type session struct {
	target  string
	dir     string
	backend *proc
	bAddr   string // backend host:port
	proxy   *proc  // nil for direct
	addr    string // where the load goes: the proxy, or the backend for direct
}

// measured is the process whose CPU and memory a figure is about: the proxy,
// or for direct the backend.
func (s *session) measured() *proc {
	if s.proxy != nil {
		return s.proxy
	}
	return s.backend
}

func (s *session) logs() string {
	out := ""
	if s.proxy != nil {
		out += fmt.Sprintf("--- %s log tail (%s)\n%s\n", s.target, s.proxy.logPath, logTail(s.proxy.logPath, 30))
		if s.target == "nginx" {
			p := filepath.Join(s.dir, "nginx-error.log")
			out += fmt.Sprintf("--- nginx error_log tail (%s)\n%s\n", p, logTail(p, 30))
		}
	}
	if s.backend != nil {
		out += fmt.Sprintf("--- backend log tail (%s)\n%s\n", s.backend.logPath, logTail(s.backend.logPath, 10))
	}
	return out
}

func (s *session) stop() {
	if s.proxy != nil {
		s.proxy.stop(5 * time.Second)
	}
	if s.backend != nil {
		s.backend.stop(5 * time.Second)
	}
}

var listeningRE = regexp.MustCompile(`listening (\S+:\d+)`)

// startSession starts a fresh backend and the target in front of it, and
// waits until /healthz answers 200 through the target.
func startSession(o *options, target string, repeat int) (*session, error) {
	dir := filepath.Join(o.work, fmt.Sprintf("r%d-%s", repeat, target))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	s := &session{target: target, dir: dir}
	bl := filepath.Join(dir, "backend.log")
	// The backend writes its address to the ready file (by rename); a
	// session started again in the same dir must not read the old one.
	ready := filepath.Join(dir, "backend.ready")
	_ = os.Remove(ready)
	b, err := startProc("backend", o.loadCPU, bl, []string{"GOMAXPROCS=1"},
		filepath.Join(o.bin, "backend"), "-addr", "127.0.0.1:0", "-ready-file", ready)
	if err != nil {
		return s, err
	}
	s.backend = b
	deadline := time.Now().Add(15 * time.Second)
	for {
		if m := listeningRE.FindSubmatch(readFile(ready)); m != nil {
			s.bAddr = string(m[1])
			break
		}
		if a := strings.TrimSpace(string(readFile(ready))); a != "" {
			s.bAddr = a
			break
		}
		if b.exited() {
			return s, fmt.Errorf("backend exited before listening: %v", b.waitErr)
		}
		if time.Now().After(deadline) {
			return s, fmt.Errorf("backend printed no \"listening\" line within 15s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := waitHealthy(b, s.bAddr, 10*time.Second); err != nil {
		return s, fmt.Errorf("backend: %w", err)
	}
	if target == "direct" {
		s.addr = s.bAddr
		return s, nil
	}
	port, release, err := reservePort()
	if err != nil {
		return s, err
	}
	defer release() // the proxy listens on it, or failed to
	s.addr = fmt.Sprintf("127.0.0.1:%d", port)
	data := map[string]any{
		"Dir":               dir,
		"Listen":            s.addr,
		"Host":              "127.0.0.1",
		"Backend":           s.bAddr,
		"NoFile":            o.nofile,
		"WorkerConnections": min(20000, o.nofile),
		"MaxConn":           min(20000, (o.nofile-200)/2),
		"User":              nginxUser(),
	}
	var argv, env []string
	switch target {
	case "nginx":
		for _, d := range []string{"client_body", "proxy_temp", "fastcgi_temp", "uwsgi_temp", "scgi_temp"} {
			_ = os.MkdirAll(filepath.Join(dir, d), 0o755)
		}
		cfg := filepath.Join(dir, "nginx.conf")
		if err := render("nginx.conf.tmpl", cfg, data); err != nil {
			return s, err
		}
		// -e: the error log before the config is read; -p: prefix, so no
		// default path under /var is touched.
		argv = []string{"nginx", "-p", dir + "/", "-e", filepath.Join(dir, "nginx-error.log"), "-c", cfg}
	case "haproxy":
		cfg := filepath.Join(dir, "haproxy.cfg")
		if err := render("haproxy.cfg.tmpl", cfg, data); err != nil {
			return s, err
		}
		argv = []string{"haproxy", "-db", "-f", cfg}
	case "caddy":
		cfg := filepath.Join(dir, "Caddyfile")
		if err := render("Caddyfile.tmpl", cfg, data); err != nil {
			return s, err
		}
		argv = []string{"caddy", "run", "--config", cfg, "--adapter", "caddyfile"}
		env = []string{"GOMAXPROCS=1", "HOME=" + dir, "XDG_DATA_HOME=" + filepath.Join(dir, "data"),
			"XDG_CONFIG_HOME=" + filepath.Join(dir, "config")}
	case "wsgate", baseTarget:
		cfg := filepath.Join(dir, "wsgate.yaml")
		// The admin listener (and with it the metrics) and the
		// WebSocket policies (keepalive pings, UTF-8 check, message
		// rate) are on whenever the build knows them: a base from
		// before them rejects their keys. The newest first.
		data["Admin"], data["Policy"] = true, true
		for _, off := range []string{"Policy", "Admin", ""} {
			if err := render("wsgate.yaml.tmpl", cfg, data); err != nil {
				return s, err
			}
			if off == "" || exec.Command(filepath.Join(o.bin, target), "validate", cfg).Run() == nil {
				break
			}
			data[off] = false
		}
		argv = []string{filepath.Join(o.bin, target), "-config", cfg, "-access-log=false", "-log-level", "warn"}
		env = []string{"GOMAXPROCS=1"}
	default:
		return s, fmt.Errorf("unknown target %q", target)
	}
	p, err := startProc(target, o.proxyCPU, filepath.Join(dir, target+".log"), env, argv...)
	if err != nil {
		return s, err
	}
	s.proxy = p
	if err := waitHealthy(p, s.addr, 20*time.Second); err != nil {
		return s, fmt.Errorf("%s: %w", target, err)
	}
	return s, nil
}

// nginxUser keeps nginx's workers as the current user: a master started as
// root would otherwise switch them to "nobody".
func nginxUser() string {
	if os.Geteuid() != 0 {
		return ""
	}
	u, err := user.Current()
	if err != nil {
		return "root"
	}
	g, err := user.LookupGroupId(u.Gid)
	if err != nil {
		return u.Username
	}
	return u.Username + " " + g.Name
}

func render(name, dst string, data any) error {
	t, err := template.ParseFS(templatesFS, "templates/"+name)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, data); err != nil {
		return err
	}
	return os.WriteFile(dst, buf.Bytes(), 0o644)
}

func readFile(p string) []byte {
	b, _ := os.ReadFile(p)
	return b
}

// waitHealthy polls GET /healthz at addr until it answers 200, the process
// exits or the deadline passes.
func waitHealthy(p *proc, addr string, d time.Duration) error {
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(d)
	var last string
	for {
		if p.exited() {
			return fmt.Errorf("exited during start (%v)", p.waitErr)
		}
		resp, err := c.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
			last = "status " + strconv.Itoa(resp.StatusCode)
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("/healthz not 200 within %v (last: %s)", d, last)
		}
		time.Sleep(25 * time.Millisecond)
	}
}
