package kubernetes

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestManifests renders every kustomization with the kustomize API,
// decodes each object strictly into its k8s.io/api type, loads each
// wsgate config with wsgate's own loader, and checks the wiring.
func TestManifests(t *testing.T) {
	for _, w := range kustomizations {
		t.Run(w.dir, func(t *testing.T) {
			r := render(t, w.dir)
			for _, msg := range check(t.TempDir(), r, w) {
				t.Error(msg)
			}
		})
	}
}

// TestEveryKustomizationIsChecked keeps the kustomizations list in step
// with the directories.
func TestEveryKustomizationIsChecked(t *testing.T) {
	var found []string
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && slices.Contains([]string{"kustomization.yaml", "kustomization.yml", "Kustomization"}, d.Name()) {
			found = append(found, filepath.ToSlash(filepath.Dir(path)))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, w := range kustomizations {
		listed = append(listed, w.dir)
	}
	slices.Sort(found)
	slices.Sort(listed)
	if !slices.Equal(found, listed) {
		t.Errorf("kustomizations on disk %v, in the kustomizations list %v: list each one with what it must be", found, listed)
	}
}

// TestKubectlAgrees renders each kustomization with `kubectl kustomize`
// too, when kubectl is installed, and wants the same objects: what the
// README's `kubectl apply -k` applies is what TestManifests checked.
func TestKubectlAgrees(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl is not on PATH; TestManifests rendered with the kustomize API alone")
	}
	for _, w := range kustomizations {
		t.Run(w.dir, func(t *testing.T) {
			want := render(t, w.dir)
			got, err := kubectlBuild(kubectl, w.dir)
			if err != nil {
				t.Fatal(err)
			}
			if err := sameObjects(want.raw, got); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestStrictDecodeRejectsUnknownFields proves that a misspelt field does
// not pass: kustomize keeps it, and the decoder refuses it, as the API
// server does with strict field validation.
func TestStrictDecodeRejectsUnknownFields(t *testing.T) {
	data, err := os.ReadFile("edge/base/deployment.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, from, to, field string
	}{
		{"misspelt", "terminationGracePeriodSeconds:", "terminationGracePeriodSecond:", "terminationGracePeriodSecond"},
		{"wrong case", "readinessProbe:", "readinessprobe:", "readinessprobe"},
		{"misplaced", "      automountServiceAccountToken: false", "      automountServiceAccountToken: false\n      seccompProfile: {type: RuntimeDefault}", "seccompProfile"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := strings.Replace(string(data), tc.from, tc.to, 1)
			if bad == string(data) {
				t.Fatalf("%q is not in edge/base/deployment.yaml", tc.from)
			}
			dir := t.TempDir()
			write(t, filepath.Join(dir, "kustomization.yaml"), "resources: [deployment.yaml]\n")
			write(t, filepath.Join(dir, "deployment.yaml"), bad)
			objs, err := build(fsOnDisk(), dir)
			if err != nil {
				t.Fatal(err)
			}
			_, err = decodeAll(dir, objs)
			if err == nil || !strings.Contains(err.Error(), tc.field) {
				t.Errorf("decodeAll = %v, want an error naming %q", err, tc.field)
			}
		})
	}
}

func write(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}
