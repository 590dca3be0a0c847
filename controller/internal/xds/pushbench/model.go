package main

import (
	"fmt"
	"strconv"

	"ambit.dev/controller/internal/model"
	"ambit.dev/controller/internal/xds"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// modelMesh is the controller's real model (model.Index) fed with Kubernetes objects: 50
// enrolled namespaces, the Services, and the pods they select, spread over the nodes.
type modelMesh struct {
	idx                   *model.Index
	pods, services, nodes int
}

func newModelMesh(pods, services, nodes int) (*modelMesh, error) {
	m := &modelMesh{pods: pods, services: services, nodes: nodes}
	var objs []runtime.Object
	for i := range 50 {
		objs = append(objs, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: fmt.Sprintf("ns-%d", i), Labels: map[string]string{model.LabelDataplaneMode: "ambient"}}})
	}
	for s := range services {
		ns := fmt.Sprintf("ns-%d", s%50)
		objs = append(objs, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("svc-%d", s), UID: types.UID(fmt.Sprintf("svc-uid-%d", s))},
			Spec: corev1.ServiceSpec{
				ClusterIP: fmt.Sprintf("10.96.%d.%d", s>>8, s&255), ClusterIPs: []string{fmt.Sprintf("10.96.%d.%d", s>>8, s&255)},
				Selector: map[string]string{"app": fmt.Sprintf("app-%d", s)},
				Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}},
			},
		})
	}
	for i := range pods {
		objs = append(objs, m.pod(i, 1))
	}
	idx, errs := model.Build(model.Options{}, objs)
	if len(errs) > 0 {
		return nil, fmt.Errorf("model: %d objects refused, first: %w", len(errs), errs[0])
	}
	m.idx = idx
	return m, nil
}

func (m *modelMesh) pod(i, gen int) *corev1.Pod {
	s := i % m.services
	ns := fmt.Sprintf("ns-%d", s%50)
	ip := fmt.Sprintf("10.%d.%d.%d", 1+i>>16, (i>>8)&255, i&255)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("app-%d-%d", s, i), UID: types.UID("pod-uid-" + strconv.Itoa(i)),
			Labels: map[string]string{"app": fmt.Sprintf("app-%d", s), "rev": strconv.Itoa(gen)}},
		Spec: corev1.PodSpec{NodeName: nodeName(i % m.nodes), ServiceAccountName: fmt.Sprintf("app-%d", s),
			Containers: []corev1.Container{{Name: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
}

func (m *modelMesh) For(p xds.Proxy) map[string]map[string]xds.Resource { return m.idx.For(p) }

// change relabels pod i (a rollout's revision label), commits, and returns the workload's
// resource name.
func (m *modelMesh) change(i, gen int) (string, error) {
	p := m.pod(i, gen)
	if err := m.idx.Upsert(p); err != nil {
		return "", err
	}
	m.idx.Commit()
	return model.WorkloadUID(model.DefaultCluster, p.Namespace, p.Name), nil
}
