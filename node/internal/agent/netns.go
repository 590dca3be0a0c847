package agent

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"golang.org/x/sys/unix"
)

// podUIDPattern finds a pod's UID in a process's cgroup path: kubepods/…/pod<uid>/<container>
// with the cgroupfs driver, kubepods-…-pod<uid with _>.slice with systemd's.
var podUIDPattern = regexp.MustCompile(`pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})`)

// netnsByPodUID maps the UID of every pod with a process on this machine to its network
// namespace's file in netnsDir, the runtime's (where the CNI plugin's CNI_NETNS points too):
// the file whose namespace is the one of the pod's processes. It reads procRoot (the host's
// /proc: the agent runs with hostPID) and needs CAP_SYS_PTRACE to look at the namespaces of
// processes of other users. A pod whose namespace has no file there (a hostNetwork pod, or a
// runtime that keeps them elsewhere) is left out.
func netnsByPodUID(procRoot, netnsDir string) (map[string]string, error) {
	files := map[uint64]string{}
	ents, err := os.ReadDir(netnsDir)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		p := filepath.Join(netnsDir, e.Name())
		var st unix.Stat_t
		if unix.Stat(p, &st) == nil {
			files[st.Ino] = p
		}
	}
	out := map[string]string{}
	procs, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, err
	}
	for _, pe := range procs {
		name := pe.Name()
		if name[0] < '0' || name[0] > '9' {
			continue
		}
		cg, err := os.ReadFile(filepath.Join(procRoot, name, "cgroup"))
		if err != nil {
			continue
		}
		m := podUIDPattern.FindSubmatch(cg)
		if m == nil {
			continue
		}
		uid := strings.ReplaceAll(string(m[1]), "_", "-")
		if _, ok := out[uid]; ok {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(filepath.Join(procRoot, name, "ns", "net"), &st) != nil {
			continue
		}
		if p, ok := files[st.Ino]; ok {
			out[uid] = p
		}
	}
	return out, nil
}
