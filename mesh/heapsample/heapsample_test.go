package heapsample

import (
	"os"
	"runtime"
	"testing"
)

// TestOffUnlessAsked: the initialiser has turned sampling off in this test binary, unless its
// GODEBUG asked for a rate; Requested finds memprofilerate among other settings, and only it.
func TestOffUnlessAsked(t *testing.T) {
	if Requested(os.Getenv("GODEBUG")) {
		if runtime.MemProfileRate == 0 {
			t.Fatalf("GODEBUG=%s asks for a rate, yet sampling is off", os.Getenv("GODEBUG"))
		}
	} else if runtime.MemProfileRate != 0 {
		t.Fatalf("MemProfileRate = %d after the initialiser, want 0", runtime.MemProfileRate)
	}
	for in, want := range map[string]bool{
		"":                                  false,
		"memprofilerate=524288":             true,
		"madvdontneed=1,memprofilerate=1":   true,
		"madvdontneed=1, memprofilerate=0":  true,
		"madvdontneed=1":                    false,
		"memprofilerate":                    false,
		"xmemprofilerate=1,gctrace=1":       false,
		"gctrace=1,memprofilerate=4096,x=y": true,
	} {
		if got := Requested(in); got != want {
			t.Errorf("Requested(%q) = %v, want %v", in, got, want)
		}
	}
}
