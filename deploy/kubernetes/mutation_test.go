package kubernetes

import (
	"regexp"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestChecksCatch breaks each recipe in one place and wants check to say
// so: a check that cannot fail proves nothing.
func TestChecksCatch(t *testing.T) {
	edge := func(r *rendered) *corev1.PodSpec { return &r.deployments[0].Spec.Template.Spec }
	wsgateIn := func(r *rendered) *corev1.Container { return &edge(r).Containers[0] }
	edgeConfig := func(r *rendered, from, to string) {
		cm := r.configMaps["wsgate-config"]
		s := cm.Data["wsgate.yaml"]
		if !strings.Contains(s, from) {
			t.Fatalf("%q is not in the edge config", from)
		}
		cm.Data["wsgate.yaml"] = strings.Replace(s, from, to, 1)
	}
	int32p := func(v int32) *int32 { return &v }
	boolp := func(v bool) *bool { return &v }
	int64p := func(v int64) *int64 { return &v }

	for _, tc := range []struct {
		name   string
		dir    string
		break_ func(r *rendered)
		want   string
	}{
		{"readiness on another port", "edge", func(r *rendered) {
			wsgateIn(r).ReadinessProbe.HTTPGet.Port = intstr.FromInt32(9902)
		}, "nothing in the pod serves port 9902"},
		{"readiness on a named port that is not there", "edge", func(r *rendered) {
			wsgateIn(r).ReadinessProbe.HTTPGet.Port = intstr.FromString("admn")
		}, "port admn is not a port of this container"},
		{"liveness on /readyz", "edge", func(r *rendered) {
			wsgateIn(r).LivenessProbe.HTTPGet.Path = "/readyz"
		}, "livenessProbe asks /readyz"},
		{"readiness through a route", "edge", func(r *rendered) {
			wsgateIn(r).ReadinessProbe.HTTPGet.Port = intstr.FromString("http")
		}, "through its own listener"},
		{"admin moved in the config only", "edge", func(r *rendered) {
			edgeConfig(r, `addr: ":9901"`, `addr: ":9902"`)
		}, `admin.addr ":9902": no containerPort 9902`},
		{"admin on loopback", "edge", func(r *rendered) {
			edgeConfig(r, `addr: ":9901"`, `addr: "127.0.0.1:9901"`)
		}, "is loopback, but containerPort 9901"},
		{"listener moved in the config only", "edge", func(r *rendered) {
			edgeConfig(r, `addr: ":8080"`, `addr: ":8081"`)
		}, "containerPort 8080 (http) is neither"},
		{"config with a misspelt key", "edge", func(r *rendered) {
			edgeConfig(r, "  shutdown_delay: 0s", "  shutdown_dlay: 0s")
		}, `unknown key "shutdown_dlay"`},
		{"token variable not set", "edge", func(r *rendered) {
			wsgateIn(r).Env = wsgateIn(r).Env[1:]
		}, `"WSGATE_ADMIN_TOKEN" is not set`},
		{"grace period too short", "edge", func(r *rendered) {
			edge(r).TerminationGracePeriodSeconds = int64p(30)
		}, "terminationGracePeriodSeconds 30 is shorter"},
		{"drain longer than the grace period", "edge", func(r *rendered) {
			edgeConfig(r, "drain: 30s", "drain: 40s")
		}, "terminationGracePeriodSeconds 45 is shorter"},
		{"one replica", "edge", func(r *rendered) {
			r.deployments[0].Spec.Replicas = int32p(1)
		}, "replicas 1"},
		{"PDB selects nothing", "edge", func(r *rendered) {
			r.pdbs[0].Spec.Selector.MatchLabels["app.kubernetes.io/component"] = "edg"
		}, "PodDisruptionBudget wsgate: selector"},
		{"PDB blocks every eviction", "edge", func(r *rendered) {
			zero := intstr.FromInt32(0)
			r.pdbs[0].Spec.MaxUnavailable = &zero
		}, "lets no pod"},
		{"Service selects nothing", "edge", func(r *rendered) {
			r.services[0].Spec.Selector["app.kubernetes.io/name"] = "wsgat"
		}, "selects no Deployment's pods"},
		{"Service to a port that is not there", "edge", func(r *rendered) {
			r.services[0].Spec.Ports[0].TargetPort = intstr.FromString("htp")
		}, "targetPort htp is no port"},
		{"Service to the admin port", "edge", func(r *rendered) {
			r.services[0].Spec.Ports[0].TargetPort = intstr.FromString("admin")
		}, "admin port 9901"},
		{"root", "edge", func(r *rendered) {
			wsgateIn(r).SecurityContext.RunAsUser = int64p(0)
		}, "runAsUser must be 65532"},
		{"writable root", "edge", func(r *rendered) {
			wsgateIn(r).SecurityContext.ReadOnlyRootFilesystem = boolp(false)
		}, "readOnlyRootFilesystem"},
		{"privilege escalation", "edge", func(r *rendered) {
			wsgateIn(r).SecurityContext.AllowPrivilegeEscalation = nil
		}, "allowPrivilegeEscalation"},
		{"a capability", "edge", func(r *rendered) {
			wsgateIn(r).SecurityContext.Capabilities.Add = []corev1.Capability{"NET_BIND_SERVICE"}
		}, "capabilities must drop ALL"},
		{"no seccomp profile", "edge", func(r *rendered) {
			wsgateIn(r).SecurityContext.SeccompProfile = nil
			edge(r).SecurityContext.SeccompProfile = nil
		}, "seccompProfile"},
		{"config by subPath", "edge", func(r *rendered) {
			m := &wsgateIn(r).VolumeMounts[0]
			m.MountPath, m.SubPath = "/etc/wsgate/wsgate.yaml", "wsgate.yaml"
		}, "subPath"},
		{"exec preStop", "edge", func(r *rendered) {
			wsgateIn(r).Lifecycle.PreStop = &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: []string{"sleep", "10"}}}
		}, "no shell"},
		{"metrics behind the token", "edge", func(r *rendered) {
			edgeConfig(r, "public_metrics: true", "public_metrics: false")
		}, "admin.public_metrics"},
		{"scrape port", "edge", func(r *rendered) {
			r.deployments[0].Spec.Template.Annotations["prometheus.io/port"] = "9090"
		}, "prometheus.io/port"},
		{"rolling update that drops capacity", "edge", func(r *rendered) {
			one := intstr.FromInt32(1)
			r.deployments[0].Spec.Strategy.RollingUpdate.MaxUnavailable = &one
		}, "maxUnavailable: 0"},
		{"certificate outside the Secret", "edge/overlays/tls", func(r *rendered) {
			crt, key := testPair()
			r.configMaps["fake-tls"] = &corev1.ConfigMap{Data: map[string]string{"tls.crt": crt, "tls.key": key}}
			vol := volume(edge(r), "tls")
			vol.Secret, vol.ConfigMap = nil, &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "fake-tls"}}
		}, "where a kubernetes.io/tls Secret is mounted"},
		{"Service to a plain listener", "edge/overlays/tls", func(r *rendered) {
			cm := r.configMaps["wsgate-config"]
			cm.Data["wsgate.yaml"] = tlsBlock.ReplaceAllString(cm.Data["wsgate.yaml"], "")
		}, "sends to plain-HTTP listener"},
		{"sidecar without restartPolicy Always", "sidecar", func(r *rendered) {
			edge(r).InitContainers[0].RestartPolicy = nil
		}, "without restartPolicy: Always"},
		{"app readiness on a port nothing serves", "sidecar", func(r *rendered) {
			edge(r).Containers[0].ReadinessProbe.HTTPGet.Port = intstr.FromInt32(3000)
		}, "nothing in the pod serves port 3000"},
		{"classic app stops before wsgate has drained", "sidecar-classic", func(r *rendered) {
			cm := r.configMaps[appConfig(r)]
			cm.Data["app.yaml"] = strings.Replace(cm.Data["app.yaml"], "shutdown_delay: 35s", "shutdown_delay: 30s", 1)
		}, "container app stops serving 30s after SIGTERM"},
		{"classic recipe with a native sidecar", "sidecar-classic", func(r *rendered) {
			s := edge(r)
			always := corev1.ContainerRestartPolicyAlways
			c := s.Containers[0]
			c.RestartPolicy = &always
			s.InitContainers, s.Containers = []corev1.Container{c}, s.Containers[1:]
		}, "must be a plain container"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := render(t, tc.dir)
			r, err := decodeAll(tc.dir, base.raw)
			if err != nil {
				t.Fatal(err)
			}
			tc.break_(r)
			got := check(t.TempDir(), r, wantFor(t, tc.dir))
			for _, msg := range got {
				if strings.Contains(msg, tc.want) {
					return
				}
			}
			t.Errorf("check found %d problems, none with %q:\n%s", len(got), tc.want, strings.Join(got, "\n"))
		})
	}
}

// tlsBlock is a listener's tls mapping in the TLS overlay's config.
var tlsBlock = regexp.MustCompile(`(?m)^    tls:\n(?:      .*\n)+`)

func wantFor(t *testing.T, dir string) want {
	for _, w := range kustomizations {
		if w.dir == dir {
			return w
		}
	}
	t.Fatalf("%s is not in the kustomizations list", dir)
	return want{}
}

// appConfig returns the name of the generated ConfigMap of the stand-in
// app's config (its name has a hash suffix).
func appConfig(r *rendered) string {
	for name := range r.configMaps {
		if strings.HasPrefix(name, "app-config") {
			return name
		}
	}
	return ""
}
