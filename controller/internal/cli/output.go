package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	sigsyaml "sigs.k8s.io/yaml"
)

// Output formats of every listing.
const (
	outShort = "short"
	outJSON  = "json"
	outYAML  = "yaml"
)

// outputFlag registers -o/--output on cmd and returns where its value goes.
func outputFlag(cmd *cobra.Command) *string {
	var o string
	cmd.Flags().StringVarP(&o, "output", "o", outShort, "output format: short (a table), json or yaml")
	return &o
}

func checkOutput(o string) error {
	switch o {
	case outShort, outJSON, outYAML:
		return nil
	}
	return fmt.Errorf("unknown output format %q: want short, json or yaml", o)
}

// printData writes v as indented JSON or as YAML. v is marshalled with encoding/json first,
// so JSON field names are the YAML keys too.
func printData(w io.Writer, format string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return printJSON(w, format, b)
}

// printJSON writes a JSON document as indented JSON or as YAML.
func printJSON(w io.Writer, format string, b []byte) error {
	switch format {
	case outJSON:
		var out bytes.Buffer
		if err := json.Indent(&out, b, "", "  "); err != nil {
			return err
		}
		out.WriteByte('\n')
		_, err := w.Write(out.Bytes())
		return err
	case outYAML:
		y, err := sigsyaml.JSONToYAML(b)
		if err != nil {
			return err
		}
		_, err = w.Write(y)
		return err
	}
	return checkOutput(format)
}

// table writes aligned columns like kubectl's: upper-case headers, three spaces apart, "-"
// for an empty cell.
type table struct {
	tw *tabwriter.Writer
}

func newTable(w io.Writer, headers ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)}
	t.row(headers...)
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		if c == "" {
			cells[i] = "-"
		}
		// A tab or newline in a value (an error message) would break the columns.
		cells[i] = strings.NewReplacer("\t", " ", "\n", " ").Replace(cells[i])
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }
