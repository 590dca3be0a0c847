// Package cli holds every ambitctl command: `namespace enable|disable` (enrolment, in a
// cluster, a config folder or the local lab), `proxy-status` (what the controller knows of
// each connected proxy), `ztunnel-config` (what one ztunnel holds, from its /config_dump),
// `waypoint` and `lab` (the local lab). cmd/ambitctl adds them to its root command.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"ambit.dev/controller/lab"
)

// Options are the process edges the commands use; the zero value is the real ones.
type Options struct {
	// NewKube builds the Kubernetes client of `namespace` in Kubernetes mode from the
	// --kubeconfig and --context flags; it returns the client and a description of the
	// cluster for messages. Default: client-go with the usual kubeconfig loading rules.
	NewKube func(kubeconfig, context string) (kubernetes.Interface, string, error)
	// NewGateway builds the Gateway API client of `waypoint` in Kubernetes mode.
	NewGateway func(kubeconfig, context string) (gatewayclient.Interface, error)
	// HTTP fetches the controller's and ztunnel's debug endpoints. Default: a client with a
	// 10 s timeout.
	HTTP *http.Client
	// Now is the clock for ages in listings.
	Now func() time.Time
	// KubeconfigFound reports whether a kubeconfig would be found without flags ($KUBECONFIG,
	// ~/.kube/config): then proxy-status, ztunnel-config and waypoint status ask the cluster
	// when nothing else is named. Default: a look at the files.
	KubeconfigFound func() bool
	// Invoked is how the user ran ambitctl (os.Args[0] as given, e.g. bin/ambitctl), for the
	// commands that hints name: the bare name is often not on the PATH. Default "ambitctl".
	Invoked string
}

func (o Options) withDefaults() Options {
	if o.NewKube == nil {
		o.NewKube = newKube
	}
	if o.NewGateway == nil {
		o.NewGateway = newGateway
	}
	if o.HTTP == nil {
		o.HTTP = &http.Client{Timeout: 10 * time.Second}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.KubeconfigFound == nil {
		o.KubeconfigFound = kubeconfigFound
	}
	if o.Invoked == "" {
		o.Invoked = "ambitctl"
	}
	return o
}

// AddCommands adds every ambitctl command to root.
func AddCommands(root *cobra.Command, o Options) {
	o = o.withDefaults()
	root.AddCommand(namespaceCommand(o), proxyStatusCommand(o), ztunnelConfigCommand(o), waypointCommand(o), analyzeCommand(o), labCommand(o),
		installCommand(o), uninstallCommand(o), checkCommand(o), versionCommand(o))
	for _, c := range root.Commands() {
		nameInvoked(c, o.Invoked)
	}
}

// nameInvoked makes the "no lab is up" error of cmd and its subcommands name ambitctl as the
// user ran it, in the command it tells them to run.
func nameInvoked(cmd *cobra.Command, invoked string) {
	if run := cmd.RunE; run != nil {
		cmd.RunE = func(c *cobra.Command, args []string) error {
			err := run(c, args)
			if nu, ok := errors.AsType[*lab.NotUpError](err); ok {
				nu.Invoked = invoked
			}
			return err
		}
	}
	for _, c := range cmd.Commands() {
		nameInvoked(c, invoked)
	}
}

// labFlags are the flags every command has for finding a running lab.
type labFlags struct {
	dir string
	use bool
}

// register adds --lab-dir and --lab to cmd's flags (to its persistent flags when persistent).
func (l *labFlags) register(cmd *cobra.Command, persistent bool, what string) {
	fs := cmd.Flags()
	if persistent {
		fs = cmd.PersistentFlags()
	}
	fs.StringVar(&l.dir, "lab-dir", lab.DefaultStateDir, "state dir of the local lab, where 'ambitctl lab up' wrote state.json")
	fs.BoolVar(&l.use, "lab", false, "use the local lab's "+what+" (the default when no other target is given and a lab is up)")
}

// state returns the lab's state when --lab is set, or when auto is true and a lab is up; nil
// when no lab is meant.
func (l *labFlags) state(auto bool) (*lab.State, error) {
	if !l.use {
		if !auto {
			return nil, nil
		}
		if _, err := os.Stat(filepath.Join(l.dir, "state.json")); err != nil {
			return nil, nil
		}
	}
	return lab.LoadState(l.dir)
}

// get fetches http://addr/path, turning transport failures into "cannot reach <what> at <addr>:
// <cause> — <hint>" and non-200 answers into errors with the body's first line.
func get(ctx context.Context, c *http.Client, addr, path, what, hint string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return nil, fmt.Errorf("%s address %q: %w", what, addr, err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach %s at %s: %s — %s", what, addr, cause(err), hint)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return nil, fmt.Errorf("read %s from %s at %s: %w", path, what, addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		msg := string(body)
		if len(msg) > 200 {
			msg = msg[:200]
		}
		return nil, fmt.Errorf("%s at %s answered GET %s with %s: %s", what, addr, path, resp.Status, strings.TrimSpace(msg))
	}
	return body, nil
}

// cause is the innermost useful reason of a failed request: "connection refused", "timed
// out", "no such host".
func cause(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) && ue.Timeout() {
		return "timed out"
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return "connection refused"
	}
	var op *net.OpError
	if errors.As(err, &op) {
		return op.Err.Error()
	}
	if ue != nil {
		return ue.Err.Error()
	}
	return err.Error()
}

// requireSubcommand makes a command that only groups others fail on an unknown subcommand
// (cobra would print the help and succeed) and print its help when called bare.
func requireSubcommand(cmd *cobra.Command) {
	cmd.Args = cobra.ArbitraryArgs
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return cmd.Help()
		}
		var names []string
		for _, c := range cmd.Commands() {
			if c.IsAvailableCommand() {
				names = append(names, c.Name())
			}
		}
		return fmt.Errorf("unknown command %q for %q: want one of %s", args[0], cmd.CommandPath(), strings.Join(names, ", "))
	}
}
