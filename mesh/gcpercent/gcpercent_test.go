package gcpercent

import (
	"os"
	"runtime/debug"
	"testing"
)

func TestApply(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	// GOGC set: the runtime's reading of it (here the 100 this test just set) stays.
	t.Setenv("GOGC", "200")
	if got := Apply(Ztunnel); got != 100 {
		t.Fatalf("with GOGC set: Apply = %d, want the runtime's 100", got)
	}
	if err := os.Unsetenv("GOGC"); err != nil {
		t.Fatal(err)
	}
	if got := Apply(Ztunnel); got != Ztunnel {
		t.Fatalf("without GOGC: Apply = %d, want %d", got, Ztunnel)
	}
	if cur := debug.SetGCPercent(100); cur != Ztunnel {
		t.Fatalf("GC percent in force %d, want %d", cur, Ztunnel)
	}
}
