package sysmon

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The test binary run as a child with childEnv set: it prints a line, keeps the monitor
// awake, and prints GODEBUG and its pid; the line before shows each start.
const childEnv = "AMBIT_SYSMON_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		fmt.Printf("start %d\n", os.Getpid())
		if err := KeepAwake(); err != nil {
			fmt.Printf("error %v\n", err)
			os.Exit(1)
		}
		fmt.Printf("GODEBUG=%s pid %d comm %s\n", os.Getenv("GODEBUG"), os.Getpid(), threadNames())
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runChild(t *testing.T, godebug *string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "GODEBUG=") }), childEnv+"=1")
	if godebug != nil {
		cmd.Env = append(cmd.Env, "GODEBUG="+*godebug)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	return string(out)
}

func TestKeepAwakeStartsOnceMore(t *testing.T) {
	for _, tc := range []struct {
		name    string
		godebug *string
		want    string
	}{
		{"no GODEBUG", nil, Setting},
		{"empty GODEBUG", ptr(""), Setting},
		{"other settings kept", ptr("madvdontneed=1"), "madvdontneed=1," + Setting},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := runChild(t, tc.godebug)
			var pid1, pid2 int
			var got string
			var comm string
			if _, err := fmt.Sscanf(out, "start %d\nstart %d\nGODEBUG=%s pid %d comm %s\n", &pid1, &pid2, &got, new(int), &comm); err != nil {
				t.Fatalf("want two starts and then GODEBUG: %v\n%s", err, out)
			}
			if pid1 != pid2 {
				t.Fatalf("started again as pid %d, was %d: not the same process", pid2, pid1)
			}
			if got != tc.want {
				t.Fatalf("GODEBUG %q after the new start, want %q", got, tc.want)
			}
			// The kernel names the new start "exe" (/proc/self/exe); every thread has the
			// program's name back.
			if want := testName(); comm != want {
				t.Fatalf("threads named %q after the new start, want %q", comm, want)
			}
		})
	}
}

func TestKeepAwakeLeavesAChosenSchedtrace(t *testing.T) {
	out := runChild(t, ptr("schedtrace=0"))
	var pid int
	var got string
	if _, err := fmt.Sscanf(out, "start %d\nGODEBUG=%s pid %d comm %s\n", &pid, &got, new(int), new(string)); err != nil {
		t.Fatalf("want one start: %v\n%s", err, out)
	}
	if got != "schedtrace=0" {
		t.Fatalf("GODEBUG %q, want schedtrace=0 left alone", got)
	}
}

func TestHasSetting(t *testing.T) {
	for _, tc := range []struct {
		godebug string
		want    bool
	}{
		{"", false},
		{"schedtrace=0", true},
		{"a=1, schedtrace=5", true},
		{"scheddetail=1", false},
		{"schedtracex=1", false},
		{"schedtrace", false},
	} {
		if got := hasSetting(tc.godebug, "schedtrace"); got != tc.want {
			t.Errorf("hasSetting(%q) = %v, want %v", tc.godebug, got, tc.want)
		}
	}
}

func ptr(s string) *string { return &s }

// threadNames is the distinct names of this process's threads, joined by "+".
func threadNames() string {
	tasks, _ := filepath.Glob("/proc/self/task/*/comm")
	var names []string
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err == nil && !slices.Contains(names, strings.TrimSpace(string(b))) {
			names = append(names, strings.TrimSpace(string(b)))
		}
	}
	return strings.Join(names, "+")
}

// testName is the name the kernel gives this test binary when run by its path.
func testName() string {
	name := filepath.Base(os.Args[0])
	if len(name) > 15 {
		name = name[:15]
	}
	return name
}
