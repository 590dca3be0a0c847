package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/cobra"

	"ambit.dev/controller/lab"
)

// run executes `ambitctl args...` with the mesh commands and returns what it printed.
func run(t *testing.T, o Options, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "ambitctl", SilenceUsage: true, SilenceErrors: true}
	if o.KubeconfigFound == nil {
		// A kubeconfig on the test machine must not send the commands to its cluster.
		o.KubeconfigFound = func() bool { return false }
	}
	AddCommands(root, o)
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

// noLab is a lab state dir with no lab in it, so that a lab running on the test machine
// does not change what the commands do.
func noLab(t *testing.T) string {
	return t.TempDir()
}

// fakeLab writes a state.json for a lab whose config folder, debug address and node admin
// addresses are the given ones, and returns its state dir.
func fakeLab(t *testing.T, st lab.State) string {
	t.Helper()
	dir := t.TempDir()
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "state.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestOutputFormatChecked(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"proxy-status", "-o", "wide", "--lab-dir", noLab(t)}, `unknown output format "wide": want short, json or yaml`},
		{[]string{"ztunnel-config", "workloads", "-o", "xml"}, `unknown output format "xml": want short, json or yaml`},
	} {
		if _, err := run(t, Options{}, tc.args...); err == nil || err.Error() != tc.want {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
}
