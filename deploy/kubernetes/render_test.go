package kubernetes

import (
	"bytes"
	stdjson "encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// rendered is one kustomization's output, every object decoded strictly
// into its k8s.io/api type.
type rendered struct {
	dir         string
	deployments []*appsv1.Deployment
	services    []*corev1.Service
	pdbs        []*policyv1.PodDisruptionBudget
	configMaps  map[string]*corev1.ConfigMap
	secrets     map[string]*corev1.Secret
	raw         [][]byte // each object as JSON, in output order
}

// build renders the kustomization in dir with the kustomize API, as
// `kubectl apply -k dir` would.
func build(fs filesys.FileSystem, dir string) ([][]byte, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(fs, dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize %s: %w", dir, err)
	}
	var out [][]byte
	for _, r := range m.Resources() {
		j, err := r.MarshalJSON()
		if err != nil {
			return nil, fmt.Errorf("kustomize %s: %s: %w", dir, r.CurId(), err)
		}
		out = append(out, j)
	}
	return out, nil
}

// render builds dir from the disk and decodes what it produces.
func render(t *testing.T, dir string) *rendered {
	t.Helper()
	objs, err := build(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := decodeAll(dir, objs)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// decodeAll decodes every object strictly: an unknown field, a field
// whose case differs from the API's, or a duplicate field is an error,
// as is a kind these manifests are not expected to hold.
func decodeAll(dir string, objs [][]byte) (*rendered, error) {
	r := &rendered{
		dir:        dir,
		configMaps: map[string]*corev1.ConfigMap{},
		secrets:    map[string]*corev1.Secret{},
		raw:        objs,
	}
	var errs []error
	for _, data := range objs {
		var tm metav1.TypeMeta
		if err := kjson.UnmarshalCaseSensitivePreserveInts(data, &tm); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", dir, err))
			continue
		}
		var obj any
		switch tm.APIVersion + " " + tm.Kind {
		case "apps/v1 Deployment":
			d := &appsv1.Deployment{}
			r.deployments = append(r.deployments, d)
			obj = d
		case "v1 Service":
			s := &corev1.Service{}
			r.services = append(r.services, s)
			obj = s
		case "policy/v1 PodDisruptionBudget":
			p := &policyv1.PodDisruptionBudget{}
			r.pdbs = append(r.pdbs, p)
			obj = p
		case "v1 ConfigMap":
			obj = &corev1.ConfigMap{}
		case "v1 Secret":
			obj = &corev1.Secret{}
		default:
			errs = append(errs, fmt.Errorf("%s: unexpected kind %q (apiVersion %q): add its type to decodeAll", dir, tm.Kind, tm.APIVersion))
			continue
		}
		if err := decodeStrict(data, obj); err != nil {
			errs = append(errs, fmt.Errorf("%s: %s: %w", dir, tm.Kind, err))
			continue
		}
		switch o := obj.(type) {
		case *corev1.ConfigMap:
			r.configMaps[o.Name] = o
		case *corev1.Secret:
			r.secrets[o.Name] = o
		}
	}
	return r, errors.Join(errs...)
}

// decodeStrict decodes one object's JSON into v the way the API server
// does with fieldValidation=Strict: case-sensitive field names, and
// unknown or duplicate fields are errors.
func decodeStrict(data []byte, v any) error {
	strict, err := kjson.UnmarshalStrict(data, v, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// kubectlBuild renders dir with `kubectl kustomize`, the kustomize built
// into kubectl, and returns each object as JSON.
func kubectlBuild(kubectl, dir string) ([][]byte, error) {
	cmd := exec.Command(kubectl, "kustomize", dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("kubectl kustomize %s: %w: %s", dir, err, strings.TrimSpace(stderr.String()))
	}
	var objs [][]byte
	for doc := range strings.SplitSeq(string(out), "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		j, err := yaml.YAMLToJSONStrict([]byte(doc))
		if err != nil {
			return nil, fmt.Errorf("kubectl kustomize %s: %w", dir, err)
		}
		objs = append(objs, j)
	}
	return objs, nil
}

// sameObjects compares two renderings object by object, ignoring order.
func sameObjects(a, b [][]byte) error {
	index := func(objs [][]byte) (map[string]any, []string, error) {
		m := map[string]any{}
		var keys []string
		for _, data := range objs {
			var v map[string]any
			if err := kjson.UnmarshalCaseSensitivePreserveInts(data, &v); err != nil {
				return nil, nil, err
			}
			md, _ := v["metadata"].(map[string]any)
			key := fmt.Sprintf("%v/%v %v/%v", v["apiVersion"], v["kind"], md["namespace"], md["name"])
			m[key] = v
			keys = append(keys, key)
		}
		slices.Sort(keys)
		return m, keys, nil
	}
	ma, ka, err := index(a)
	if err != nil {
		return err
	}
	mb, kb, err := index(b)
	if err != nil {
		return err
	}
	if !slices.Equal(ka, kb) {
		return fmt.Errorf("objects differ:\n  kustomize API: %v\n  kubectl:       %v", ka, kb)
	}
	for _, k := range ka {
		if !reflect.DeepEqual(ma[k], mb[k]) {
			ja, _ := stdjson.Marshal(ma[k])
			jb, _ := stdjson.Marshal(mb[k])
			return fmt.Errorf("%s differs:\n  kustomize API: %s\n  kubectl:       %s", k, ja, jb)
		}
	}
	return nil
}

func fsOnDisk() filesys.FileSystem { return filesys.MakeFsOnDisk() }
