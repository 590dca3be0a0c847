package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"ambit.dev/controller/lab"
)

// controllerTarget is which controller proxy-status and analyze ask, from their flags, in
// this order: --controller-debug; the local lab's (--lab, or when a lab is up); a cluster's
// (--kubeconfig or --context, or when a kubeconfig is found), through the API server; else
// the controller on this host.
type controllerTarget struct {
	addr string
	lab  labFlags
	kube kubeFlags
}

func (f *controllerTarget) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.addr, "controller-debug", DefaultControllerDebug, "host:port of the controller's metrics and debug port")
	f.kube.registerTarget(cmd.Flags())
	f.lab.register(cmd, false, "controller")
}

// resolve returns the cluster to ask (cluster mode), or the address of the controller's debug
// port with the hint for an error reaching it.
func (f *controllerTarget) resolve(cmd *cobra.Command, o Options) (c *cluster, addr, hint string, err error) {
	explicit := cmd.Flags().Changed("controller-debug")
	if count(f.lab.use, explicit, f.kube.given()) > 1 {
		return nil, "", "", fmt.Errorf("--lab, --controller-debug and --kubeconfig/--context are mutually exclusive")
	}
	var st *lab.State
	if st, err = f.lab.state(!explicit && !f.kube.given()); err != nil {
		return nil, "", "", err
	}
	switch {
	case f.kube.given() || (st == nil && !explicit && o.KubeconfigFound()):
		c, err = f.kube.connect()
		return c, "", "", err
	case st != nil:
		if st.DebugAddr == "" {
			return nil, "", "", fmt.Errorf("lab %q records no controller debug address in %s/state.json", st.Name, f.lab.dir)
		}
		return nil, st.DebugAddr, fmt.Sprintf("is the lab %q still up? see `%s lab status`", st.Name, o.Invoked), nil
	}
	return nil, f.addr, "is the controller running, and is --controller-debug its metrics address (port 15014)?", nil
}
