package pageout

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestBinaryGivesPagesBack: the test binary, mapped by this process alone, has fewer
// resident file pages after Binary, and keeps running (its code faults back in).
func TestBinaryGivesPagesBack(t *testing.T) {
	before, after, err := Binary(false)
	if errors.Is(err, unix.EINVAL) {
		t.Skip("this kernel has no MADV_PAGEOUT (Linux 5.4 or later)")
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("resident file pages: %d kB before, %d kB after", before>>10, after>>10)
	if before <= 0 || after >= before {
		t.Fatalf("resident file bytes %d before, %d after: nothing given back", before, after)
	}
	again, err := residentFile()
	if err != nil || again <= 0 {
		t.Fatalf("after the page-out: %d, %v", again, err)
	}
	// The executable's mappings now fault in without read-ahead (MADV_RANDOM, "rr" among a
	// mapping's VmFlags in smaps): the read-only ones, and the writable data, whose faults
	// would otherwise read ahead into the read-only pages before it.
	random := map[bool]int{} // by writable
	for _, m := range exeSmaps(t) {
		if !strings.Contains(m.flags, " rr ") {
			t.Errorf("mapping %s (%s) of the executable: VmFlags%s, no rr (MADV_RANDOM)", m.addr, m.perms, m.flags)
		}
		random[m.perms[1] == 'w']++
	}
	if random[false] == 0 || random[true] == 0 {
		t.Errorf("%d read-only and %d writable mappings of the executable in /proc/self/smaps; want both", random[false], random[true])
	}
}

// TestUnmapKeepsPageCache: Unmap takes the executable's pages out of the resident set but
// not out of the page cache, so the code this process goes on running maps back in without
// reading the file.
func TestUnmapKeepsPageCache(t *testing.T) {
	cachedBefore := cachedPages(t)
	before, after, err := Unmap()
	if err != nil {
		t.Fatal(err)
	}
	cachedAfter := cachedPages(t)
	t.Logf("resident file pages: %d kB before, %d kB after; executable pages cached: %d before, %d after", before>>10, after>>10, cachedBefore, cachedAfter)
	if before <= 0 || after >= before {
		t.Fatalf("resident file bytes %d before, %d after: nothing unmapped", before, after)
	}
	if cachedAfter < cachedBefore*9/10 {
		t.Fatalf("%d of the executable's pages cached after Unmap, %d before: it evicted them", cachedAfter, cachedBefore)
	}
	if again, err := residentFile(); err != nil || again <= 0 {
		t.Fatalf("after Unmap: %d, %v", again, err)
	}
}

// cachedPages counts the pages of this process's executable that are in the page cache
// (mincore over a mapping of the whole file).
func cachedPages(t *testing.T) int {
	t.Helper()
	f, err := os.Open("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, (len(m)+os.Getpagesize()-1)/os.Getpagesize())
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatal(e)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

// TestReadOnlyMappings: only the executable's private mappings that are not writable
// count, found by device and inode (also once its path says "(deleted)"); a malformed range
// is an error, not a guess.
func TestReadOnlyMappings(t *testing.T) {
	maps := filepath.Join(t.TempDir(), "maps")
	write := func(s string) {
		if err := os.WriteFile(maps, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(`00400000-00bc0000 r-xp 00000000 08:01 123 /usr/bin/ztunnel
00bc0000-0148a000 r--p 007c0000 08:01 123 /usr/bin/ztunnel (deleted)
0148a000-01501000 rw-p 0108a000 08:01 123 /usr/bin/ztunnel
01501000-01600000 rw-p 00000000 00:00 0
7f0000000000-7f0000001000 r--s 00000000 08:01 123 /usr/bin/ztunnel
7f0000001000-7f0000002000 r-xp 00000000 08:01 77 /usr/lib/libc.so
7f0000003000-7f0000004000 r-xp 00000000 08:02 123 /mnt/other
`)
	exe := fileID{dev: unix.Mkdev(8, 1), ino: 123}
	got, rw, err := mappings(maps, exe)
	if err != nil {
		t.Fatal(err)
	}
	// The code and the read-only data touch: one range.
	if want := [2]uintptr{0x400000, 0x148a000}; len(got) != 1 || got[0] != want {
		t.Fatalf("got %x, want %x", got, want)
	}
	if len(rw) != 1 || rw[0] != [2]uintptr{0x148a000, 0x1501000} {
		t.Fatalf("writable: got %x, want the data mapping 148a000-1501000 only", rw)
	}
	write("00bc0000-00400000 r-xp 00000000 08:01 123 /usr/bin/ztunnel\n")
	if _, _, err := mappings(maps, exe); err == nil || !strings.Contains(err.Error(), "bad range") {
		t.Fatalf("a backwards range: %v", err)
	}
}

// TestAfterWaitsAndStops: After gives the pages back once its delay has passed, and does
// nothing for a zero delay or when ctx ends first.
// TestSplit: Binary(true) leaves the executable's read-only mappings cut into VMAs of Piece
// bytes (or larger pieces under the limit), every other one marked dd (MADV_DONTDUMP), still
// random-access; mappings reads them back as the one range they were cut from, and the code
// keeps running from them.
func TestSplit(t *testing.T) {
	if _, _, err := Binary(true); errors.Is(err, unix.EINVAL) {
		t.Skip("this kernel has no MADV_PAGEOUT (Linux 5.4 or later)")
	} else if err != nil {
		t.Fatal(err)
	}
	ro, _, err := exeMappings()
	if err != nil {
		t.Fatal(err)
	}
	var total uintptr
	for _, r := range ro {
		total += r[1] - r[0]
	}
	piece := pieceSize(total, maxVMAs())
	var vmas, dontdump, notRandom int
	for _, m := range exeSmaps(t) {
		if m.perms[1] == 'w' {
			continue
		}
		vmas++
		if strings.Contains(m.flags, " dd ") {
			dontdump++
		}
		if !strings.Contains(m.flags, " rr ") {
			notRandom++
		}
	}
	t.Logf("%d read-only VMAs of %d kB, pieces of %d kB, %d marked dd", vmas, total>>10, piece>>10, dontdump)
	if want := int(total / piece); vmas < want || dontdump < want/2-1 || dontdump > want/2+2 {
		t.Errorf("%d read-only VMAs, %d of them dd; want about %d, half dd", vmas, dontdump, want)
	}
	if notRandom > 0 {
		t.Errorf("%d pieces not random-access", notRandom)
	}
	if len(ro) > 2 {
		t.Errorf("mappings read the pieces as %d ranges, want the code and the read-only data at most", len(ro))
	}
}

// smapping is one of the executable's private mappings in /proc/self/smaps: its address
// range, permissions and VmFlags (padded with spaces, so " rr " finds a flag).
type smapping struct{ addr, perms, flags string }

func exeSmaps(t *testing.T) []smapping {
	t.Helper()
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	var out []smapping
	var cur *smapping
	for _, l := range strings.Split(string(smaps), "\n") {
		// A mapping's first line (anonymous ones have no path); its fields follow, named.
		if fs := strings.Fields(l); len(fs) >= 5 && strings.Contains(fs[0], "-") && !strings.HasSuffix(fs[0], ":") {
			cur = nil
			if len(fs) >= 6 && fs[5] == exe && fs[1][3] == 'p' {
				out = append(out, smapping{addr: fs[0], perms: fs[1]})
				cur = &out[len(out)-1]
			}
			continue
		}
		if flags, ok := strings.CutPrefix(l, "VmFlags:"); ok && cur != nil {
			cur.flags = " " + flags + " "
		}
	}
	return out
}

// TestSplitLimit: past the limit, pieces double until their count fits.
func TestSplitLimit(t *testing.T) {
	page := uintptr(os.Getpagesize())
	m, err := unix.Mmap(-1, 0, int(64*page), unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	start := uintptr(unsafe.Pointer(&m[0]))
	piece, err := Split([][2]uintptr{{start, start + 64*page}}, 10)
	if err != nil {
		t.Fatal(err)
	}
	if piece != 8*page {
		t.Fatalf("64 pages under a limit of 10: pieces of %d pages, want 8", piece/page)
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(string(maps), "\n") {
		lo, hi, ok := strings.Cut(strings.Fields(l + " x")[0], "-")
		if !ok {
			continue
		}
		a, _ := strconv.ParseUint(lo, 16, 64)
		b, _ := strconv.ParseUint(hi, 16, 64)
		if uintptr(a) < start+64*page && uintptr(b) > start { // an end piece may join a neighbour
			n++
		}
	}
	if n != 8 {
		t.Fatalf("%d VMAs in the 64 pages, want 8", n)
	}
}

func TestAfterWaitsAndStops(t *testing.T) {
	var out strings.Builder
	log := slog.New(slog.NewTextHandler(&out, nil))
	After(t.Context(), 0, false, log)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	After(ctx, time.Hour, false, log)
	if out.Len() != 0 {
		t.Fatalf("logged with no delay or an ended context: %s", out.String())
	}
	start := time.Now()
	After(t.Context(), 50*time.Millisecond, false, log)
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Fatalf("returned after %v, before its delay", d)
	}
	if !strings.Contains(out.String(), "start-up pages of the binary given back") {
		t.Fatalf("log: %q", out.String())
	}
}
