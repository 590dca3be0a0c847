// Command ambitctl is ambit's command line: it enrols namespaces, shows what every proxy
// knows, and runs the local lab. The commands are in controller/internal/cli; this only
// builds the root command and runs it.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"ambit.dev/controller/internal/cli"
)

func main() {
	root := &cobra.Command{
		Use:           "ambitctl",
		Short:         "ambitctl drives the ambit mesh: enrolment, proxy status, the local lab",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	cli.AddCommands(root, cli.Options{Invoked: os.Args[0]})
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "ambitctl:", err)
		os.Exit(1)
	}
}
