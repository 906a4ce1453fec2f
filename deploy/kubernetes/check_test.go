package kubernetes

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/wsgate/wsgate/config"
)

// want is what one kustomization must be, beyond what every one must be.
type want struct {
	dir     string
	edge    bool   // a LoadBalancer Service, a PodDisruptionBudget, 2+ replicas, scrape annotations
	tls     bool   // an HTTPS listener whose files come from a mounted Secret
	sidecar string // "native" (an init container with restartPolicy Always) or "classic"
}

// kustomizations lists every kustomization under this directory;
// TestEveryKustomizationIsChecked keeps it complete.
var kustomizations = []want{
	{dir: "edge", edge: true},
	{dir: "edge/base", edge: true},
	{dir: "edge/overlays/tls", edge: true, tls: true},
	{dir: "sidecar", sidecar: "native"},
	{dir: "sidecar-classic", sidecar: "classic"},
}

// The image's fixed facts (the Dockerfile): the user wsgate runs as,
// and how long the admin listener may take to close after the drain
// (cmd/wsgate: the admin listener goes last, with 2 s to finish).
const (
	wsgateUser = 65532
	adminStop  = 2 * time.Second
)

// problems collects what is wrong with one kustomization.
type problems []string

func (p *problems) add(format string, args ...any) {
	*p = append(*p, fmt.Sprintf(format, args...))
}

// gate is a container that runs wsgate, with its config loaded the way
// the container would load it.
type gate struct {
	c      *corev1.Container
	init   bool // in initContainers
	cfg    *config.Config
	local  map[string]string // mountPath → the directory standing for it here
	secret map[string]bool   // local directories of Secret volumes
	cmName string            // the ConfigMap holding the config
}

// podOf is one workload's pod template and where it comes from.
type podOf struct {
	name   string
	d      *appsv1.Deployment
	spec   *corev1.PodSpec
	gates  []*gate
	byName map[string]*gate
}

// check returns every problem of a rendered kustomization. tmp is an
// empty directory for the files of the mounted volumes.
func check(tmp string, r *rendered, w want) problems {
	var p problems
	var pods []*podOf
	for _, d := range r.deployments {
		pd := &podOf{name: "Deployment " + d.Name, d: d, spec: &d.Spec.Template.Spec, byName: map[string]*gate{}}
		pods = append(pods, pd)
		checkDeployment(&p, d, w)
		for i := range pd.spec.InitContainers {
			if g := loadGate(&p, tmp, r, pd, &pd.spec.InitContainers[i], true); g != nil {
				pd.gates = append(pd.gates, g)
				pd.byName[g.c.Name] = g
			}
		}
		for i := range pd.spec.Containers {
			if g := loadGate(&p, tmp, r, pd, &pd.spec.Containers[i], false); g != nil {
				pd.gates = append(pd.gates, g)
				pd.byName[g.c.Name] = g
			}
		}
		checkVolumes(&p, r, pd)
		checkSecurity(&p, pd)
		checkPorts(&p, pd)
		checkProbes(&p, pd)
		checkShutdown(&p, pd)
		checkShape(&p, pd, w)
		checkTLS(&p, pd, w)
	}
	if len(pods) == 0 {
		p.add("no Deployment")
	}
	checkServices(&p, r, pods, w)
	checkPDBs(&p, r, pods, w)
	return p
}

func checkDeployment(p *problems, d *appsv1.Deployment, w want) {
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		p.add("Deployment %s: spec.selector %v does not select its own pod template's labels %v", d.Name, d.Spec.Selector, d.Spec.Template.Labels)
	}
	replicas := int32(1)
	if d.Spec.Replicas != nil {
		replicas = *d.Spec.Replicas
	}
	if w.edge && replicas < 2 {
		p.add("Deployment %s: replicas %d: the edge needs 2 or more, so that one can drain while another serves", d.Name, replicas)
	}
	if ru := d.Spec.Strategy.RollingUpdate; d.Spec.Strategy.Type == appsv1.RecreateDeploymentStrategyType ||
		ru == nil || ru.MaxUnavailable == nil || ru.MaxUnavailable.String() != "0" && ru.MaxUnavailable.String() != "0%" {
		p.add("Deployment %s: the rolling update must keep every pod until its replacement is ready (strategy.rollingUpdate.maxUnavailable: 0)", d.Name)
	}
}

// isWsgate reports whether a container runs wsgate's image.
func isWsgate(c *corev1.Container) bool {
	repo := c.Image
	if i := strings.LastIndexAny(repo, ":@"); i > strings.LastIndexByte(repo, '/') {
		repo = repo[:i]
	}
	return repo == "wsgate" || strings.HasSuffix(repo, "/wsgate")
}

// configArg returns the value of -config in the container's command
// line, as wsgate's flag package reads it.
func configArg(c *corev1.Container) string {
	args := append(slices.Clone(c.Command), c.Args...)
	for i, a := range args {
		switch {
		case (a == "-config" || a == "--config") && i+1 < len(args):
			return args[i+1]
		case strings.HasPrefix(a, "-config="), strings.HasPrefix(a, "--config="):
			_, v, _ := strings.Cut(a, "=")
			return v
		}
	}
	return ""
}

// loadGate lays out the container's volumes in tmp, points the config's
// absolute paths there, sets the environment the container would have,
// and loads the config with wsgate's own loader. It returns nil for a
// container that does not run wsgate, or whose config does not load.
func loadGate(p *problems, tmp string, r *rendered, pd *podOf, c *corev1.Container, init bool) *gate {
	if !isWsgate(c) {
		return nil
	}
	where := fmt.Sprintf("%s: container %s", pd.name, c.Name)
	path := configArg(c)
	if path == "" || !filepath.IsAbs(path) {
		p.add("%s: want args -config /ABSOLUTE/PATH, got %q", where, append(slices.Clone(c.Command), c.Args...))
		return nil
	}
	g := &gate{c: c, init: init, local: map[string]string{}, secret: map[string]bool{}}
	var configMount *corev1.VolumeMount
	for i := range c.VolumeMounts {
		m := &c.VolumeMounts[i]
		if m.MountPath == filepath.Dir(path) {
			configMount = m
		}
		if m.SubPath != "" || m.SubPathExpr != "" {
			continue // reported by checkVolumes; nothing to lay out
		}
		dir := filepath.Join(tmp, c.Name, m.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			p.add("%s: %v", where, err)
			return nil
		}
		g.local[m.MountPath] = dir
		vol := volume(pd.spec, m.Name)
		switch {
		case vol == nil:
			p.add("%s: volumeMount %q names no volume of the pod", where, m.Name)
		case vol.ConfigMap != nil:
			cm := r.configMaps[vol.ConfigMap.Name]
			if cm == nil {
				continue // reported by checkVolumes
			}
			if err := layOut(dir, cm.Data, vol.ConfigMap.Items); err != nil {
				p.add("%s: %v", where, err)
			}
			if configMount == m {
				g.cmName = cm.Name
			}
		case vol.Secret != nil:
			g.secret[dir] = true
			data := map[string]string{}
			if s := r.secrets[vol.Secret.SecretName]; s != nil {
				for k, v := range s.Data {
					data[k] = string(v)
				}
				for k, v := range s.StringData {
					data[k] = v
				}
			} else {
				// A Secret the kustomization does not hold is created
				// by hand or by cert-manager as type kubernetes.io/tls:
				// stand in a fresh pair under its two keys.
				crt, key := testPair()
				data[corev1.TLSCertKey], data[corev1.TLSPrivateKeyKey] = crt, key
			}
			if err := layOut(dir, data, vol.Secret.Items); err != nil {
				p.add("%s: %v", where, err)
			}
		}
	}
	if configMount == nil || configMount.SubPath != "" {
		p.add("%s: the config %s must be in a ConfigMap volume mounted as the directory %s (no subPath)", where, path, filepath.Dir(path))
		return nil
	}
	if v := volume(pd.spec, configMount.Name); v == nil || v.ConfigMap == nil {
		p.add("%s: the config's directory %s is not a ConfigMap volume", where, configMount.MountPath)
		return nil
	}
	localPath := filepath.Join(g.local[configMount.MountPath], filepath.Base(path))
	text, err := os.ReadFile(localPath)
	if err != nil {
		p.add("%s: the config %s is not in its ConfigMap: %v", where, path, err)
		return nil
	}

	// Absolute paths of the pod, longest first, become the directories
	// standing for them.
	mountPaths := make([]string, 0, len(g.local))
	for mp := range g.local {
		mountPaths = append(mountPaths, mp)
	}
	slices.SortFunc(mountPaths, func(a, b string) int { return len(b) - len(a) })
	s := string(text)
	for _, mp := range mountPaths {
		s = strings.ReplaceAll(s, mp+"/", g.local[mp]+"/")
	}
	if err := os.WriteFile(localPath, []byte(s), 0o644); err != nil {
		p.add("%s: %v", where, err)
		return nil
	}

	env, err := containerEnv(r, c)
	if err != nil {
		p.add("%s: %v", where, err)
	}
	var cfg *config.Config
	withEnv(env, referencedVars(s), func() { cfg, err = config.Load(localPath) })
	if err != nil {
		msg := strings.ReplaceAll(err.Error(), localPath, path)
		p.add("%s: %s does not load:\n%s", where, path, msg)
		return nil
	}
	for _, w := range cfg.Warnings {
		if slices.ContainsFunc(knownWarnings, func(k string) bool { return strings.Contains(w.Error(), k) }) {
			continue
		}
		p.add("%s: %s: warning: %s", where, path, strings.ReplaceAll(w.Error(), localPath, path))
	}
	g.cfg = cfg
	return g
}

// knownWarnings are the warnings of wsgate validate that the manifests
// answer otherwise: the admin listener must take the pod IP for the
// kubelet's probes (the token guards it; docs/kubernetes.md shows a
// NetworkPolicy), and checkShutdown checks the grace period itself.
var knownWarnings = []string{
	"is not a loopback address: the admin API",
	"Kubernetes' default terminationGracePeriodSeconds",
}

// layOut writes a ConfigMap's or Secret's keys into dir as the kubelet
// does: every key, or only the listed items under their paths.
func layOut(dir string, data map[string]string, items []corev1.KeyToPath) error {
	files := map[string]string{}
	if len(items) == 0 {
		for k, v := range data {
			files[k] = v
		}
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			return fmt.Errorf("volume item %q: no such key", it.Key)
		}
		files[it.Path] = v
	}
	for name, v := range files {
		f := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(f, []byte(v), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func volume(spec *corev1.PodSpec, name string) *corev1.Volume {
	for i := range spec.Volumes {
		if spec.Volumes[i].Name == name {
			return &spec.Volumes[i]
		}
	}
	return nil
}

// containerEnv is the environment the container gets from its env list.
// A Secret's value is a fresh random token (the Secret is made by hand);
// a ConfigMap's comes from the kustomization; downward-API values get a
// placeholder.
func containerEnv(r *rendered, c *corev1.Container) (map[string]string, error) {
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.SecretKeyRef != nil:
			var b [16]byte
			_, _ = rand.Read(b[:])
			env[e.Name] = hex.EncodeToString(b[:])
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			cm := r.configMaps[ref.Name]
			if cm == nil {
				return env, fmt.Errorf("env %s: ConfigMap %q is not in the kustomization", e.Name, ref.Name)
			}
			v, ok := cm.Data[ref.Key]
			if !ok {
				return env, fmt.Errorf("env %s: ConfigMap %q has no key %q", e.Name, ref.Name, ref.Key)
			}
			env[e.Name] = v
		default:
			env[e.Name] = "1" // resourceFieldRef, fieldRef
		}
	}
	return env, nil
}

var varRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)`)

// referencedVars returns the names the config expands.
func referencedVars(text string) []string {
	var names []string
	for _, m := range varRef.FindAllStringSubmatch(text, -1) {
		names = append(names, m[1])
	}
	return names
}

// withEnv runs fn with exactly env for the names the config refers to:
// a variable of this process that the container does not set is unset,
// so that the test's own environment cannot hide a missing one.
func withEnv(env map[string]string, names []string, fn func()) {
	type saved struct {
		v  string
		ok bool
	}
	old := map[string]saved{}
	for _, n := range append(slices.Collect(mapKeys(env)), names...) {
		if _, done := old[n]; done {
			continue
		}
		v, ok := os.LookupEnv(n)
		old[n] = saved{v, ok}
		if nv, set := env[n]; set {
			os.Setenv(n, nv)
		} else {
			os.Unsetenv(n)
		}
	}
	defer func() {
		for n, s := range old {
			if s.ok {
				os.Setenv(n, s.v)
			} else {
				os.Unsetenv(n)
			}
		}
	}()
	fn()
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

var testPair = sync.OnceValues(func() (string, string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "wsgate.test"},
		DNSNames:     []string{"wsgate.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		panic(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
})

// kustomizeHash matches the suffix a configMapGenerator adds to a name.
var kustomizeHash = regexp.MustCompile(`-[2456789bcdfghkmt]{10}$`)

func checkVolumes(p *problems, r *rendered, pd *podOf) {
	for _, v := range pd.spec.Volumes {
		if v.ConfigMap != nil && r.configMaps[v.ConfigMap.Name] == nil && (v.ConfigMap.Optional == nil || !*v.ConfigMap.Optional) {
			p.add("%s: volume %s: ConfigMap %q is not in the kustomization", pd.name, v.Name, v.ConfigMap.Name)
		}
	}
	for _, c := range allContainers(pd.spec) {
		for _, m := range c.VolumeMounts {
			v := volume(pd.spec, m.Name)
			if v != nil && (v.ConfigMap != nil || v.Secret != nil) && (m.SubPath != "" || m.SubPathExpr != "") {
				p.add("%s: container %s: volumeMount %s uses subPath: the kubelet never updates it, so wsgate cannot reload; mount the whole directory", pd.name, c.Name, m.Name)
			}
			if v != nil && (v.ConfigMap != nil || v.Secret != nil) && !m.ReadOnly {
				p.add("%s: container %s: volumeMount %s should be readOnly", pd.name, c.Name, m.Name)
			}
		}
	}
	for _, g := range pd.gates {
		if g.cfg != nil && g.cfg.Admin != nil && kustomizeHash.MatchString(g.cmName) {
			p.add("%s: container %s: the config's ConfigMap %q has a hash suffix, so each edit is a rolling restart instead of a reload (configMapGenerator options: disableNameSuffixHash: true)", pd.name, g.c.Name, g.cmName)
		}
	}
}

// allContainers returns the init containers, then the containers.
func allContainers(spec *corev1.PodSpec) []*corev1.Container {
	var cs []*corev1.Container
	for i := range spec.InitContainers {
		cs = append(cs, &spec.InitContainers[i])
	}
	for i := range spec.Containers {
		cs = append(cs, &spec.Containers[i])
	}
	return cs
}

func isSidecar(c *corev1.Container) bool {
	return c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
}

// checkSecurity wants every container non-root, read-only, without
// privileges, capabilities or more system calls than the runtime's
// default; and with resources.
func checkSecurity(p *problems, pd *podOf) {
	ps := pd.spec.SecurityContext
	if ps == nil {
		ps = &corev1.PodSecurityContext{}
	}
	for _, c := range allContainers(pd.spec) {
		where := fmt.Sprintf("%s: container %s", pd.name, c.Name)
		cs := c.SecurityContext
		if cs == nil {
			cs = &corev1.SecurityContext{}
		}
		nonRoot := either(cs.RunAsNonRoot, ps.RunAsNonRoot)
		if nonRoot == nil || !*nonRoot {
			p.add("%s: securityContext.runAsNonRoot must be true", where)
		}
		if uid := either(cs.RunAsUser, ps.RunAsUser); uid == nil || *uid != wsgateUser {
			p.add("%s: securityContext.runAsUser must be %d (the image's user)", where, wsgateUser)
		}
		if cs.ReadOnlyRootFilesystem == nil || !*cs.ReadOnlyRootFilesystem {
			p.add("%s: securityContext.readOnlyRootFilesystem must be true", where)
		}
		if cs.AllowPrivilegeEscalation == nil || *cs.AllowPrivilegeEscalation {
			p.add("%s: securityContext.allowPrivilegeEscalation must be false", where)
		}
		if cs.Privileged != nil && *cs.Privileged {
			p.add("%s: securityContext.privileged must not be true", where)
		}
		if cs.Capabilities == nil || !slices.Contains(cs.Capabilities.Drop, "ALL") || len(cs.Capabilities.Add) > 0 {
			p.add("%s: securityContext.capabilities must drop ALL and add none", where)
		}
		sc := cs.SeccompProfile
		if sc == nil {
			sc = ps.SeccompProfile
		}
		if sc == nil || sc.Type != corev1.SeccompProfileTypeRuntimeDefault {
			p.add("%s: securityContext.seccompProfile.type must be RuntimeDefault", where)
		}
		req, lim := c.Resources.Requests, c.Resources.Limits
		if req.Cpu().IsZero() || req.Memory().IsZero() || lim.Memory().IsZero() {
			p.add("%s: resources want requests.cpu, requests.memory and limits.memory", where)
		}
		if isWsgate(c) {
			for _, h := range []*corev1.LifecycleHandler{preStop(c), postStart(c)} {
				if h != nil && h.Exec != nil {
					p.add("%s: an exec lifecycle hook cannot run: the image has no shell and no sleep (use lifecycle.preStop.sleep or timeouts.shutdown_delay)", where)
				}
			}
		}
	}
}

// either returns the container's value, or else the pod's.
func either[T any](container, pod *T) *T {
	if container != nil {
		return container
	}
	return pod
}

func preStop(c *corev1.Container) *corev1.LifecycleHandler {
	if c.Lifecycle == nil {
		return nil
	}
	return c.Lifecycle.PreStop
}

func postStart(c *corev1.Container) *corev1.LifecycleHandler {
	if c.Lifecycle == nil {
		return nil
	}
	return c.Lifecycle.PostStart
}

// hostPort splits a listen address into its host and port number.
func hostPort(addr string) (string, int32, bool) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, false
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return "", 0, false
	}
	return host, int32(n), true
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// isEveryInterface reports whether a host takes the pod IP too.
func isEveryInterface(host string) bool {
	return host == "" || host == "0.0.0.0" || host == "::"
}

// listenerAt returns the index of g's listener on port that the pod IP
// reaches, or -1.
func (g *gate) listenerAt(port int32) int {
	for i, l := range g.cfg.Listeners {
		if h, n, ok := hostPort(l.Addr); ok && n == port && !isLoopback(h) {
			return i
		}
	}
	return -1
}

// adminPort returns the admin listener's port, or 0.
func (g *gate) adminPort() int32 {
	if g.cfg.Admin == nil {
		return 0
	}
	_, n, _ := hostPort(g.cfg.Admin.Addr)
	return n
}

// checkPorts wants every port wsgate serves to the pod IP declared on
// its container, on every interface, and every declared port served.
func checkPorts(p *problems, pd *podOf) {
	for _, g := range pd.gates {
		if g.cfg == nil {
			continue
		}
		where := fmt.Sprintf("%s: container %s", pd.name, g.c.Name)
		declared := map[int32]bool{}
		for _, cp := range g.c.Ports {
			declared[cp.ContainerPort] = true
			if cp.Protocol != "" && cp.Protocol != corev1.ProtocolTCP {
				p.add("%s: port %d is %s; wsgate speaks TCP", where, cp.ContainerPort, cp.Protocol)
			}
		}
		served := map[int32]bool{}
		type addr struct{ key, addr string }
		addrs := []addr{}
		for i, l := range g.cfg.Listeners {
			addrs = append(addrs, addr{fmt.Sprintf("listeners[%d].addr", i), l.Addr})
		}
		if g.cfg.Admin != nil {
			addrs = append(addrs, addr{"admin.addr", g.cfg.Admin.Addr})
		}
		for _, a := range addrs {
			host, port, ok := hostPort(a.addr)
			switch {
			case !ok:
				p.add("%s: %s %q has no port", where, a.key, a.addr)
			case isLoopback(host):
				if declared[port] {
					p.add("%s: %s %q is loopback, but containerPort %d says the pod serves it", where, a.key, a.addr, port)
				}
			case !isEveryInterface(host):
				p.add("%s: %s %q: listen on every interface (%q), the pod IP is not known in advance", where, a.key, a.addr, fmt.Sprintf(":%d", port))
			case port == 0:
				p.add("%s: %s %q: port 0 picks a port that no Service or probe can know", where, a.key, a.addr)
			default:
				served[port] = true
				if !declared[port] {
					p.add("%s: %s %q: no containerPort %d", where, a.key, a.addr, port)
				}
			}
		}
		for _, cp := range g.c.Ports {
			if !served[cp.ContainerPort] {
				p.add("%s: containerPort %d (%s) is neither a listener nor the admin listener of its config", where, cp.ContainerPort, cp.Name)
			}
		}
	}
}

// probeServer says what answers a probe on port: a wsgate's admin
// listener or listener, or another container's declared port.
type probeServer struct {
	g        *gate
	admin    bool
	listener int
	other    bool
}

func (pd *podOf) serverAt(port int32) probeServer {
	for _, g := range pd.gates {
		if g.cfg == nil {
			continue
		}
		if g.adminPort() == port {
			return probeServer{g: g, admin: true}
		}
		if i := g.listenerAt(port); i >= 0 {
			return probeServer{g: g, listener: i}
		}
	}
	for _, c := range allContainers(pd.spec) {
		if isWsgate(c) {
			continue
		}
		for _, cp := range c.Ports {
			if cp.ContainerPort == port {
				return probeServer{other: true}
			}
		}
	}
	return probeServer{}
}

// resolvePort turns a probe's or Service's port into a number, the way
// the kubelet does: a name is one of the container's own ports.
func resolvePort(c *corev1.Container, port intstr.IntOrString) (int32, bool) {
	if port.Type == intstr.Int {
		return port.IntVal, port.IntVal > 0
	}
	for _, cp := range c.Ports {
		if cp.Name == port.StrVal {
			return cp.ContainerPort, true
		}
	}
	return 0, false
}

// checkProbes wants wsgate's readiness on /readyz and liveness (and
// startup) on /healthz of its admin listener, the only endpoints open
// without the token; and every other probe answered by something in the
// pod: a wsgate listener's route, or a declared port.
func checkProbes(p *problems, pd *podOf) {
	for _, c := range allContainers(pd.spec) {
		where := fmt.Sprintf("%s: container %s", pd.name, c.Name)
		g := pd.byName[c.Name]
		if g != nil && g.cfg != nil && g.cfg.Admin != nil {
			if c.ReadinessProbe == nil {
				p.add("%s: no readinessProbe on /readyz", where)
			}
			if c.LivenessProbe == nil {
				p.add("%s: no livenessProbe on /healthz", where)
			}
		}
		for _, pr := range []struct {
			kind, path string
			probe      *corev1.Probe
		}{
			{"startupProbe", "/healthz", c.StartupProbe},
			{"readinessProbe", "/readyz", c.ReadinessProbe},
			{"livenessProbe", "/healthz", c.LivenessProbe},
		} {
			if pr.probe == nil {
				continue
			}
			hg := pr.probe.HTTPGet
			if hg == nil {
				if g != nil {
					p.add("%s: %s: wsgate is probed with httpGet (the image has no shell)", where, pr.kind)
				}
				continue
			}
			port, ok := resolvePort(c, hg.Port)
			if !ok {
				p.add("%s: %s: port %s is not a port of this container", where, pr.kind, hg.Port.String())
				continue
			}
			if hg.Host != "" {
				p.add("%s: %s: host %q: probe the pod IP", where, pr.kind, hg.Host)
			}
			srv := pd.serverAt(port)
			switch {
			case srv.admin:
				if hg.Path != pr.path {
					p.add("%s: %s asks %s on wsgate's admin listener (port %d); want %s", where, pr.kind, hg.Path, port, pr.path)
				}
				if hg.Scheme != "" && hg.Scheme != corev1.URISchemeHTTP {
					p.add("%s: %s: the admin listener speaks plain HTTP", where, pr.kind)
				}
			case srv.g != nil:
				if srv.g == g {
					p.add("%s: %s probes wsgate through its own listener on port %d, which answers during shutdown too: probe the admin listener's %s", where, pr.kind, port, pr.path)
					continue
				}
				l := srv.g.cfg.Listeners[srv.listener]
				host := fmt.Sprintf("10.0.0.1:%d", port) // the kubelet's Host is the pod IP
				if srv.g.cfg.Table.Match([]byte("GET"), []byte(host), []byte(hg.Path)) == nil {
					p.add("%s: %s asks %s through container %s's listener %q, where no route matches", where, pr.kind, hg.Path, srv.g.c.Name, l.Addr)
				}
				if (l.TLS != nil) != (hg.Scheme == corev1.URISchemeHTTPS) {
					p.add("%s: %s: scheme %q does not fit listener %q", where, pr.kind, hg.Scheme, l.Addr)
				}
			case srv.other:
			default:
				p.add("%s: %s: nothing in the pod serves port %d", where, pr.kind, port)
			}
		}
	}
}

// stopBudget is how long a container takes from the pod's deletion to
// its exit: the preStop sleep, then for wsgate shutdown_delay, drain and
// the admin listener's close.
func stopBudget(pd *podOf, c *corev1.Container) time.Duration {
	var d time.Duration
	if h := preStop(c); h != nil && h.Sleep != nil {
		d += time.Duration(h.Sleep.Seconds) * time.Second
	}
	if g := pd.byName[c.Name]; g != nil && g.cfg != nil {
		d += g.cfg.Timeouts.ShutdownDelay + g.cfg.Timeouts.Drain
		if g.cfg.Admin != nil {
			d += adminStop
		}
	}
	return d
}

// servesFor is how long after the pod's deletion a container still
// serves new work: its preStop sleep, and for wsgate its shutdown_delay.
func servesFor(pd *podOf, c *corev1.Container) time.Duration {
	var d time.Duration
	if h := preStop(c); h != nil && h.Sleep != nil {
		d += time.Duration(h.Sleep.Seconds) * time.Second
	}
	if g := pd.byName[c.Name]; g != nil && g.cfg != nil {
		d += g.cfg.Timeouts.ShutdownDelay
	}
	return d
}

// checkShutdown wants terminationGracePeriodSeconds to cover the
// shutdown: the containers stop together, then the native sidecars; and
// an app that a plain wsgate container proxies to on loopback must keep
// serving until wsgate's drain is over.
func checkShutdown(p *problems, pd *podOf) {
	var main, side time.Duration
	for i := range pd.spec.Containers {
		main = max(main, stopBudget(pd, &pd.spec.Containers[i]))
	}
	for i := range pd.spec.InitContainers {
		if c := &pd.spec.InitContainers[i]; isSidecar(c) {
			side = max(side, stopBudget(pd, c))
		}
	}
	grace := time.Duration(corev1.DefaultTerminationGracePeriodSeconds) * time.Second
	if s := pd.spec.TerminationGracePeriodSeconds; s != nil {
		grace = time.Duration(*s) * time.Second
	}
	if need := main + side; grace < need {
		p.add("%s: terminationGracePeriodSeconds %v is shorter than the shutdown, %v: %v for the containers, then %v for the native sidecars (each: preStop sleep + shutdown_delay + drain + %v for the admin listener)",
			pd.name, grace.Seconds(), need, main, side, adminStop)
	}

	for _, g := range pd.gates {
		if g.cfg == nil {
			continue
		}
		for name, u := range g.cfg.Upstreams {
			for _, t := range u.Targets {
				target, err := url.Parse(t.URL)
				if err != nil || !isLoopback(target.Hostname()) {
					continue
				}
				port := target.Port()
				if port == "" {
					port = map[string]string{"http": "80", "https": "443"}[target.Scheme]
				}
				n, _ := strconv.ParseInt(port, 10, 32)
				backends := pd.loopbackServers(int32(n), g)
				if len(backends) == 0 {
					if !pd.hasOtherApp() {
						p.add("%s: container %s: upstreams.%s target %s: no container of the pod listens there", pd.name, g.c.Name, name, t.URL)
					}
					continue
				}
				if g.init {
					continue // a native sidecar stops after the app: nothing to outlive
				}
				needed := servesFor(pd, g.c) + g.cfg.Timeouts.Drain
				for _, b := range backends {
					if b.init {
						continue
					}
					if got := servesFor(pd, b.c); got < needed {
						p.add("%s: container %s stops serving %v after SIGTERM, but wsgate (container %s) proxies to it until its drain ends, %v in (preStop sleep + shutdown_delay + drain): keep the app serving that long (a preStop sleep, or its own delay)",
							pd.name, b.c.Name, got, g.c.Name, needed)
					}
				}
			}
		}
	}
}

// loopbackServers returns the wsgate containers other than g that
// listen on port on loopback or every interface.
func (pd *podOf) loopbackServers(port int32, g *gate) []*gate {
	var out []*gate
	for _, o := range pd.gates {
		if o == g || o.cfg == nil {
			continue
		}
		for _, l := range o.cfg.Listeners {
			if h, n, ok := hostPort(l.Addr); ok && n == port && (isLoopback(h) || isEveryInterface(h)) {
				out = append(out, o)
				break
			}
		}
	}
	return out
}

// hasOtherApp reports whether the pod runs a container that is not
// wsgate (whose listening addresses the test cannot know).
func (pd *podOf) hasOtherApp() bool {
	for _, c := range allContainers(pd.spec) {
		if !isWsgate(c) {
			return true
		}
	}
	return false
}

// checkShape wants wsgate where each recipe puts it: a native sidecar
// (an init container with restartPolicy Always), a plain container next
// to the app, or alone at the edge with the scrape annotations.
func checkShape(p *problems, pd *podOf, w want) {
	var proxies []*gate // wsgate with an admin listener: the one in front
	for _, g := range pd.gates {
		if g.cfg != nil && g.cfg.Admin != nil {
			proxies = append(proxies, g)
		}
	}
	for i := range pd.spec.InitContainers {
		if c := &pd.spec.InitContainers[i]; isWsgate(c) && !isSidecar(c) {
			p.add("%s: init container %s runs wsgate without restartPolicy: Always: it would have to exit before the app starts (a native sidecar needs restartPolicy: Always)", pd.name, c.Name)
		}
	}
	if len(proxies) != 1 {
		p.add("%s: want one wsgate container with an admin listener, found %d", pd.name, len(proxies))
		return
	}
	g := proxies[0]
	switch w.sidecar {
	case "native":
		if !g.init || !isSidecar(g.c) {
			p.add("%s: wsgate (container %s) must be a native sidecar: an initContainers entry with restartPolicy: Always", pd.name, g.c.Name)
		}
		if len(pd.spec.Containers) == 0 {
			p.add("%s: no app container", pd.name)
		}
	case "classic":
		if g.init {
			p.add("%s: wsgate (container %s) must be a plain container for clusters without native sidecars", pd.name, g.c.Name)
		}
		if len(pd.spec.Containers) < 2 {
			p.add("%s: want the app and wsgate as two containers", pd.name)
		}
	}
	if w.edge {
		if g.init || len(pd.spec.Containers) != 1 {
			p.add("%s: the edge pod runs wsgate alone", pd.name)
		}
		a := pd.d.Spec.Template.Annotations
		if a["prometheus.io/scrape"] != "true" {
			p.add("%s: annotation prometheus.io/scrape: want \"true\", got %q", pd.name, a["prometheus.io/scrape"])
		}
		if port := strconv.Itoa(int(g.adminPort())); a["prometheus.io/port"] != port {
			p.add("%s: annotation prometheus.io/port: want %q (admin.addr), got %q", pd.name, port, a["prometheus.io/port"])
		}
		if a["prometheus.io/path"] != "/metrics" {
			p.add("%s: annotation prometheus.io/path: want \"/metrics\", got %q", pd.name, a["prometheus.io/path"])
		}
		// The annotations' scrape job sends no credentials.
		if adm := g.cfg.Admin; adm != nil && adm.Token != "" && !adm.PublicMetrics {
			p.add("%s: the prometheus.io annotations scrape /metrics without credentials, and the admin token guards it: set admin.public_metrics", pd.name)
		}
	}
}

// checkTLS wants every certificate and key of an HTTPS listener in a
// mounted Secret directory, under the keys of a kubernetes.io/tls Secret.
func checkTLS(p *problems, pd *podOf, w want) {
	found := false
	for _, g := range pd.gates {
		if g.cfg == nil {
			continue
		}
		back := map[string]string{}
		for mp, dir := range g.local {
			back[dir] = mp
		}
		for i, l := range g.cfg.Listeners {
			if l.TLS == nil {
				continue
			}
			found = true
			for j, pair := range l.TLS.Certificates {
				for _, f := range []struct{ key, path, want string }{
					{"cert", pair.Cert, corev1.TLSCertKey},
					{"key", pair.Key, corev1.TLSPrivateKeyKey},
				} {
					dir := filepath.Dir(f.path)
					shown := f.path
					if mp, ok := back[dir]; ok {
						shown = filepath.Join(mp, filepath.Base(f.path))
					}
					if !g.secret[dir] || filepath.Base(f.path) != f.want {
						p.add("%s: container %s: listeners[%d].tls.certificates[%d].%s %s: want %s in a directory where a kubernetes.io/tls Secret is mounted",
							pd.name, g.c.Name, i, j, f.key, shown, f.want)
					}
				}
			}
		}
	}
	if w.tls && !found {
		p.add("%s: no HTTPS listener", pd.name)
	}
}

// checkServices wants each Service to select a Deployment's pods and to
// send to a port wsgate serves, never to the admin listener.
func checkServices(p *problems, r *rendered, pods []*podOf, w want) {
	lb := false
	for _, s := range r.services {
		where := "Service " + s.Name
		if s.Spec.Type == corev1.ServiceTypeLoadBalancer {
			lb = true
		}
		if len(s.Spec.Selector) == 0 {
			p.add("%s: no selector", where)
			continue
		}
		sel := labels.SelectorFromSet(s.Spec.Selector)
		var selected []*podOf
		for _, pd := range pods {
			if sel.Matches(labels.Set(pd.d.Spec.Template.Labels)) {
				selected = append(selected, pd)
			}
		}
		if len(selected) == 0 {
			p.add("%s: selector %v selects no Deployment's pods", where, s.Spec.Selector)
		}
		for _, pd := range selected {
			for _, sp := range s.Spec.Ports {
				port, ok := servicePort(pd.spec, sp)
				if !ok {
					p.add("%s: port %s: targetPort %s is no port of %s's pods", where, sp.Name, sp.TargetPort.String(), pd.name)
					continue
				}
				srv := pd.serverAt(port)
				switch {
				case srv.admin:
					p.add("%s: port %s sends to wsgate's admin port %d: the admin API is not for the Service", where, sp.Name, port)
				case srv.g == nil && !srv.other:
					p.add("%s: port %s: nothing in %s's pods serves port %d", where, sp.Name, pd.name, port)
				case w.tls && srv.g != nil && srv.g.cfg.Listeners[srv.listener].TLS == nil:
					p.add("%s: port %s sends to plain-HTTP listener %q", where, sp.Name, srv.g.cfg.Listeners[srv.listener].Addr)
				}
			}
		}
	}
	if w.edge && !lb {
		p.add("no Service of type LoadBalancer")
	}
	if len(r.services) == 0 {
		p.add("no Service")
	}
}

// servicePort resolves a Service port's targetPort in a pod as the
// endpoints controller does: a name is looked up in the containers, then
// in the native sidecars.
func servicePort(spec *corev1.PodSpec, sp corev1.ServicePort) (int32, bool) {
	tp := sp.TargetPort
	if tp.Type == intstr.Int {
		if tp.IntVal == 0 {
			return sp.Port, true
		}
		return tp.IntVal, true
	}
	proto := sp.Protocol
	if proto == "" {
		proto = corev1.ProtocolTCP
	}
	cs := []*corev1.Container{}
	for i := range spec.Containers {
		cs = append(cs, &spec.Containers[i])
	}
	for i := range spec.InitContainers {
		if isSidecar(&spec.InitContainers[i]) {
			cs = append(cs, &spec.InitContainers[i])
		}
	}
	for _, c := range cs {
		for _, cp := range c.Ports {
			cproto := cp.Protocol
			if cproto == "" {
				cproto = corev1.ProtocolTCP
			}
			if cp.Name == tp.StrVal && cproto == proto {
				return cp.ContainerPort, true
			}
		}
	}
	return 0, false
}

// checkPDBs wants the edge's pods under a PodDisruptionBudget that lets
// one go at a time, and every budget to select some pods.
func checkPDBs(p *problems, r *rendered, pods []*podOf, w want) {
	covered := false
	for _, b := range r.pdbs {
		where := "PodDisruptionBudget " + b.Name
		sel, err := metav1.LabelSelectorAsSelector(b.Spec.Selector)
		if err != nil || sel.Empty() {
			p.add("%s: no usable selector", where)
			continue
		}
		for _, pd := range pods {
			if !sel.Matches(labels.Set(pd.d.Spec.Template.Labels)) {
				continue
			}
			covered = true
			replicas := int32(1)
			if pd.d.Spec.Replicas != nil {
				replicas = *pd.d.Spec.Replicas
			}
			if mu := b.Spec.MaxUnavailable; mu != nil {
				if v, err := intstr.GetScaledValueFromIntOrPercent(mu, int(replicas), true); err != nil || v < 1 {
					p.add("%s: maxUnavailable %s lets no pod of %s be evicted: node drains would hang", where, mu.String(), pd.name)
				}
			}
			if ma := b.Spec.MinAvailable; ma != nil {
				if v, err := intstr.GetScaledValueFromIntOrPercent(ma, int(replicas), true); err != nil || v >= int(replicas) {
					p.add("%s: minAvailable %s lets no pod of %s be evicted: node drains would hang", where, ma.String(), pd.name)
				}
			}
		}
	}
	for _, b := range r.pdbs {
		sel, err := metav1.LabelSelectorAsSelector(b.Spec.Selector)
		if err != nil {
			continue
		}
		if !slices.ContainsFunc(pods, func(pd *podOf) bool { return sel.Matches(labels.Set(pd.d.Spec.Template.Labels)) }) {
			p.add("PodDisruptionBudget %s: selector %v selects no Deployment's pods", b.Name, b.Spec.Selector)
		}
	}
	if w.edge && !covered {
		p.add("no PodDisruptionBudget selects the edge's pods")
	}
}
