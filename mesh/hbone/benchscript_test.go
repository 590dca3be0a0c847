package hbone

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBenchScript runs `make bench-hbone`'s script once over (COUNT=1, BENCHTIME=1x, JUDGE=0:
// the figures are not judged, a single iteration says nothing about speed) and checks that it
// ran every benchmark it reports on and printed both ratios. The script once pointed at a
// directory the layout had moved, and nothing ran it until a docs audit did.
func TestBenchScript(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: runs go test again")
	}
	script, err := filepath.Abs("../../hack/bench-hbone.sh")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", script)
	// the same build mode as this test binary, so that the packages come from the build cache
	flags := os.Getenv("GOFLAGS")
	if raceBuild {
		flags = strings.TrimSpace(flags + " -race")
	}
	cmd.Env = append(os.Environ(), "COUNT=1", "BENCHTIME=1x", "JUDGE=0", "GOFLAGS="+flags)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("hack/bench-hbone.sh: %v\n%s", err, out)
	}
	text := string(out)
	for _, want := range []string{
		"BenchmarkRoundTrip/direct", "BenchmarkRoundTrip/mtls", "BenchmarkRoundTrip/hbone",
		"BenchmarkThroughput/direct", "BenchmarkThroughput/mtls", "BenchmarkThroughput/hbone",
		"round trip  hbone/mtls = ", "throughput  hbone/mtls = ",
	} {
		if strings.Count(text, want) == 0 {
			t.Errorf("the script's output has no %q:\n%s", want, text)
		}
	}
	// every benchmark appears twice: its own line and its median in the table
	for _, name := range []string{"BenchmarkRoundTrip/hbone", "BenchmarkThroughput/hbone"} {
		if n := strings.Count(text, name); n < 2 {
			t.Errorf("%s appears %d times, want its result and its median:\n%s", name, n, text)
		}
	}
}
