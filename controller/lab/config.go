package lab

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"ambit.dev/controller/internal/configdir"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"
)

// podsFile is the file of the controller's folder that the lab writes; the others are
// copied from the lab file's config folder or applied with `lab apply`.
const podsFile = "zz-lab-pods.yaml"

// appliedPrefix marks the files `lab apply` put in the controller's folder.
const appliedPrefix = "applied-"

// podObjects renders the lab's pods as Kubernetes Pods for the controller's folder:
// spec.nodeName is the lab node, status.podIPs the pod's address.
func podObjects(t *Topology) ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteString("# Written by `ambitctl lab up`: the lab's pods. Edits are lost at the next lab up.\n")
	for _, p := range t.Pods {
		pod := corev1.Pod{
			TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
			ObjectMeta: metav1.ObjectMeta{
				Name: p.Name, Namespace: p.Namespace, UID: types.UID(podUID(t.Name, p)), Labels: p.Labels,
			},
			Spec: corev1.PodSpec{
				NodeName:           p.Node,
				ServiceAccountName: p.ServiceAccount,
				Containers:         []corev1.Container{{Name: "app", Image: "lab"}},
			},
			Status: corev1.PodStatus{
				Phase:  corev1.PodRunning,
				PodIP:  p.IP,
				PodIPs: []corev1.PodIP{{IP: p.IP}},
				Conditions: []corev1.PodCondition{
					{Type: corev1.PodReady, Status: corev1.ConditionTrue},
				},
			},
		}
		for _, a := range p.Apps {
			pod.Spec.Containers[0].Ports = append(pod.Spec.Containers[0].Ports,
				corev1.ContainerPort{Name: a.Name, ContainerPort: int32(a.Port), Protocol: corev1.ProtocolTCP})
		}
		b, err := yaml.Marshal(pod)
		if err != nil {
			return nil, err
		}
		buf.WriteString("---\n")
		buf.Write(b)
	}
	return buf.Bytes(), nil
}

// isConfigFile says whether the controller's folder source reads name (.yaml and .yml, not hidden).
func isConfigFile(name string) bool {
	ext := filepath.Ext(name)
	return (ext == ".yaml" || ext == ".yml") && !strings.HasPrefix(name, ".")
}

// writeConfig fills the controller's folder: the lab file's config objects and the pods.
// Files applied with `lab apply` stay.
func writeConfig(t *Topology, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	old, _ := os.ReadDir(dir)
	for _, e := range old {
		if !strings.HasPrefix(e.Name(), appliedPrefix) {
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
	if src := t.ConfigDir(); src != "" {
		entries, err := os.ReadDir(src)
		if err != nil {
			return fmt.Errorf("lab config folder: %w", err)
		}
		for _, e := range entries {
			if e.IsDir() || !isConfigFile(e.Name()) {
				continue
			}
			b, err := os.ReadFile(filepath.Join(src, e.Name()))
			if err != nil {
				return err
			}
			if err := writeAtomic(filepath.Join(dir, e.Name()), b); err != nil {
				return err
			}
		}
	}
	pods, err := podObjects(t)
	if err != nil {
		return err
	}
	return writeAtomic(filepath.Join(dir, podsFile), pods)
}

// writeTokens gives every node a fresh random token: the file the controller checks
// (tokens/<node>) is the file the node's ztunnel presents.
func writeTokens(t *Topology, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, n := range t.Nodes {
		var b [32]byte
		if _, err := rand.Read(b[:]); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, n.Name), []byte(hex.EncodeToString(b[:])+"\n"), 0o600); err != nil {
			return err
		}
	}
	return nil
}

func writeAtomic(path string, b []byte) error { return configdir.WriteFileAtomic(path, b, 0o644) }
