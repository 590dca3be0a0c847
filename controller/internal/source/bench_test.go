package source

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	configv1 "ambit.dev/proto/config/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"ambit.dev/controller/internal/model"
)

// BenchmarkStoreChange measures one pod change through the Store at bench-controller scale
// (10,000 pods, 1,000 services, 100 nodes): Upsert, the debounce, the commit, the
// notification, and For for 100 ztunnels. It reports p50 and p99 in ms.
func BenchmarkStoreChange(b *testing.B) {
	s := NewStore(model.NewIndex(model.Options{}), slog.New(slog.NewTextHandler(io.Discard, nil)), StoreOptions{})
	for n := range 10 {
		s.Upsert(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("ns-%d", n), Labels: map[string]string{model.LabelDataplaneMode: model.ModeAmbient}}})
	}
	for i := range 1000 {
		s.Upsert(&corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns-%d", i%10), Name: fmt.Sprintf("svc-%d", i)},
			Spec: corev1.ServiceSpec{ClusterIPs: []string{fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)}, Selector: map[string]string{"app": fmt.Sprintf("app-%d", i)},
				Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
		})
	}
	pod := func(i, gen int) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns-%d", (i%1000)%10), Name: fmt.Sprintf("pod-%d", i), Labels: map[string]string{"app": fmt.Sprintf("app-%d", i%1000)}},
			Spec:       corev1.PodSpec{NodeName: fmt.Sprintf("node-%d", i%100)},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: fmt.Sprintf("10.%d.%d.%d", 1+gen, (i/256)%256, i%256)}}},
		}
	}
	for i := range 10000 {
		s.Upsert(pod(i, 0))
	}
	sub := s.Subscribe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-sub
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		start := time.Now()
		s.Upsert(pod(i%10000, 1+i/10000))
		<-sub
		for n := range 100 {
			_ = s.Index().For(model.Proxy{Kind: model.KindZtunnel, Node: fmt.Sprintf("node-%d", n)})[configv1.WorkloadTypeURL]
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50_ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99_ms")
}
