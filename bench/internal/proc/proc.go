// Package proc reads what the kernel accounts for a process: CPU time (utime+stime, all
// threads) and resident memory. The benchmark charges the proxies with these, as the
// proxies' own rusage, rather than trusting anything the proxies report about themselves.
package proc

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// clockTick is USER_HZ, the unit of utime and stime in /proc/<pid>/stat. It is 100 on
// every Linux architecture Go supports (the kernel fixes it for user space).
const clockTick = 100

// CPUTime returns the user plus system CPU time pid has used so far, over all its threads.
func CPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return ParseStatCPU(b)
}

// ParseStatCPU reads utime+stime out of the contents of a /proc/<pid>/stat file.
func ParseStatCPU(b []byte) (time.Duration, error) {
	// The command name (field 2) is in parentheses and may hold spaces and ')': the
	// fields after it start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("proc stat: no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("proc stat: %d fields after the command name", len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("proc stat: %w", err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTick, nil
}

// Memory is a process's resident set now and at its peak, in bytes.
type Memory struct {
	RSS, HWM int64
}

// ReadMemory returns VmRSS and VmHWM of pid.
func ReadMemory(pid int) (Memory, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Memory{}, err
	}
	return ParseStatusMemory(b)
}

// ParseStatusMemory reads VmRSS and VmHWM out of the contents of a /proc/<pid>/status file.
func ParseStatusMemory(b []byte) (Memory, error) {
	var m Memory
	found := 0
	for _, line := range strings.Split(string(b), "\n") {
		var dst *int64
		switch {
		case strings.HasPrefix(line, "VmRSS:"):
			dst = &m.RSS
		case strings.HasPrefix(line, "VmHWM:"):
			dst = &m.HWM
		default:
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 || f[2] != "kB" {
			return Memory{}, fmt.Errorf("proc status: unexpected line %q", line)
		}
		kb, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return Memory{}, fmt.Errorf("proc status: %w", err)
		}
		*dst = kb * 1024
		found++
	}
	if found != 2 {
		return Memory{}, fmt.Errorf("proc status: no VmRSS and VmHWM lines")
	}
	return m, nil
}

// Usage is what a set of processes used over an interval.
type Usage struct {
	// CPU is the CPU time of all the processes together.
	CPU time.Duration
	// Elapsed is the wall time of the interval.
	Elapsed time.Duration
	// PeakRSS is the largest resident set any single process reached in the interval, as
	// sampled.
	PeakRSS int64
}

// Meter measures the CPU time and peak memory of a fixed set of processes between Start
// and Stop, sampling memory every Interval. A Meter over no processes measures nothing.
type Meter struct {
	pids     []int
	interval time.Duration

	start    time.Time
	cpu0     time.Duration
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	mu       sync.Mutex
	peak     int64
	firstErr error
}

// NewMeter returns a meter over pids, sampling memory every interval.
func NewMeter(interval time.Duration, pids ...int) *Meter {
	return &Meter{pids: pids, interval: interval}
}

func (m *Meter) cpu() (time.Duration, error) {
	var total time.Duration
	for _, pid := range m.pids {
		t, err := CPUTime(pid)
		if err != nil {
			return 0, err
		}
		total += t
	}
	return total, nil
}

func (m *Meter) sample() {
	for _, pid := range m.pids {
		mem, err := ReadMemory(pid)
		m.mu.Lock()
		if err != nil && m.firstErr == nil {
			m.firstErr = err
		}
		m.peak = max(m.peak, mem.RSS)
		m.mu.Unlock()
	}
}

// Start begins the interval.
func (m *Meter) Start() error {
	cpu, err := m.cpu()
	if err != nil {
		return err
	}
	m.cpu0, m.start = cpu, time.Now()
	m.sample()
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		t := time.NewTicker(m.interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				m.sample()
			}
		}
	}()
	return nil
}

// Stop ends the interval and returns what the processes used in it.
func (m *Meter) Stop() (Usage, error) {
	m.cancel()
	m.wg.Wait()
	m.sample()
	cpu, err := m.cpu()
	if err != nil {
		return Usage{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return Usage{CPU: cpu - m.cpu0, Elapsed: time.Since(m.start), PeakRSS: m.peak}, m.firstErr
}

// Children returns the pids of pid's child processes (the threads' children together), or
// none if it has gone.
func Children(pid int) []int {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	var out []int
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}
