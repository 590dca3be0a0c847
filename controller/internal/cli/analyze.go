package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"ambit.dev/controller/internal/source"
)

func analyzeCommand(o Options) *cobra.Command {
	var (
		target controllerTarget
		output *string
	)
	cmd := &cobra.Command{
		Use:   "analyze",
		Short: "List the objects and files the controller refuses, naming the field that is wrong",
		Long: `List what the controller refuses now while it keeps the last good version in force:
objects that fail validation (with the JSON path of the bad field: a weight that does not add
up, a subset no DestinationRule defines, a port that is not a number), Kubernetes objects with a
field their kind does not have, and config files (lab, local mode) that do not parse; and the
parts of objects in force that are not applied ("applied in part": an Istio
AuthorizationPolicy's rule with a field ambit does not enforce, which fails closed; a route's
backendRef or mirror to a Service that does not exist).

The list comes from the controller's GET /debug/analysis on its metrics port (15014). Which
controller, as for proxy-status: --controller-debug; the local lab's (--lab, or when a lab is
up); a cluster's (--kubeconfig or --context, or when $KUBECONFIG or ~/.kube/config exists),
reached through the API server's port-forward; else 127.0.0.1:15014.

Exits 1 when something is refused or applied in part, 0 when nothing is.`,
		Example: `  # the local lab's controller
  ambitctl analyze --lab

  # a cluster's, as JSON
  ambitctl analyze --context prod -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(*output); err != nil {
				return err
			}
			c, where, hint, err := target.resolve(cmd, o)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), forwardTimeout)
			defer cancel()
			if c != nil {
				pods, err := readyControllers(ctx, o, c)
				if err != nil {
					return err
				}
				// Every replica reads the same objects: one answers for all.
				fw, err := forward(ctx, c, systemNamespace, pods[0].Name, controllerDebugPort)
				if err != nil {
					return err
				}
				defer fw.close()
				where, hint = fw.addr, "through the port-forward to pod "+fw.pod
			}
			body, err := get(ctx, o.HTTP, where, source.AnalysisPath, "the controller", hint)
			if err != nil {
				return err
			}
			var problems []source.Problem
			if err := json.Unmarshal(body, &problems); err != nil {
				return fmt.Errorf("controller: decode %s: %w", source.AnalysisPath, err)
			}
			if err := printProblems(cmd.OutOrStdout(), *output, problems); err != nil {
				return err
			}
			return problemsErr(problems)
		},
	}
	target.register(cmd)
	output = outputFlag(cmd)
	return cmd
}

// problemsErr is analyze's verdict: nil when nothing is refused or applied in part.
func problemsErr(problems []source.Problem) error {
	partial := 0
	for _, p := range problems {
		if p.Partial {
			partial++
		}
	}
	switch refused := len(problems) - partial; {
	case refused > 0 && partial > 0:
		return fmt.Errorf("the controller refuses %d object(s) or file(s) (each keeps its last good version) and leaves %d part(s) of objects in force unapplied", refused, partial)
	case refused > 0:
		return fmt.Errorf("the controller refuses %d object(s) or file(s); each keeps its last good version", refused)
	case partial > 0:
		return fmt.Errorf("the controller leaves %d part(s) of objects in force unapplied", partial)
	}
	return nil
}

func printProblems(w io.Writer, format string, problems []source.Problem) error {
	if format != outShort {
		if problems == nil {
			problems = []source.Problem{}
		}
		return printData(w, format, problems)
	}
	if len(problems) == 0 {
		_, err := fmt.Fprintln(w, "✔ No problems found: the controller accepts every object and file.")
		return err
	}
	t := newTable(w, "OBJECT", "FIELD", "ERROR")
	for _, p := range problems {
		msg := p.Error
		if p.Partial {
			msg = "applied in part: " + msg
		}
		t.row(p.Object, p.Field, msg)
	}
	return t.flush()
}
