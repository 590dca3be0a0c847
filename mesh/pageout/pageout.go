// Package pageout gives back the resident pages of a proxy's own binary that only its
// start-up used.
//
// A process's resident set counts every page of its executable it has mapped, and the
// kernel maps file pages around each fault (fault-around, 64 KB at a time), so a Go proxy's
// binary is resident almost whole soon after start, code it ran once (flag parsing, package
// initialisers, the first config) included. Asking the kernel to reclaim those pages once,
// after start-up, leaves out the ones the proxy never touches again; the ones it goes on
// using come back at their next use. Pages another process also maps (two proxies running
// the same file) are left alone by the kernel.
//
// Coming back, they would bring their neighbours: a fault reads ahead, and the kernel maps
// every cached page within 64 KB of it (fault-around), so a proxy's steady state touched
// 5 MB of code in scattered bytes and held 11.6 MB of its binary. So the page-out first
// marks the mappings random-access (MADV_RANDOM: a fault reads just its page, except in the
// code, where recent kernels, 6.18 at least, read ahead whatever the advice) and afterwards
// drops the binary's unmapped pages from the page cache (POSIX_FADV_DONTNEED), leaving
// fault-around less to map: 9.6 MB under the same load (docs/benchmarks.md).
//
// Both read-ahead in the code and fault-around stop at the end of the mapping (the VMA) the
// fault is in, so ztunnel's page-out also cuts its read-only mappings into 16 KB VMAs
// (Split): every other piece marked MADV_DONTDUMP, a flag only core dumps read, and VMAs
// whose flags differ stay apart. A fault then reads and maps within its piece alone. Each
// VMA costs the kernel 192 bytes (0.2 MB for ztunnel's 1,060 pieces), against about 1.5 MB
// of resident code and read-only data saved under the bench's load. One-page pieces saved
// more, but every give-back (Unmap) then cost the next requests some 1,500 faults, enough to
// push a p99 over 5 ms (docs/benchmarks.md).
package pageout

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Binary asks the kernel to reclaim this process's pages of its executable's read-only
// mappings (code and read-only data), marked random-access from then on (its writable data
// too), and to drop the executable's pages nobody maps from the page cache; with split, it
// also cuts the read-only mappings into VMAs of Piece bytes (Split). It returns how many
// bytes of mapped file were resident before and after. Kernels before 5.4 have no
// MADV_PAGEOUT: an error.
func Binary(split bool) (before, after int64, err error) {
	ro, rw, err := exeMappings()
	if err != nil {
		return 0, 0, err
	}
	if before, err = residentFile(); err != nil {
		return 0, 0, err
	}
	// The writable data too: a fault there otherwise reads ahead around it, as far as the
	// device's read-ahead goes (8 MB on the lab's disk, half before the fault), into the
	// read-only pages just before the data; the page cache fills with them, and fault-around
	// in the read-only mappings then maps them (docs/benchmarks.md).
	if err := madvise(ro, unix.MADV_RANDOM, unix.MADV_PAGEOUT); err != nil {
		return before, before, err
	}
	if err := madvise(rw, unix.MADV_RANDOM); err != nil {
		return before, before, err
	}
	if split {
		if _, err := Split(ro, maxVMAs()); err != nil {
			return before, before, err
		}
	}
	if fd, err := unix.Open("/proc/self/exe", unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
		_ = unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED)
		unix.Close(fd)
	}
	after, err = residentFile()
	return before, after, err
}

// Unmap takes this process's pages of its executable's read-only mappings out of its
// resident set without taking them out of the page cache (MADV_DONTNEED): the ones it goes
// on using are mapped again at their next use, by a minor fault, one page at a time once
// Binary has marked the mappings random-access. For the end of a burst of work: the code
// only the burst ran (a bulk transfer's, HTTP/3's, a wave of new connections') stops
// counting. It returns how many bytes of mapped file were resident before and after.
func Unmap() (before, after int64, err error) {
	ro, _, err := exeMappings()
	if err != nil {
		return 0, 0, err
	}
	if before, err = residentFile(); err != nil {
		return 0, 0, err
	}
	if err := madvise(ro, unix.MADV_DONTNEED); err != nil {
		return before, before, err
	}
	after, err = residentFile()
	return before, after, err
}

// Piece is the size of the VMAs Split cuts: four pages, so that a fault after a give-back
// still maps up to four (fault-around within the piece).
const Piece = 16 << 10

// Split cuts each range into VMAs of Piece bytes, or of as many as keep their count under
// limit: every other piece is marked MADV_DONTDUMP, and the kernel keeps VMAs whose flags
// differ apart. A fault in the code reads ahead only to the end of its VMA (from 6.x,
// whatever MADV_RANDOM says), and fault-around maps cached pages only within it, so a fault
// then brings in its piece at most. It returns the size of a piece. Core dumps, the only
// reader of the flag, leave private file pages out anyway.
func Split(ranges [][2]uintptr, limit int) (uintptr, error) {
	var total uintptr
	for _, r := range ranges {
		total += r[1] - r[0]
	}
	piece := pieceSize(total, limit)
	for _, r := range ranges {
		for a := r[0] + piece; a < r[1]; a += 2 * piece {
			if _, _, e := syscall.Syscall(syscall.SYS_MADVISE, a, min(piece, r[1]-a), unix.MADV_DONTDUMP); e != 0 {
				return piece, fmt.Errorf("pageout: madvise %#x-%#x MADV_DONTDUMP: %w", a, a+min(piece, r[1]-a), e)
			}
		}
	}
	return piece, nil
}

// pieceSize is the size of Split's pieces for total bytes: Piece (a page at least), doubled
// until there are no more than limit of them.
func pieceSize(total uintptr, limit int) uintptr {
	piece := uintptr(max(Piece, os.Getpagesize()))
	for limit > 0 && total/piece > uintptr(limit) {
		piece *= 2
	}
	return piece
}

// maxVMAs is how many VMAs Split may make: an eighth of the kernel's limit per process
// (vm.max_map_count, 65,530 by default), which leaves the heap, the stacks and the
// libraries of any process far more than they use.
func maxVMAs() int {
	n := 65530
	if b, err := os.ReadFile("/proc/sys/vm/max_map_count"); err == nil {
		if v, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && v > 0 {
			n = v
		}
	}
	return n / 8
}

// exeMappings lists this process's private mappings of its executable, read-only and
// writable; it fails when there is no read-only one.
func exeMappings() (ro, rw [][2]uintptr, err error) {
	// The executable by device and inode, which stay right when its path no longer does
	// (the file replaced or removed while the proxy runs).
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/exe", &st); err != nil {
		return nil, nil, err
	}
	exe := fileID{dev: st.Dev, ino: st.Ino}
	if ro, rw, err = mappings("/proc/self/maps", exe); err != nil {
		return nil, nil, err
	}
	if len(ro) == 0 {
		return nil, nil, fmt.Errorf("pageout: no read-only mapping of the executable (device %d, inode %d)", exe.dev, exe.ino)
	}
	return ro, rw, nil
}

// madvise gives each advice in turn to every range.
func madvise(ranges [][2]uintptr, advice ...int) error {
	for _, r := range ranges {
		for _, a := range advice {
			if _, _, e := syscall.Syscall(syscall.SYS_MADVISE, r[0], r[1]-r[0], uintptr(a)); e != 0 {
				return fmt.Errorf("pageout: madvise %#x-%#x: %w", r[0], r[1], e)
			}
		}
	}
	return nil
}

// fileID names a file by device and inode.
type fileID struct{ dev, ino uint64 }

// mappings lists the [start, end) ranges of the private mappings of file exe in a maps
// file: ro, those not writable; rw, the writable ones.
func mappings(maps string, exe fileID) (ro, rw [][2]uintptr, err error) {
	f, err := os.Open(maps)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// address perms offset dev(major:minor, hex) inode [path]
		fs := strings.Fields(sc.Text())
		if len(fs) < 5 || len(fs[1]) != 4 || fs[1][3] != 'p' {
			continue
		}
		major, minor, _ := strings.Cut(fs[3], ":")
		maj, err1 := strconv.ParseUint(major, 16, 32)
		mnr, err2 := strconv.ParseUint(minor, 16, 32)
		ino, err3 := strconv.ParseUint(fs[4], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil || ino != exe.ino || unix.Mkdev(uint32(maj), uint32(mnr)) != exe.dev {
			continue
		}
		lo, hi, ok := strings.Cut(fs[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if !ok || err1 != nil || err2 != nil || end <= start {
			return nil, nil, fmt.Errorf("pageout: %s: bad range %q", maps, fs[0])
		}
		r := [2]uintptr{uintptr(start), uintptr(end)}
		if fs[1][1] == 'w' {
			rw = appendRange(rw, r)
		} else {
			ro = appendRange(ro, r)
		}
	}
	return ro, rw, sc.Err()
}

// appendRange appends r to ranges, or extends the last range when r starts where it ends:
// the VMAs Split made come back as the range they were cut from, one madvise each.
func appendRange(ranges [][2]uintptr, r [2]uintptr) [][2]uintptr {
	if n := len(ranges); n > 0 && ranges[n-1][1] == r[0] {
		ranges[n-1][1] = r[1]
		return ranges
	}
	return append(ranges, r)
}

// residentFile is RssFile of /proc/self/status, in bytes.
func residentFile() (int64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "RssFile:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("pageout: no RssFile in /proc/self/status")
}

// DefaultDelay is the proxies' --page-out-after: start-up (certificates, the first config)
// is over by then. FlagUsage is that flag's help.
const (
	DefaultDelay = 30 * time.Second
	FlagUsage    = "this long after start, give back the pages of the binary that only start-up used (resident memory); 0: never"
)

// After runs Binary(split) once, delay after it is called (when start-up is over), unless
// ctx ends first, and logs what it gave back. A delay of zero or less does nothing.
func After(ctx context.Context, delay time.Duration, split bool, log *slog.Logger) {
	if delay <= 0 {
		return
	}
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return
	case <-t.C:
	}
	before, after, err := Binary(split)
	if err != nil {
		log.Warn("start-up pages of the binary not given back", "err", err)
		return
	}
	log.Info("start-up pages of the binary given back", "resident_file_mb_before", mb(before), "resident_file_mb_after", mb(after))
}

func mb(b int64) string { return strconv.FormatFloat(float64(b)/(1<<20), 'f', 1, 64) }
