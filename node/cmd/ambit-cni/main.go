// Command ambit-cni is ambit's CNI plugin (node/internal/cniplugin), chained after the
// cluster's network plugin. The node agent installs it; its image runs the same code when
// executed as ambit-cni, so this command exists for installing the plugin by hand.
package main

import (
	"os"

	"ambit.dev/node/internal/cniplugin"
)

func main() {
	os.Exit(cniplugin.Main(os.Getenv, os.Stdin, os.Stdout, os.Stderr))
}
