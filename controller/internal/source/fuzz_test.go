package source

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"ambit.dev/controller/internal/model"
)

// FuzzFolderDecode feeds arbitrary files through the folder decoder and the model: neither
// may panic, and whatever decodes must be accepted or refused with an error.
func FuzzFolderDecode(f *testing.F) {
	seeds, _ := filepath.Glob("../../../examples/lab-config/*.yaml")
	policies, _ := filepath.Glob("../../../examples/policies/*.yaml") // Istio's kinds among them
	labPolicies, _ := filepath.Glob("../../lab/testdata/policies/*.yaml")
	seeds = append(append(seeds, policies...), labPolicies...)
	for _, p := range seeds {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(goodPod))
	f.Add([]byte(goodPolicy))
	f.Add([]byte("---\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {clusterIPs: [\"::1\"], ports: [{port: 80, targetPort: x}]}\n"))
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	// The decoder (a scheme of every Kubernetes type we read) is built once: building it
	// per input made each execution take most of a second under the fuzzer.
	fo, err := NewFolder(f.TempDir(), nil, log, 0)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s := NewStore(model.NewIndex(model.Options{}), log, StoreOptions{})
		objs, err := fo.decode("fuzz.yaml", data)
		if err != nil {
			return
		}
		for _, o := range objs {
			s.Upsert(o)
		}
		s.Index().Commit()
		for _, o := range objs {
			s.Delete(o)
		}
		s.Index().Commit()
	})
}
