package proc

import (
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"
)

func TestParseStatCPU(t *testing.T) {
	// a command name with a space and a parenthesis, utime 250 and stime 50 ticks
	stat := "1234 (weird) name) S 1 1234 1234 0 -1 4194560 1203 0 0 0 250 50 0 0 20 0 9 0 4242 0 0\n"
	got, err := ParseStatCPU([]byte(stat))
	if err != nil || got != 3*time.Second {
		t.Fatalf("got %v, %v; want 3s", got, err)
	}
	if _, err := ParseStatCPU([]byte("1 (x) S 1 2")); err == nil {
		t.Fatal("short line accepted")
	}
}

func TestParseStatusMemory(t *testing.T) {
	status := "Name:\tztunnel\nVmPeak:\t  1000 kB\nVmHWM:\t   12000 kB\nVmRSS:\t    9000 kB\nThreads:\t7\n"
	m, err := ParseStatusMemory([]byte(status))
	if err != nil || m.RSS != 9000*1024 || m.HWM != 12000*1024 {
		t.Fatalf("%+v, %v", m, err)
	}
	if _, err := ParseStatusMemory([]byte("Name:\tx\n")); err == nil {
		t.Fatal("status without memory lines accepted")
	}
}

func TestMeterSelf(t *testing.T) {
	m := NewMeter(10*time.Millisecond, os.Getpid())
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(50 * time.Millisecond)
	for time.Now().Before(deadline) { // burn some CPU
	}
	u, err := m.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if u.PeakRSS <= 0 || u.Elapsed < 50*time.Millisecond || u.CPU < 0 {
		t.Fatalf("%+v", u)
	}
}

func TestChildren(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	if got := Children(os.Getpid()); !slices.Contains(got, cmd.Process.Pid) {
		t.Errorf("Children(self) = %v, lacks the started sleep %d", got, cmd.Process.Pid)
	}
	if got := Children(cmd.Process.Pid); len(got) != 0 {
		t.Errorf("Children(sleep) = %v, want none", got)
	}
}
